/**
 * The UDP transport on the JavaScript path (node:dgram): services with `protocol: udp` run here
 * when the native relay is off; with it, transport-relay-udp.ts (relay/udp.c) carries them the
 * same way, batching the system calls.
 *
 * A flow is one client address and port on one service's listening socket: a Session of the
 * core's like a TCP connection, admitted and picked by the engine exactly as one (max_connections
 * counts flows, leastconn counts flows, Maglev hashes the client). How it maps onto the
 * interface (transport.ts):
 *
 *   first datagram of a new source ─▶ accept (core.accepted)          no room ─▶ dropped, counted
 *   upstream socket made, connected to the backend ─▶ connect (core.connected when Node has it)
 *   every datagram either way ─▶ activity (lastActive)      idle ─▶ the core's idle timeout
 *   `udp.responses` replies ─▶ end (server_closed)
 *   ICMP port unreachable (ECONNREFUSED on the flow's connected socket) ─▶ core.connectFailed:
 *     passive health, then another backend as for a failed TCP connect (retries)
 *
 * - One upstream socket per flow, connected to its backend: the kernel filters what comes back
 *   and a reply maps to its flow without a lookup (the socket's own session).
 * - Replies leave from the listening socket, so the client sees them come from the address and
 *   port it sent to. Datagram boundaries are kept: one datagram in, one out, never merged.
 * - `send_proxy: v2` puts a PROXY v2 header (DGRAM over IPv4 / IPv6: family 0x12 / 0x22, made
 *   once per flow by the core) in front of every datagram to the backend, in the same datagram.
 * - A flow whose backend went down, into maint or away (its state in the shared memory) moves on
 *   its next datagram: the flow ends (backend_down) and the datagram starts a new one, a new
 *   pick. A draining backend keeps its flows.
 * - With SO_REUSEPORT the kernel hashes a source address and port to one worker's socket, so a
 *   flow always lives in one worker.
 */
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import {
  BACKEND_DRAIN, BACKEND_UP, backendAddr, B_STATE, BC_DGRAMS_IN, BC_DGRAMS_OUT, BC_DROP_OVERSIZED, BC_DROP_UNREACHABLE, SC_DGRAMS_IN, SC_DGRAMS_OUT, SC_DROP_LIMIT, SC_DROP_NO_BACKEND,
  SC_DROP_OVERSIZED, SC_DROP_UNREACHABLE, TERM_BACKEND_DOWN, TERM_CONNECT_FAILED, TERM_NO_BACKEND, TERM_QUEUE_FULL, TERM_SERVER_CLOSED, TERM_SHUTDOWN,
} from '../shm/layout.ts';
import { LOCAL_ERRORS } from '../local-errors.ts';
import type { DataPath } from './core.ts';
import { udpFd, type SockAddr } from './handles.ts';
import type { ListenProblem, ServiceEntry } from './messages.ts';
import { Session, ST_CONNECTED, ST_CONNECTING } from './session.ts';
import type { ListenerRef, Transport } from './transport.ts';
import { SESSION_POOL_MAX } from './transport-js.ts';

/** watch's answer: a flow never waits for room. */
const UV_ENOTSUP = -95;

const kFlow = Symbol('fulcrum.flow');
type FlowSocket = Socket & { [kFlow]: UdpSession | null };

/** One UDP service's listening socket in this worker, and its flows by client address, then port. */
export interface UdpListener extends DatagramListener {
  readonly ref: ListenerRef;
  readonly socket: Socket;
  /** Two levels, so a lookup makes no "ip:port" string per datagram. */
  readonly flows: Map<string, Map<number, UdpSession>>;
  /** The bound address (the PROXY header's destination). */
  local: SockAddr;
}

class UdpSession extends Session {
  declare t: UdpTransport;
  listener: UdpListener | null = null;
  upstream: FlowSocket | null = null;
  clientIp = '';
  clientPort = 0;
  clientFamily = '';
  /** i32 index of the backend's state in the shared memory: read per datagram to the backend. */
  stateIdx = -1;
  /** The service table entry the flow's backend was last checked against (removed backends: `stillListed`). */
  entrySeen: ServiceEntry | null = null;
  /** The PROXY v2 header of this flow (send_proxy: v2), made once when it connects. */
  header: Buffer | null = null;
  /**
   * The last datagram sent to the backend (Node's own buffer, no copy): an ICMP unreachable says
   * it was lost, and the next backend gets it again, so a flow whose first pick was a closed port
   * still gets its answer.
   */
  last: Buffer | null = null;
  replies = 0;

