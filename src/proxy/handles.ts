/**
 * Node's TCP handles, used without net.Socket: the sockets of the JavaScript data path (the native
 * relay, relay/*.c, makes its own; it borrows a handle's fd only for accept_proxy services).
 *
 * A net.Socket wraps libuv's TCP handle in a Duplex stream: per chunk, a WriteWrap, the Writable's
 * state machine, an afterWrite tick and a re-armed timer; per connection, two stream states and
 * their listeners. HAProxy pays none of that, and on loopback it decided rr and churn (bench/
 * profiles: ≈ 2.6 µs user per request and 34 µs per connection, against HAProxy's 1.0 and 5).
 * The data path therefore talks to the handles themselves — the same C++ objects net.Socket
 * uses (`tcp_wrap`, `stream_wrap`), reached through `process.binding`, which Node keeps for
 * exactly these modules (deprecated for new code, DEP0111, without a runtime warning):
 *
 *   read:     handle.useUserBuffer(buf); handle.onread = fn; handle.readStart()
 *             fn runs with nread in streamBaseState[kReadBytesOrError] (UV_EOF at the end) and may
 *             return the next buffer to read into
 *   write:    handle.writeBuffer(req, view) → errno; tried at once (uv_try_write), and
 *             streamBaseState[kLastWriteWasAsync] says whether the rest is queued: then
 *             req.oncomplete(status) runs once the kernel took it
 *   shutdown: handle.shutdown(req) → errno; req.oncomplete(status), if the request has one, once
 *             the queued writes are out (Node calls back only requests that have an oncomplete)
 *   connect:  handle.connect(req, ip, port) / connect6; req.oncomplete(status, handle)
 *   close:    handle.close(cb); every pending request has called back before cb
 *   accept:   a net.Server's own handle, with `onconnection(err, clientHandle)` replaced
 *
 * Listening stays with net.Server (reusePort, address errors, close). Everything here is pinned
 * by the Node in package.json (24.x); the worker pool calls `rawHandlesMissing` at start-up, so a
 * Node that changed these names says so instead of failing on the first connection.
 */
import type { Socket as DgramSocket } from 'node:dgram';
import type { Server } from 'node:net';

/** What a request object (write, shutdown, connect) carries back to its callback. */
export interface Req {
  oncomplete: (this: Req, status: number) => void;
}

/** The methods of a libuv TCP handle that the data path uses (node/src/stream_base.cc, tcp_wrap.cc). */
export interface TcpHandle {
  /** The socket's file descriptor (what the native relay reads and writes). */
  readonly fd: number;
  /** Called by C++ with the handle as `this` (typed `never` so callers may narrow it). */
  onread: ((this: never, ab: ArrayBuffer | undefined) => Uint8Array | undefined) | null;
  readStart(): number;
  readStop(): number;
  useUserBuffer(buf: Uint8Array): void;
  writeBuffer(req: Req, data: Uint8Array): number;
  shutdown(req: Req): number;
  connect(req: Req, ip: string, port: number): number;
  connect6(req: Req, ip: string, port: number): number;
  setNoDelay(on: boolean): number;
  /** SO_KEEPALIVE and TCP_KEEPIDLE (seconds); libuv sets the interval and count itself (1.52: 1 s, 10). */
  setKeepAlive(on: boolean, idleSeconds: number): number;
  getpeername(out: SockAddr): number;
  getsockname(out: SockAddr): number;
  close(cb?: (this: never) => void): void;
  /** Closes with a reset (uv_tcp_close_reset: SO_LINGER 0, then close); an errno if it cannot (a shutdown was sent: close instead). */
  reset(cb?: (this: never) => void): number;
}

/** Filled by getpeername / getsockname. */
export interface SockAddr {
  address?: string;
  family?: string;
  port?: number;
}

interface TcpWrapBinding {
  TCP: new (type: number) => TcpHandle;
  TCPConnectWrap: new () => Req;
  constants: { SOCKET: number; SERVER: number };
}
interface StreamWrapBinding {
  WriteWrap: new () => Req;
  ShutdownWrap: new () => Req;
  streamBaseState: Int32Array;
  kReadBytesOrError: number;
  kLastWriteWasAsync: number;
}

