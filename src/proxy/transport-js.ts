/**
 * The JavaScript transport: the data path's system calls on Node's TCP handles (handles.ts), when
 * the native relay is not built or turned off. The session core (core.ts) decides; this file
 * accepts, connects, moves the bytes both ways with backpressure and half-close, and closes.
 *
 * Performance notes (what decided its cost per CPU-second):
 * - Sockets are libuv TCP handles driven directly (handles.ts), not net.Socket: per chunk one
 *   read callback and one write call, no stream state, no timer re-arm, no tick.
 * - No closure is created per connection or per chunk: every handle and request calls one of the
 *   module-level functions below, which find their session through `handle[kSession]` and the
 *   transport through the session (`s.t`).
 * - Session objects and their read buffers are pooled. Each handle reads into its session's own
 *   buffer (`useUserBuffer`), which starts at READ_BUFFER_MIN and grows ×4 when a read fills it:
 *   idle connections stay small, streams reach full size after four reads.
 * - A chunk goes out with one `writeBuffer`, which tries the kernel at once. When the kernel did
 *   not take it whole, the rest is queued by libuv still pointing into our buffer: the side it
 *   was read from stops reading until the write completes (`onWritten`). Backpressure is
 *   therefore exact both ways, with one buffer per direction (HAProxy's model).
 * - Half-close is forwarded both ways: EOF on one side shuts down the other's write side (after
 *   its queued writes). Once both sides have sent EOF and nothing is left queued, both handles
 *   are closed (a close sends the FIN the second shutdown would have: one request and one
 *   callback fewer per connection).
 * - A session ends synchronously: closing a handle closes its fd at once and stops its reads, so
 *   its buffers are free; requests still in flight call back later (ECANCELED) and are ignored
 *   through `gen`. No close callback is needed.
 * - The idle timeout costs no timer: each chunk stamps `lastActive` with the core's clock.
 */
import { getSystemErrorName } from 'node:util';
import { TERM_CLIENT_CLOSED, TERM_SERVER_CLOSED } from '../shm/layout.ts';
import type { DataPath } from './core.ts';
import {
  K_NREAD, K_WRITE_ASYNC, ShutdownWrap, streamState, TCP, TCP_SOCKET, TCPConnectWrap,
  UV_ECONNRESET, UV_EOF, WriteWrap, type Req, type SockAddr, type TcpHandle,
} from './handles.ts';
import { Session, ST_CONNECTED, ST_CONNECTING, type ServiceRuntime } from './session.ts';
import type { ServerTransport, Transport } from './transport.ts';

/**
 * Largest read buffer of a socket: four times HAProxy's default tune.bufsize, because a copy per
 * 64 KiB rather than per 16 KiB is what bulk throughput per CPU-second rests on (BENCHMARKS.md);
 * only streaming connections get there. The relay reads as much at a time (relay.h SCRATCH_SIZE).
 */
export const READ_BUFFER_SIZE = 64 * 1024;
/**
 * Each socket's (client's and backend's) first read buffer; it grows ×4 (up to READ_BUFFER_SIZE)
 * each time a read fills it, so idle and request/response connections keep a small one (memory
 * per idle connection: a 16 KiB backend buffer cost ≈ 3.5 KB of RSS) and streaming ones reach
 * full size after four reads (256 B, 1 KiB, 4 KiB, 16 KiB, 64 KiB).
 */
const READ_BUFFER_MIN = 256;
/** Pools are capped so a burst does not pin memory for ever. */
export const SESSION_POOL_MAX = 4096;

export const kSession = Symbol('fulcrum.session');
export type Handle = TcpHandle & { [kSession]: Session | null };

/** A write request: which session and direction it belongs to. */
interface SideReq extends Req {
  session: JsSession | null;
  gen: number;
  toServer: boolean;
  /** Keeps the chunk alive while libuv still points into it (async writes). */
  buffer: Uint8Array | null;
}
interface ConnectReq extends Req {
  session: JsSession | null;
  gen: number;
  attempt: number;
}

/** A session's read buffer before its first read on a handle: made then (READ_BUFFER_MIN). */
const NO_BUFFER = Buffer.alloc(0);
const readBuffer = (b: Buffer): Buffer => (b.length === 0 ? Buffer.allocUnsafeSlow(READ_BUFFER_MIN) : b);

/**
 * The client-side methods of a transport whose clients are Node handles (the session's `client`):
 * the handle gives the addresses, and keeps reading while the client is queued, so its EOF ends
 * the wait (no watch needed). The JavaScript transport, and the relay's lent clients.
 */
