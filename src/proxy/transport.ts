/**
 * How a transport plugs into the session core (core.ts).
 *
 * The core decides — admission and pick, queue, retries, timeouts, PROXY headers, counters, the
 * log line — and knows no socket. A transport makes the system calls for the sessions it carries
 * and reports what happened; it decides nothing. Two carry TCP: the JavaScript handles path
 * (transport-js.ts) and the native relay (transport-relay.ts, with relay.c); two carry UDP
 * (transport-udp.ts on node:dgram, transport-relay-udp.ts on the relay's relay/udp.c). Each session points
 * to its transport (`s.t`), so the core calls it without asking which one it is.
 *
 * A transport, in order of a session's life:
 *   1. takes a connection from a listener that worker.ts opened through it, makes a session of its
 *      own class (a subclass of Session, pooled by the transport) and hands it to
 *      `core.accepted(s, rt)`; a client byte read before the backend is connected goes to
 *      `core.early(s, data, n)`, its EOF then to `core.clientLeft(s)`;
 *   2. is asked `peer` / `local` (the hash key, the log, send_proxy), `watch` / `unwatch` (queued:
 *      report a client that leaves with `core.clientLeft`), `connect` (one per attempt; the
 *      result comes as `core.connected(s)` or `core.connectFailed(s, code)`), `abandon` (the core
 *      gave up an attempt: a timeout, a retry);
 *   3. moves the data, counting it into `s.bytesIn` / `s.bytesOut` and the activity into
 *      `s.lastActive` (with `core.clock`, no clock read per chunk) — or leaves both where the
 *      core's once-a-second accounting and timeout sweep find them (`syncBytes`, `moved`);
 *   4. reports an end with `core.end(s, reason)`, and is told to `close` a session the core ends
 *      (idle timeout, backend marked down, shutdown); `recycle` gives the object back.
 *
 * The datagram transports (transport-udp.ts, transport-relay-udp.ts: a flow per client address and port, one connected
 * upstream socket per flow) fits the same interface: the first datagram of a new source is an accept, the
 * upstream socket's creation the connect (reported at once), every datagram activity, the idle
 * timeout the core's, a PROXY v2 header (`core.proxyHeader`) in front of each datagram; it never
 * queues a client it cannot hold (`watch` answers at once) and has no half-close. Nothing in the
 * core's TCP logic changes for it.
 */
import type { Server } from 'node:net';
import type { DataPath } from './core.ts';
import { acceptRaw, type SockAddr, type TcpHandle } from './handles.ts';
import type { ServiceRuntime, Session } from './session.ts';

/**
 * Transport.connect's result when the backend's handshake completed within the call (the relay on
 * loopback or a near LAN): the session already moves bytes, and no `core.connected` follows — the
 * core calls it itself. Part of the interface, so the session core names no transport.
 */
export const CONNECT_DONE = 1;

/** What a listener tells the transport that accepts on it: the service its connections are for (worker.ts updates `rt` on a reload). */
export interface ListenerRef {
  rt: ServiceRuntime;
}

export interface Transport {
  /** The client's address as the socket sees it, into `out` (left empty if unknown). Once per connection that needs it. */
  peer(s: Session, out: SockAddr): void;
  /** The address the client reached, into `out` (send_proxy without a client header). Once per backend connection. */
  local(s: Session, out: SockAddr): void;
  /** Queued: watch the client for leaving (`core.clientLeft`). 0, or a negative errno (the core ends the session). */
  watch(s: Session): number;
  /** Its wait is over: stop watching (the client stays). */
  unwatch(s: Session): void;
  /**
   * Once per connect attempt: connects to the backend at ip:port and, once up, sends what the core
   * has for it first (`core.proxyHeader`, `s.pending`). 0 (the result follows as `core.connected`
   * or `core.connectFailed`), CONNECT_DONE (connected within the call, with nothing to
   * send first; the core calls `connected` itself), or a negative errno if nothing was started.
   */
  connect(s: Session, ip: string, port: number, family: number): number;
  /** The current attempt is over (failed or timed out): drop the backend side, keep the client. */
  abandon(s: Session): void;
  /** Brings s.bytesIn / s.bytesOut up to date. Per close, and once a second per connected session. */
  syncBytes(s: Session): void;
  /** Whether the connected session moved data since the last call (the sweep then stamps lastActive). Per sweep and session. */
  moved(s: Session): boolean;
  /** Closes the session's sockets (both sides), at once; the core finalizes it right after. */
  close(s: Session): void;
  /** The core is done with the object (finalized): the transport resets it and pools it. */
  recycle(s: Session): void;
}