const binding = (name: string): unknown => {
  try {
    return (process as unknown as { binding(n: string): unknown }).binding(name);
  } catch {
    return null;
  }
};
const tcpWrap = binding('tcp_wrap') as TcpWrapBinding | null;
const streamWrap = binding('stream_wrap') as StreamWrapBinding | null;
const uv = binding('uv') as { UV_EOF?: number; UV_ECONNRESET?: number } | null;

/** Why this Node cannot run the data path, or null. Checked once per worker at start-up. */
export function rawHandlesMissing(): string | null {
  const want = [
    [tcpWrap?.TCP, "tcp_wrap.TCP"], [tcpWrap?.TCPConnectWrap, 'tcp_wrap.TCPConnectWrap'],
    [streamWrap?.WriteWrap, 'stream_wrap.WriteWrap'], [streamWrap?.ShutdownWrap, 'stream_wrap.ShutdownWrap'],
    [streamWrap?.streamBaseState, 'stream_wrap.streamBaseState'], [uv?.UV_EOF, 'uv.UV_EOF'],
  ] as const;
  const missing = want.filter(([v]) => v === undefined || v === null).map(([, n]) => n);
  if (missing.length === 0) return null;
  return `this Node (${process.version}) lacks ${missing.join(', ')}, which the data path uses; run fulcrum with the Node 24 ` +
    'that package.json pins (node_modules/.bin/node, which bin/fulcrum and the npm scripts use)';
}

export const TCP = tcpWrap?.TCP as TcpWrapBinding['TCP'];
export const TCP_SOCKET = tcpWrap?.constants.SOCKET ?? 0;
export const TCPConnectWrap = tcpWrap?.TCPConnectWrap as TcpWrapBinding['TCPConnectWrap'];
export const WriteWrap = streamWrap?.WriteWrap as StreamWrapBinding['WriteWrap'];
export const ShutdownWrap = streamWrap?.ShutdownWrap as StreamWrapBinding['ShutdownWrap'];
/** Shared with C++: the last read's byte count or error, and whether the last write was queued. */
export const streamState = streamWrap?.streamBaseState as Int32Array;
export const K_NREAD = streamWrap?.kReadBytesOrError ?? 0;
export const K_WRITE_ASYNC = streamWrap?.kLastWriteWasAsync ?? 0;
export const UV_EOF = uv?.UV_EOF ?? -4095;
export const UV_ECONNRESET = uv?.UV_ECONNRESET ?? -104;

/**
 * TCP keepalive on a Node server's listening socket (`idle` seconds, 0: off): the connections it
 * accepts inherit it from the kernel, so nothing is set per connection. On Node's handles only the
 * idle time can be chosen; libuv sets the probe interval and count. worker.ts, per service table.
 */
export function keepAliveOnServer(server: Server, idle: number): void {
  const h = (server as unknown as { _handle: TcpHandle | null })._handle;
  h?.setKeepAlive(idle > 0, idle);
}

/**
 * Routes a listener's accepted connections to `onconnection` as raw handles (no net.Socket is
 * made), with TCP_NODELAY set on the listening socket so that every accepted one has it. Call before `listen`: the handle exists from 'listening' on, and connections are only
 * delivered after that event (both come from the event loop, the event first).
 */
export function acceptRaw(
  server: Server,
  onconnection: (this: TcpHandle & { owner: Server }, err: number, client: TcpHandle | undefined) => void,
): void {
  server.on('listening', () => {
    const h = (server as unknown as { _handle: { onconnection: unknown; owner: Server; setNoDelay?(on: boolean): number } | null })._handle;
    if (h === null) return;
    h.owner = server;
    h.onconnection = onconnection;
    // Accepted sockets inherit TCP_NODELAY from the listening socket on Linux: one setsockopt here
    // instead of one per connection.
    h.setNoDelay?.(true);
  });
}

/** A listening Node server's fd (its libuv handle's), or -1 before it listens: what an upgrade hands over (worker.ts). */
export function serverFd(server: Server): number {
  return (server as unknown as { _handle: TcpHandle | null })._handle?.fd ?? -1;
}

/**
 * A bound datagram socket's fd, or -1. node:dgram keeps its handle under a private symbol (its
 * `_handle` getter warns, DEP0112); the symbol is found by its description, pinned with Node 24.
 */
export function udpFd(socket: DgramSocket): number {
  const state = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'state symbol');
  const handle = state === undefined ? undefined : (socket as unknown as Record<symbol, { handle?: { fd?: number } | null }>)[state]?.handle;
  return handle?.fd ?? -1;
}