export abstract class HandleClients {
  peer(s: Session, out: SockAddr): void {
    (s as Session & { client: Handle | null }).client!.getpeername(out);
  }

  local(s: Session, out: SockAddr): void {
    (s as Session & { client: Handle | null }).client!.getsockname(out);
  }

  watch(): number {
    return 0;
  }

  unwatch(): void {}
}

/** A session on Node's handles: the core's part and the two handles with their buffers. */
class JsSession extends Session {
  declare t: JsTransport;
  client: Handle | null = null;
  server: Handle | null = null;
  /** EOF read from the backend. */
  serverEnded = false;
  /** propagate_reset: which handles `close` resets (RESET_CLIENT, RESET_SERVER) because the other side reset. */
  resets = 0;
  /** Writes queued by libuv (the kernel did not take them at once), per direction. */
  c2sWrites = 0;
  s2cWrites = 0;
  /** The client's and the backend's read buffers; replaced by a larger one when a read fills them. */
  cbuf: Buffer = NO_BUFFER;
  sbuf: Buffer = NO_BUFFER;
  /** The last chunk's view of `cbuf` / `sbuf` (bytes 0..n), reused while chunks keep their size. */
  cview: Buffer | null = null;
  sview: Buffer | null = null;

  override reset(): void {
    super.reset();
    this.client = this.server = null;
    this.serverEnded = false;
    this.resets = 0;
    this.c2sWrites = this.s2cWrites = 0;
    // The pool keeps small read buffers only: one grown by a stream would pin 64 KiB per pooled
    // session. (Once per session that streamed; its handles are closed, nothing points into them.)
    if (this.cbuf.length > READ_BUFFER_MIN) this.cbuf = NO_BUFFER;
    if (this.sbuf.length > READ_BUFFER_MIN) this.sbuf = NO_BUFFER;
    this.cview = this.sview = null;
  }
}

export class JsTransport extends HandleClients implements Transport, ServerTransport {
  readonly core: DataPath;
  private readonly pool: JsSession[] = [];
  /** A WriteWrap for the next write; replaced only when libuv keeps one (a write not taken at once). */
  spareWrite: SideReq = newWriteReq();

  constructor(core: DataPath) {
    super();
    this.core = core;
  }

  /** HOT: once per accepted connection (transport.ts onConnection). */
  adopt(handle: TcpHandle, rt: ServiceRuntime): void {
    const client = handle as Handle;
    const s = this.pool.pop() ?? new JsSession(this);
    s.client = client;
    client[kSession] = s; // TCP_NODELAY: inherited from the listening socket (acceptRaw)
    client.onread = onClientRead;
    client.useUserBuffer((s.cbuf = readBuffer(s.cbuf)));
    client.readStart();
    this.core.accepted(s, rt);
  }

  connect(session: Session, ip: string, port: number, family: number): number {
    const s = session as JsSession;
    const server = new TCP(TCP_SOCKET) as Handle;
    server[kSession] = s;
    s.server = server;
    s.serverEnded = false;
    const req = new TCPConnectWrap() as ConnectReq;
    req.oncomplete = onConnected as ConnectReq['oncomplete'];
    req.session = s;
    req.gen = s.gen;
    req.attempt = s.attempt;
    return family === 6 ? server.connect6(req, ip, port) : server.connect(req, ip, port);
  }

  /** Its connect callback (ECANCELED, or the late success) is then ignored: the attempt has moved on. */
  abandon(session: Session): void {
    const s = session as JsSession;
    const server = s.server;
    if (server === null) return;
    server[kSession] = null;
    server.close();
    s.server = null;
  }

  /** Counted per chunk already (onClientRead, onBackendRead). */
  syncBytes(): void {}

  /** Stamped per chunk already (forward, onWritten). */
  moved(): boolean {
    return false;
  }

  close(session: Session): void {
    const s = session as JsSession;
    const client = s.client;
    if (client !== null) {
      client[kSession] = null;
      closeHandle(client, (s.resets & RESET_CLIENT) !== 0);
    }
    const server = s.server;
    if (server !== null) {
      server[kSession] = null;
      closeHandle(server, (s.resets & RESET_SERVER) !== 0);
    }
  }

  recycle(s: Session): void {
    s.reset();
    if (this.pool.length < SESSION_POOL_MAX) this.pool.push(s as JsSession);
  }
}

const RESET_CLIENT = 1;
const RESET_SERVER = 2;

/** Closes a handle, with a reset when asked (one that sent a shutdown cannot be reset: closed then). */
function closeHandle(h: Handle, reset: boolean): void {
  if (!reset || h.reset() !== 0) h.close();
}