  override reset(): void {
    super.reset();
    this.listener = this.upstream = null;
    this.clientIp = this.clientFamily = '';
    this.clientPort = 0;
    this.stateIdx = -1;
    this.header = this.last = null;
    this.entrySeen = null;
    this.replies = 0;
  }
}

/**
 * Whether the flow's backend is still in the service's table and not removed (a removed backend
 * drains in the shared memory, as for TCP, but a flow moves on). HOT: per datagram to a flow, one
 * reference compare; the table is searched once per flow after each service-table change.
 */
export function stillListed(s: Session & { entrySeen: ServiceEntry | null }, entry: ServiceEntry): boolean {
  if (s.entrySeen === entry) return true;
  const b = entry.backends.find((x) => x.index === s.backend);
  if (b === undefined || b.removed) return false;
  s.entrySeen = entry;
  return true;
}

/**
 * What worker.ts needs of a UDP transport: this one (node:dgram) or the relay's
 * (transport-relay-udp.ts). A listener it returns has `ref`; a ListenProblem has not.
 */
export interface DatagramTransport extends Transport {
  /** `fd`: a bound socket the previous process handed over (`fulcrum upgrade`), used as it is. */
  listen(ref: ListenerRef, address: string, reusePort: boolean, fd?: number): Promise<DatagramListener | ListenProblem>;
  /** The listener's socket, by fd: what an upgrade hands to the next process (-1: none). */
  fdOf(l: DatagramListener): number;
  /** The service's settings changed (a reload): after `ref.rt` was updated. */
  configure(l: DatagramListener): void;
  closeListener(l: DatagramListener): void;
}

export interface DatagramListener {
  readonly ref: ListenerRef;
}

/** The IP address a UDP service listens on (a host name resolved), or the problem. Once per bind. */
export async function listenAddress(e: ServiceEntry, address: string): Promise<string | ListenProblem> {
  if (isIP(e.listen.host) !== 0) return e.listen.host;
  try {
    return (await lookup(e.listen.host)).address;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'ENOTFOUND';
    return { service: e.name, address, message: `listen ${code}: cannot resolve ${e.listen.host}`, code };
  }
}

/** A flow refused at its first datagram (no backend, max_connections): that datagram is dropped, counted by why. Per refused flow, from close. */
export function countRefused(f64: Float64Array, s: Session): void {
  if (s.reason === TERM_NO_BACKEND) f64[s.svc!.scBase + SC_DROP_NO_BACKEND] += 1;
  else if (s.reason === TERM_QUEUE_FULL) f64[s.svc!.scBase + SC_DROP_LIMIT] += 1;
}

/** What both UDP transports' sessions have: the client's address, the service socket's listener. */
interface Flow {
  clientIp: string;
  clientPort: number;
  clientFamily: string;
  listener: { readonly local: SockAddr } | null;
}

/**
 * What the two UDP transports do alike: a flow's addresses (the hash key, the log, the PROXY
 * header), no queue, and an error on a flow's socket told to the core.
 */
export abstract class FlowTransport {
  abstract readonly core: DataPath;

  peer(s: Session, out: SockAddr): void {
    const f = s as unknown as Flow;
    out.address = f.clientIp;
    out.port = f.clientPort;
    out.family = f.clientFamily;
  }

  local(s: Session, out: SockAddr): void {
    const local = (s as unknown as Flow).listener!.local;
    out.address = local.address;
    out.port = local.port;
    out.family = local.family;
  }

  /** A flow never waits for room: the core's queue is closed to it (queue.max 0). */
  watch(): number {
    return UV_ENOTSUP;
  }

  unwatch(): void {}

  /**
   * An error on a flow's socket (`code`, `errno`): ECONNREFUSED is the backend host's ICMP port
   * unreachable for a datagram sent, the core's failed connect (passive health, another backend).
   * No socket for the flow here (open-files limit, memory) is not the backend's fault: no
   * passive-health strike and no other backend (it would fail alike), as for TCP.
   */
  protected flowError(s: Session, code: string, errno: number): void {
    if (LOCAL_ERRORS.has(code)) {
      s.detail = `${code}: no socket for the flow (local resources)`;
      this.core.ctx.onLocalError?.(errno, s.svc!.entry.name, 'connect');
      this.core.end(s, TERM_CONNECT_FAILED);
      return;
    }
    this.core.connectFailed(s, code);
  }
}

export class UdpTransport extends FlowTransport implements DatagramTransport {
  readonly core: DataPath;
  private readonly pool: UdpSession[] = [];
  private readonly f64: Float64Array;
  private readonly i32: Int32Array;
  /** Made once: the listeners' and the upstream sockets' handlers (no closure per flow or datagram). */
  private readonly onUpstreamMessage: (this: FlowSocket, msg: Buffer) => void;
  private readonly onUpstreamError: (this: FlowSocket, err: NodeJS.ErrnoException) => void;