/** A transport that takes the connections of a Node server worker.ts listens with (the JavaScript path; accept_proxy services on both). */
export interface ServerTransport {
  readonly core: DataPath;
  /** HOT: once per connection accepted on one of its servers (acceptOn), as a raw handle: a session for `rt`, to core.accepted. */
  adopt(client: TcpHandle, rt: ServiceRuntime): void;
}

const kListener = Symbol('fulcrum.listener');
const kTransport = Symbol('fulcrum.transport');
const kAccepted = Symbol('fulcrum.accepted');
type Tagged = Server & { [kListener]: ListenerRef; [kTransport]: ServerTransport; [kAccepted]: number };

/**
 * Routes `server`'s connections to `t` as raw handles, for the service `ref` names (read per
 * connection, so a reload's new runtime applies at once). worker.ts calls it before `listen`.
 */
export function acceptOn(server: Server, ref: ListenerRef, t: ServerTransport): void {
  const tagged = server as Tagged;
  tagged[kListener] = ref;
  tagged[kTransport] = t;
  tagged[kAccepted] = 0;
  acceptRaw(server, onConnection);
}

/** The most loop turns a closing Node listener drains for (the relay's drain_listener takes at most 4096 connections). */
const DRAIN_TURNS_MAX = 4096;

/**
 * Closes a Node listener (the JavaScript path's) without resetting the connections the kernel has
 * queued on it: drain before close, as the relay's drain_listener does (relay/handoff.c), for
 * kernels or settings without net.ipv4.tcp_migrate_req. libuv takes one connection per poll of
 * the listening fd (measured: 40 queued, one accepted per loop turn), so the close waits turn by
 * turn (setImmediate: the next turn's poll does not block while an immediate is pending) until a
 * turn accepted nothing — its poll found the queue empty. The first turn always waits: this call
 * may come after this turn's poll. `accepted` counts the listener's connections (by default the
 * count acceptOn keeps; a server that takes them otherwise gives its own). The
 * connections it takes are served as any other (their listener's `rt`). Connections arriving after
 * the last poll are the kernel's: moved to another listener of the SO_REUSEPORT group with
 * tcp_migrate_req=1, reset otherwise. Resolves once closed (accepting no more). Once per listener
 * close (a reload removing or moving an address, a pause, a stop).
 */
export function closeAfterDrain(server: Server, accepted: () => number = () => acceptedOn(server)): Promise<void> {
  return new Promise((resolve) => {
    let seen = accepted();
    let turns = 0;
    const turn = (): void => {
      const now = accepted();
      if ((turns === 0 || now !== seen) && turns < DRAIN_TURNS_MAX) {
        seen = now;
        turns++;
        setImmediate(turn);
        return;
      }
      server.close();
      resolve();
    };
    setImmediate(turn);
  });
}

/** How many connections a server acceptOn routes has accepted (closeAfterDrain's count). */
function acceptedOn(server: Server): number {
  return (server as Tagged)[kAccepted] ?? 0;
}

/** HOT: the listener handle's onconnection, once per accepted connection. */
function onConnection(this: { owner: Server }, err: number, handle: TcpHandle | undefined): void {
  const server = this.owner as Tagged;
  server[kAccepted]++; // an integer property of the server: no allocation
  const t = server[kTransport];
  const rt = server[kListener].rt;
  if (err !== 0 || handle === undefined) {
    // An accept error (EMFILE, ENFILE…): libuv keeps listening (and closes the connections it
    // cannot take, rather than leave them waiting); the worker says so in its log.
    t.core.ctx.onLocalError?.(err, rt.entry.name, 'accept');
    return;
  }
  t.adopt(handle, rt);
}