/**
 * `status` (a read or write error) is a reset by the backend (toServer) or the client: with
 * propagate_reset, the other side is reset when the session closes, instead of closed cleanly.
 * Once per session that ends on an error.
 */
function passReset(s: JsSession, status: number, byServer: boolean): void {
  if (status === UV_ECONNRESET && s.svc!.entry.propagate_reset) s.resets |= byServer ? RESET_CLIENT : RESET_SERVER;
}

// ── connect ───────────────────────────────────────────────────────

/** Once per connect attempt: the backend connection is up (status 0) or failed. */
function onConnected(this: ConnectReq, status: number): void {
  const s = this.session;
  this.session = null;
  if (s === null || s.gen !== this.gen || s.attempt !== this.attempt || s.state !== ST_CONNECTING) return;
  const core = s.t.core;
  if (status < 0) {
    core.connectFailed(s, getSystemErrorName(status));
    return;
  }
  const server = s.server!;
  core.connected(s);
  server.setNoDelay(true);
  // The client's keepalive comes from its listener (worker.ts); the backend's is set here.
  const ka = s.svc!.entry.tcp_keepalive;
  if (ka !== null) server.setKeepAlive(true, ka.idle);
  server.onread = onBackendRead;
  server.useUserBuffer((s.sbuf = readBuffer(s.sbuf)));
  server.readStart();
  const h = core.proxyHeader(s);
  if (h !== null && send(s, server, h, true) < 0) return;
  const pending = s.pending;
  if (pending !== null) {
    s.pending = null;
    s.pendingBytes = 0;
    const all = pending.length === 1 ? pending[0] : Buffer.concat(pending);
    if (send(s, server, all, true) < 0) return;
  }
  if (s.c2sWrites > 0) s.client!.readStop();
  else resumeClient(s);
  if (s.clientEnded) shutdownSide(s, true);
}

// ── moving the bytes ─────────────────────────────────────────────────────────

function newWriteReq(): SideReq {
  const req = new WriteWrap() as SideReq;
  req.oncomplete = onWritten as SideReq['oncomplete'];
  req.session = null;
  req.gen = 0;
  req.toServer = false;
  req.buffer = null;
  return req;
}

/**
 * HOT: once per chunk, each way. Writes `data` to `to`: 0 when the kernel took it all (the buffer
 * is free again), 1 when libuv queued the rest (the buffer stays referenced until `onWritten`; the
 * caller stops reading from the other side), or a negative errno (the session is ended).
 */
function send(s: JsSession, to: Handle, data: Uint8Array, toServer: boolean): number {
  const t = s.t;
  const req = t.spareWrite;
  const err = to.writeBuffer(req, data);
  if (err !== 0) {
    passReset(s, err, toServer);
    t.core.end(s, toServer ? TERM_SERVER_CLOSED : TERM_CLIENT_CLOSED);
    return err;
  }
  if (streamState[K_WRITE_ASYNC] === 0) return 0;
  // Queued: this request now belongs to libuv until it calls back.
  t.spareWrite = newWriteReq();
  req.session = s;
  req.gen = s.gen;
  req.toServer = toServer;
  req.buffer = data;
  if (toServer) s.c2sWrites++;
  else s.s2cWrites++;
  return 1;
}

/** Once per write that libuv queued (backpressure): the kernel took the rest, or the write failed. */
function onWritten(this: SideReq, status: number): void {
  const s = this.session;
  this.session = null;
  this.buffer = null;
  if (s === null || s.gen !== this.gen) return;
  const core = s.t.core;
  if (status < 0) {
    passReset(s, status, this.toServer);
    core.end(s, this.toServer ? TERM_SERVER_CLOSED : TERM_CLIENT_CLOSED);
    return;
  }
  s.lastActive = core.clock;
  const left = this.toServer ? --s.c2sWrites : --s.s2cWrites;
  if (left > 0) return;
  if (doneBothWays(s)) {
    core.end(s, TERM_CLIENT_CLOSED); // the last queued write was what both sides waited for
  } else if (this.toServer) {
    resumeClient(s);
  } else if (!s.serverEnded && s.server !== null) {
    s.server.readStart();
  }
}

/** Reading the client again: after its queued writes completed, or once connected (the core's pending limit may have stopped it). */
function resumeClient(s: JsSession): void {
  if (!s.clientEnded) s.client!.readStart();
}

/**
 * HOT: once per chunk, each way (from onClientRead with toServer, from onBackendRead without).
 * Sends the `n` bytes just read into the reading side's buffer (`cbuf` / `sbuf`) to `to`; stops
 * `from` reading when libuv kept part of them; returns the buffer to read into next when a full
 * read grows it (×4, up to READ_BUFFER_SIZE), else undefined.
 */