  constructor(core: DataPath) {
    super();
    this.core = core;
    this.f64 = new Float64Array(core.ctx.memory.buffer);
    this.i32 = new Int32Array(core.ctx.memory.buffer);
    const t = this;
    this.onUpstreamMessage = function (msg) {
      const s = this[kFlow];
      if (s !== null && s.upstream === this) t.reply(s, msg);
    };
    this.onUpstreamError = function (err) {
      const s = this[kFlow];
      if (s !== null && s.upstream === this) t.upstreamError(s, err);
    };
  }

  // ── listeners (worker.ts) ──────────────────────────────────────────────────

  /**
   * Binds a service's socket (SO_REUSEPORT when the workers share it), or takes `fd`, a bound
   * socket the previous process handed over (upgrade). The listen error, or null.
   */
  async listen(ref: ListenerRef, address: string, reusePort: boolean, fd?: number): Promise<UdpListener | ListenProblem> {
    const e = ref.rt.entry;
    const ip = await listenAddress(e, address);
    if (typeof ip !== 'string') return ip;
    const socket = createSocket({ type: isIP(ip) === 6 ? 'udp6' : 'udp4', reusePort });
    const l: UdpListener = { ref, socket, flows: new Map(), local: { address: ip, port: e.listen.port, family: isIP(ip) === 6 ? 'IPv6' : 'IPv4' } };
    return new Promise((resolve) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        socket.close();
        resolve({ service: e.name, address, message: err.message, code: err.code });
      };
      socket.once('error', onError);
      socket.bind(fd === undefined ? { address: ip, port: e.listen.port } : { fd }, () => {
        socket.off('error', onError);
        // A listening socket's errors are per datagram sent (a client gone): nothing to end.
        socket.on('error', () => {});
        socket.on('message', (msg, from) => this.datagram(l, msg, from));
        resolve(l);
      });
    });
  }

  /** The JavaScript path reads the service's settings per datagram: nothing to pass on. */
  configure(): void {}

  fdOf(dl: DatagramListener): number {
    return udpFd((dl as UdpListener).socket);
  }

  /** Closes a listener: its flows end with it (their replies could no longer reach the clients). */
  closeListener(dl: DatagramListener): void {
    const l = dl as UdpListener;
    for (const byPort of l.flows.values()) for (const s of byPort.values()) this.core.end(s, TERM_SHUTDOWN, true);
    l.socket.close();
  }

  // ── datagrams ──────────────────────────────────────────────────────────────

  /** HOT: once per datagram from a client: to its flow's backend, or a new flow first. */
  private datagram(l: UdpListener, msg: Buffer, from: RemoteInfo): void {
    const rt = l.ref.rt;
    const core = this.core;
    if (msg.length > rt.entry.udp.max_datagram) {
      this.f64[rt.scBase + SC_DROP_OVERSIZED] += 1;
      return;
    }
    let byPort = l.flows.get(from.address);
    let s = byPort?.get(from.port);
    if (s !== undefined && s.state === ST_CONNECTED && !(this.backendServes(s) && stillListed(s, rt.entry))) {
      // Down, maint or removed: this flow ends and the datagram makes a new one (a new pick).
      core.end(s, TERM_BACKEND_DOWN, true);
      s = undefined;
      byPort = l.flows.get(from.address);
    }
    if (s === undefined) {
      s = this.pool.pop() ?? new UdpSession(this);
      s.listener = l;
      s.clientIp = from.address;
      s.clientPort = from.port;
      s.clientFamily = from.family;
      s.datagramsIn = s.datagramsOut = 0;
      if (byPort === undefined) l.flows.set(from.address, (byPort = new Map()));
      byPort.set(from.port, s);
      const gen = s.gen;
      core.accepted(s, rt);
      if (s.gen !== gen) return; // refused (no backend, full, shutting down): counted in close
    }
    if (s.state === ST_CONNECTED) this.toBackend(s, msg);
    else if (s.state === ST_CONNECTING) core.early(s, msg, msg.length); // sent once connected
  }

  /** HOT: once per datagram to a connected flow's backend. */
  private toBackend(s: UdpSession, msg: Buffer): void {
    const f64 = this.f64;
    s.lastActive = this.core.clock;
    s.bytesIn += msg.length;
    s.datagramsIn++;
    f64[s.svc!.scBase + SC_DGRAMS_IN] += 1;
    f64[s.bcBase + BC_DGRAMS_IN] += 1;
    const up = s.upstream!;
    s.last = msg;
    if (s.header === null) up.send(msg);
    else up.send([s.header, msg]);
  }

  /** HOT: once per datagram from a flow's backend: to the client, from the listening socket. */
  private reply(s: UdpSession, msg: Buffer): void {
    const rt = s.svc!;
    const f64 = this.f64;
    if (msg.length > rt.entry.udp.max_datagram) {
      f64[rt.scBase + SC_DROP_OVERSIZED] += 1;
      f64[s.bcBase + BC_DROP_OVERSIZED] += 1;
      return;
    }
    s.lastActive = this.core.clock;
    s.bytesOut += msg.length;
    s.datagramsOut++;
    f64[rt.scBase + SC_DGRAMS_OUT] += 1;
    f64[s.bcBase + BC_DGRAMS_OUT] += 1;
    s.listener!.socket.send(msg, s.clientPort, s.clientIp);
    const responses = rt.entry.udp.responses;
    if (responses > 0 && ++s.replies >= responses) this.core.end(s, TERM_SERVER_CLOSED);
  }

  /** Whether the flow's backend still takes its datagrams: up, or draining (drain keeps existing flows; a removed backend drains too, see stillListed). */
  private backendServes(s: UdpSession): boolean {
    const state = this.i32[s.stateIdx];
    return state === BACKEND_UP || state === BACKEND_DRAIN;
  }

  /**
   * An error on a flow's socket: ECONNREFUSED is the backend host's ICMP port unreachable for a
   * datagram sent (lost): the core's failed-connect path (passive health, another backend).
   */
  private upstreamError(s: UdpSession, err: NodeJS.ErrnoException): void {
    const code = err.code ?? 'EIO';
    if (!LOCAL_ERRORS.has(code)) {
      if (code === 'ECONNREFUSED') {
        this.f64[s.svc!.scBase + SC_DROP_UNREACHABLE] += 1;
        this.f64[s.bcBase + BC_DROP_UNREACHABLE] += 1;
      }
      const last = s.last;
      if (last !== null) {
        // Sent again once the flow is connected to its next backend (if the core retries).
        s.pending = [last];
        s.pendingBytes = last.length;
        s.last = null;
      }
    }
    this.flowError(s, code, typeof err.errno === 'number' ? err.errno : -1);
  }

  // ── the Transport interface ────────────────────────────────────────────────

  /** Once per flow (and per ICMP-unreachable retry): its upstream socket, connected to the backend. */
  connect(session: Session, ip: string, port: number, family: number): number {
    const s = session as UdpSession;
    const up = createSocket(family === 6 ? 'udp6' : 'udp4') as FlowSocket;
    up[kFlow] = s;
    s.upstream = up;
    s.stateIdx = (backendAddr(s.backend) + B_STATE) >> 2;
    up.on('message', this.onUpstreamMessage);
    up.on('error', this.onUpstreamError);
    const gen = s.gen;
    const attempt = s.attempt;
    up.connect(port, ip, () => {
      if (s.gen !== gen || s.attempt !== attempt || s.upstream !== up || s.state !== ST_CONNECTING) return;
      this.connected(s);
    });
    return 0;
  }

  /** Once per flow, when Node has its socket connected: the datagrams that came meanwhile go out. */
  private connected(s: UdpSession): void {
    const core = this.core;
    core.connected(s);
    if (s.svc!.entry.send_proxy === 'v2') s.header = core.proxyHeader(s);
    const pending = s.pending;
    if (pending === null) return;
    s.pending = null;
    s.pendingBytes = 0;
    for (const msg of pending) {
      if (s.upstream === null) return; // ended meanwhile
      this.toBackend(s, msg);
    }
  }

  abandon(session: Session): void {
    const s = session as UdpSession;
    const up = s.upstream;
    if (up === null) return;
    up[kFlow] = null;
    s.upstream = null;
    s.header = null;
    up.close();
  }

  /** Counted per datagram already. */
  syncBytes(): void {}

  /** Stamped per datagram already. */
  moved(): boolean {
    return false;
  }

  close(session: Session): void {
    const s = session as UdpSession;
    const l = s.listener;
    if (l !== null) {
      const byPort = l.flows.get(s.clientIp);
      if (byPort?.get(s.clientPort) === s) {
        byPort.delete(s.clientPort);
        if (byPort.size === 0) l.flows.delete(s.clientIp);
      }
    }
    countRefused(this.f64, s);
    this.abandon(s);
  }

  recycle(s: Session): void {
    s.reset();
    if (this.pool.length < SESSION_POOL_MAX) this.pool.push(s as UdpSession);
  }
}