function forward(s: JsSession, from: Handle, to: Handle, n: number, toServer: boolean): Uint8Array | undefined {
  s.lastActive = s.t.core.clock;
  const buf = toServer ? s.cbuf : s.sbuf;
  // The view of the first n bytes is kept while reads keep that size (request/response traffic
  // repeats it): no typed array is made per chunk.
  let view = toServer ? s.cview : s.sview;
  if (view === null || view.length !== n) {
    view = n === buf.length ? buf : buf.subarray(0, n);
    if (toServer) s.cview = view;
    else s.sview = view;
  }
  const r = send(s, to, view, toServer);
  if (r < 0) return undefined;
  if (r > 0) from.readStop(); // until onWritten
  if (n < buf.length || n >= READ_BUFFER_SIZE) return undefined;
  const next = Buffer.allocUnsafeSlow(n * 4);
  if (toServer) {
    s.cbuf = next;
    s.cview = null;
  } else {
    s.sbuf = next;
    s.sview = null;
  }
  return next;
}

/**
 * HOT: once per read on a client handle, into the session's `cbuf`. Returns the buffer to read
 * into next when it changes (a full read grows it), else undefined.
 */
function onClientRead(this: Handle): Uint8Array | undefined {
  const s = this[kSession] as JsSession | null;
  if (s === null) return undefined;
  const n = streamState[K_NREAD];
  if (n > 0) {
    s.bytesIn += n;
    if (s.state === ST_CONNECTED) return forward(s, this, s.server!, n, true);
    // Still reading its PROXY header, queued or connecting: the core keeps a copy.
    if (s.t.core.early(s, s.cbuf, n) && this[kSession] === s) this.readStop(); // until connected (onConnected)
    return undefined;
  }
  if (n === UV_EOF) {
    onClientEnd(s);
  } else if (n < 0) {
    passReset(s, n, false);
    s.t.core.end(s, TERM_CLIENT_CLOSED); // reset
  }
  return undefined;
}

/** HOT: once per read on a backend handle, into the session's `sbuf`. */
function onBackendRead(this: Handle): Uint8Array | undefined {
  const s = this[kSession] as JsSession | null;
  if (s === null || s.server !== this) return undefined;
  const n = streamState[K_NREAD];
  if (n > 0) {
    s.bytesOut += n;
    return forward(s, this, s.client!, n, false);
  }
  if (n === UV_EOF) {
    onServerEnd(s);
  } else if (n < 0) {
    passReset(s, n, true);
    s.t.core.end(s, TERM_SERVER_CLOSED); // reset
  }
  return undefined;
}

// ── half-close ───────────────────────────────────────────────────────────────

/** The client sent EOF: before its backend is up the core decides, after it the EOF is passed on. */
function onClientEnd(s: JsSession): void {
  if (s.state !== ST_CONNECTED) {
    s.t.core.clientLeft(s);
    return;
  }
  s.clientEnded = true;
  if (s.reason < 0 && !s.serverEnded) s.reason = TERM_CLIENT_CLOSED;
  if (doneBothWays(s)) s.t.core.end(s, TERM_CLIENT_CLOSED);
  else shutdownSide(s, true);
}

/** The backend sent EOF. */
function onServerEnd(s: JsSession): void {
  s.serverEnded = true;
  if (s.reason < 0 && !s.clientEnded) s.reason = TERM_SERVER_CLOSED;
  if (doneBothWays(s)) s.t.core.end(s, TERM_SERVER_CLOSED);
  else shutdownSide(s, false);
}

/**
 * Both sides have sent EOF and no write is queued: every byte is with the kernel, and closing the
 * two handles sends the FINs still owed (the reason was set by the first EOF).
 */
function doneBothWays(s: JsSession): boolean {
  return s.clientEnded && s.serverEnded && s.c2sWrites === 0 && s.s2cWrites === 0;
}

/**
 * Shuts down the write side of the backend (toServer) or the client once its queued writes are
 * out. Nobody waits for it to complete (the request has no oncomplete, so Node makes no call
 * back): the session ends when both sides have sent EOF and no write is queued (onClientEnd,
 * onServerEnd, onWritten), and closing a handle sends a FIN of its own if the shutdown has not.
 */
function shutdownSide(s: JsSession, toServer: boolean): void {
  const err = (toServer ? s.server! : s.client!).shutdown(new ShutdownWrap());
  if (err !== 0) s.t.core.end(s, toServer ? TERM_SERVER_CLOSED : TERM_CLIENT_CLOSED);
}
