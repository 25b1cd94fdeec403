/**
 * The relay transport: the native relay (relay.ts, relay/*.c) makes the data path's system calls
 * — accept, connect, moving the bytes both ways, half-close, close — and reports each step in one
 * batch per event-loop wake (`onEvents`). A session here has a client fd instead of a handle, and
 * a relay slot: where the relay counts its bytes and activity (the shared stats array), from its
 * first relay request until it ends.
 *
 * Services with accept_proxy are accepted on a Node server instead (the relay cannot read
 * headers): `lent` reads the client's PROXY header on the handle, then lends the handle's fd to
 * the relay for the connect and the bytes; the handle closes it at the end.
 */
import { getSystemErrorName } from 'node:util';
import { TERM_CLIENT_CLOSED, TERM_SERVER_CLOSED } from '../shm/layout.ts';
import type { DataPath } from './core.ts';
import { K_NREAD, streamState, UV_EOF, type SockAddr, type TcpHandle } from './handles.ts';
import {
  CONNECT_DONE, END_SERVER, EV_A, EV_ACCEPT, EV_UDP_NEW, EV_ACCEPT_ERROR, EV_ADDR, EV_B, EV_CLIENT_GONE, EV_CONNECT_FAILED, EV_CONNECTED, EV_ENDED, EV_FIELDS, EV_ID, EV_TYPE,
  formatAddress, OPT_FIELDS, OPT_FLAGS, OPT_KEEP_COUNT, OPT_KEEP_IDLE, OPT_KEEP_INTERVAL, OPT_PROPAGATE_RESET, RELAY_EVENTS, STAT_ACTIVITY, STAT_BYTES_IN, STAT_BYTES_OUT, STAT_FIELDS, type RelayBinding,
} from './relay.ts';
import type { ServiceEntry } from './messages.ts';
import { Session, ST_CONNECTING, type ServiceRuntime } from './session.ts';
import { HandleClients, kSession, READ_BUFFER_SIZE, SESSION_POOL_MAX, type Handle } from './transport-js.ts';
import type { ListenerRef, ServerTransport, Transport } from './transport.ts';
import type { RelayUdpTransport } from './transport-relay-udp.ts';

/** After an accept failed for lack of files (EMFILE…), the listener waits this long (HAProxy: 100 ms too). */
const ACCEPT_RETRY_MS = 100;

/** A session the relay carries (a UDP flow's: transport-relay-udp.ts). */
export class RelaySession extends Session {
  /** The client socket the relay accepted, else -1; -1 again once closed. */
  fd = -1;
  /** accept_proxy: the Node handle that read the client's PROXY header and lends its fd (LentTransport), else null. */
  client: Handle | null = null;
  /** The client's address, when the relay accepted it and something needs it (hash, log, send_proxy). */
  peerIp = '';
  peerPort = 0;
  /** This session's relay slot, from its first relay request until it ends, else -1. */
  slot = -1;
  /** The relay holds a session for the slot now (connecting, relaying, or watching the queued client). */
  busy = false;
  /** bytesIn / bytesOut when the relay's connect was asked (its counters start at 0 there). */
  baseIn = 0;
  baseOut = 0;
  /** The relay's activity count as the last sweep saw it. */
  seenActivity = 0;

  override reset(): void {
    super.reset();
    this.fd = this.slot = -1;
    this.client = null;
    this.peerIp = '';
    this.peerPort = 0;
    this.busy = false;
    this.baseIn = this.baseOut = this.seenActivity = 0;
  }
}

export class RelayTransport implements Transport {
  readonly core: DataPath;
  private readonly binding: RelayBinding;
  /** Accept_proxy services' clients: read on a handle, then lent to this relay. */
  readonly lent: LentTransport;
  /** UDP services' flows (worker.ts sets it): their events (EV_UDP_*) go there. */
  udp: RelayUdpTransport | null = null;
  /** Per slot: bytes in and out, activity (and a UDP flow's datagrams), written by the relay. Replaced when it grows. */
  stats = new Float64Array(1024 * STAT_FIELDS);
  private readonly events = new Int32Array(RELAY_EVENTS * EV_FIELDS);
  readonly slotSessions: (RelaySession | null)[] = [];
  private readonly freeSlots: number[] = [];
  /** The listener each relay listener id serves (worker.ts's, so a reload's new runtime is seen). */
  private readonly listeners: (ListenerRef | undefined)[] = [];
  private readonly pool: RelaySession[] = [];
  /** Filled by binding.localAddress (send_proxy's destination). */
  private readonly localAddr = new Int32Array(5);
  /** The options of a connect or keepAlive call (layout.ts OPT_*), filled per call. */
  private readonly opts = new Int32Array(OPT_FIELDS);
  /**
   * A relay built with AddressSanitizer (the test suite's relay-sanitized run): the bytes handed
   * to it get an allocation of their own, so reading past them is caught; a slice of Node's 8 KiB
   * buffer pool would hide it.
   */
  readonly sanitized: boolean;

  constructor(core: DataPath, binding: RelayBinding) {
    this.core = core;
    this.binding = binding;
    this.sanitized = binding.constants().sanitized === 1;
    this.lent = new LentTransport(this, core);
    binding.init(this.stats, this.events, (n) => this.onEvents(n));
  }

  // ── listeners (worker.ts owns them) ────────────────────────────────────────

  /** Opens a listener whose connections the relay accepts for `ref`'s service: its id, or a negative errno. */
  listen(ref: ListenerRef, ip: string, port: number, family: number, reusePort: boolean, backlog: number): number {
    const lid = this.binding.listen(ip, port, family, reusePort, backlog);
    if (lid >= 0) this.listeners[lid] = ref;
    return lid;
  }

  /** Polls a listening socket handed over by the previous process (upgrade) for `ref`'s service: its id, or a negative errno. */
  adopt(ref: ListenerRef, fd: number): number {
    const lid = this.binding.adopt(fd);
    if (lid >= 0) this.listeners[lid] = ref;
    return lid;
  }

  /** Connections handed over by other workers' relays, not reported here yet: a drain is not over while there are any. */
  handedOver(): number {
    return this.binding.handedOver();
  }

  /** A listener's fd (what an upgrade hands over), or a negative errno. */
  listenerFd(lid: number): number {
    return this.binding.listenerFd(lid);
  }

  /** The listener's TCP keepalive (null: off): its accepted sockets inherit it. */
  keepAlive(lid: number, ka: ServiceEntry['tcp_keepalive']): void {
    this.binding.keepAlive(lid, this.fillOpts(false, ka));
  }

  /** `opts` for one call: once per connect attempt (four stores, no allocation). */
  private fillOpts(propagateReset: boolean, ka: ServiceEntry['tcp_keepalive']): Int32Array {
    const o = this.opts;
    o[OPT_FLAGS] = propagateReset ? OPT_PROPAGATE_RESET : 0;
    o[OPT_KEEP_IDLE] = ka === null ? 0 : ka.idle;
    o[OPT_KEEP_INTERVAL] = ka === null ? 0 : ka.interval;
    o[OPT_KEEP_COUNT] = ka === null ? 0 : ka.count;
    return o;
  }

  /** The descriptor reserve stopped accepting: the listeners stay paused, whatever an accept error's retry would do. */
  acceptStopped = false;

  /** Stops (or starts again) accepting on a listener: the descriptor reserve's mark (worker.ts). */
  pauseListener(lid: number, pause: boolean): void {
    if (pause) this.binding.pause(lid);
    else this.binding.resume(lid);
  }

  /**
   * Closes a listener. Its ref stays under its id (until the id is reused): a connection another
   * worker's relay accepted and handed over just before the close still arrives on this id
   * (handoff.c), and is served rather than reset.
   */
  closeListener(lid: number): void {
    this.binding.closeListener(lid);
  }

  // ── Transport ──────────────────────────────────────────────────────────────

  peer(s: Session, out: SockAddr): void {
    out.address = (s as RelaySession).peerIp;
    out.port = (s as RelaySession).peerPort;
  }

  local(s: Session, out: SockAddr): void {
    const a = this.localAddr;
    if (this.binding.localAddress((s as RelaySession).fd, a) !== 0) return;
    out.address = formatAddress(a[0] >>> 16, a, 1);
    out.port = a[0] & 0xffff;
  }

  /** Queued: the relay watches the client for leaving (EV_CLIENT_GONE). */
  watch(session: Session): number {
    const s = session as RelaySession;
    const err = this.binding.watch(this.slotOf(s), s.fd);
    if (err === 0) s.busy = true;
    return err;
  }

  /** Dequeued, or an attempt given up (a timeout): the relay lets go of the session, the client stays. */
  unwatch(session: Session): void {
    const s = session as RelaySession;
    if (!s.busy) return;
    this.binding.stop(s.slot, true);
    s.busy = false;
  }

  connect(s: Session, ip: string, port: number, family: number): number {
    return this.connectClient(s as RelaySession, (s as RelaySession).fd, true, ip, port, family);
  }

  abandon(s: Session): void {
    this.unwatch(s);
  }

  /** The relay's counters of a session into its own (bytes; the sweep reads activity: moved). */
  syncBytes(session: Session): void {
    const s = session as RelaySession;
    if (s.slot < 0) return;
    const base = s.slot * STAT_FIELDS;
    s.bytesIn = s.baseIn + this.stats[base + STAT_BYTES_IN];
    s.bytesOut = s.baseOut + this.stats[base + STAT_BYTES_OUT];
  }

  moved(session: Session): boolean {
    const s = session as RelaySession;
    if (!s.busy) return false;
    const activity = this.stats[s.slot * STAT_FIELDS + STAT_ACTIVITY];
    if (activity === s.seenActivity) return false;
    s.seenActivity = activity;
    return true;
  }

  close(session: Session): void {
    const s = session as RelaySession;
    this.closeSlot(s);
    if (s.fd >= 0) {
      this.binding.closeFd(s.fd);
      s.fd = -1;
    }
  }

  recycle(s: Session): void {
    s.reset();
    if (this.pool.length < SESSION_POOL_MAX) this.pool.push(s as RelaySession);
  }

  // ── shared with `lent` ─────────────────────────────────────────────────────

  /** A pooled session object for a connection just accepted, carried by `t` (this, or lent). */
  take(t: Transport): RelaySession {
    const s = this.pool.pop() ?? new RelaySession(t);
    s.t = t;
    return s;
  }

  /**
   * Once per connect attempt: the relay connects to `ip`, sends the PROXY header and any bytes
   * read before (a retry sends them again), then moves the bytes both ways. `fd` is the client:
   * the relay's own (`own`), or a handle's it borrows.
   */
  connectClient(s: RelaySession, fd: number, own: boolean, ip: string, port: number, family: number): number {
    let prefix: Uint8Array | null = null;
    const pending = s.pending;
    const h = this.core.proxyHeader(s);
    if (h !== null) prefix = pending === null ? h : Buffer.concat([h, ...pending]);
    else if (pending !== null) prefix = pending.length === 1 ? pending[0] : Buffer.concat(pending);
    if (this.sanitized && prefix !== null) prefix = ownAllocation(prefix);
    const e = s.svc!.entry;
    const opts = this.fillOpts(e.propagate_reset, e.tcp_keepalive);
    const err = this.binding.connect(this.slotOf(s), fd, own, ip, port, family, prefix, s.clientEnded, opts);
    if (err === 0 || err === CONNECT_DONE) {
      s.busy = true;
      s.baseIn = s.bytesIn;
      s.baseOut = s.bytesOut;
      s.seenActivity = 0;
    }
    return err;
  }

  /** The session's end on the relay's side: it closes the sockets it has (but a lent client), its slot is free again. */
  closeSlot(s: RelaySession): void {
    if (s.slot < 0) return;
    if (s.busy) {
      this.binding.stop(s.slot, false);
      s.busy = false;
      s.fd = -1; // its own client socket: closed by the relay
    }
    this.syncBytes(s);
    this.releaseSlot(s);
  }

  /** The slot is free again (the relay holds nothing for it any more). */
  releaseSlot(s: RelaySession): void {
    this.slotSessions[s.slot] = null;
    this.freeSlots.push(s.slot);
    s.slot = -1;
  }

  /** The session's relay slot, taken on its first relay request and kept until it ends. */
  slotOf(s: RelaySession): number {
    if (s.slot >= 0) return s.slot;
    const slot = this.freeSlots.pop() ?? this.slotSessions.length;
    if ((slot + 1) * STAT_FIELDS > this.stats.length) {
      const grown = new Float64Array(this.stats.length * 2);
      grown.set(this.stats);
      this.stats = grown;
      this.binding.setStats(grown);
    }
    this.slotSessions[slot] = s;
    s.slot = slot;
    // Counted from here (connect zeroes them again, and connectClient moves the base).
    this.stats.fill(0, slot * STAT_FIELDS, (slot + 1) * STAT_FIELDS);
    s.baseIn = s.bytesIn;
    s.baseOut = s.bytesOut;
    return slot;
  }

  // ── events ─────────────────────────────────────────────────────────────────

  /**
   * Called by the relay once per event-loop wake in which something happened: `events` holds n
   * events (relay.ts has the layout), each told to the core as the JavaScript path's callbacks do.
   */
  private onEvents(n: number): void {
    const ev = this.events;
    const core = this.core;
    for (let i = 0, at = 0; i < n; i++, at += EV_FIELDS) {
      const type = ev[at + EV_TYPE];
      if (type >= EV_UDP_NEW) {
        this.udp?.onEvent(type, ev, at);
        continue;
      }
      if (type === EV_ACCEPT) {
        this.onAccept(ev[at + EV_ID], ev[at + EV_A], at);
        continue;
      }
      if (type === EV_ACCEPT_ERROR) {
        this.onAcceptError(ev[at + EV_ID], ev[at + EV_A]);
        continue;
      }
      const s = this.slotSessions[ev[at + EV_ID]];
      if (s === null || s === undefined || !s.busy) continue;
      s.busy = false;
      if (type === EV_CONNECTED) {
        s.busy = true;
        if (s.state !== ST_CONNECTING) continue;
        s.pending = null; // sent: kept until now for a retry
        s.pendingBytes = 0;
        core.connected(s);
      } else if (type === EV_CONNECT_FAILED) {
        if (s.state === ST_CONNECTING) core.connectFailed(s, getSystemErrorName(ev[at + EV_A]));
      } else if (type === EV_ENDED) {
        if (s.client === null) s.fd = -1; // closed by the relay
        core.end(s, ev[at + EV_A] === END_SERVER ? TERM_SERVER_CLOSED : TERM_CLIENT_CLOSED);
      } else if (type === EV_CLIENT_GONE) {
        core.clientLeft(s); // abandoned its wait
      }
    }
  }

  /** HOT: once per connection the relay accepted (`at`: its event, with the client's address). */
  private onAccept(lid: number, fd: number, at: number): void {
    const ref = this.listeners[lid];
    if (ref === undefined) {
      this.binding.closeFd(fd);
      return;
    }
    const s = this.take(this);
    s.fd = fd;
    const e = ref.rt.entry;
    if (e.hashed || e.send_proxy !== 'none' || this.core.ctx.onClose !== null) {
      const familyPort = this.events[at + EV_B];
      s.peerIp = formatAddress(familyPort >>> 16, this.events, at + EV_ADDR);
      s.peerPort = familyPort & 0xffff;
    }
    this.core.accepted(s, ref.rt);
  }

  /** Accepting failed for lack of files or memory: the relay paused the listener; try again shortly. */
  private onAcceptError(lid: number, errno: number): void {
    const ref = this.listeners[lid];
    if (ref === undefined) return;
    this.core.ctx.onLocalError?.(errno, ref.rt.entry.name, 'accept');
    setTimeout(() => {
      if (this.listeners[lid] === ref && !this.acceptStopped) this.binding.resume(lid);
    }, ACCEPT_RETRY_MS).unref();
  }
}

/**
 * accept_proxy services on the relay path: a Node server accepts, the handle reads the client's
 * PROXY header (and whatever follows it before the backend is up) into the core, and watches the
 * client while it is queued; from the connect on, the relay carries the session with the handle's
 * fd, which the handle closes at the end.
 */
export class LentTransport extends HandleClients implements Transport, ServerTransport {
  readonly relay: RelayTransport;
  readonly core: DataPath;
  /** Every lent handle reads into this one buffer: the core copies what it keeps at once (early). */
  readonly readBuffer = Buffer.allocUnsafeSlow(READ_BUFFER_SIZE);

  constructor(relay: RelayTransport, core: DataPath) {
    super();
    this.relay = relay;
    this.core = core;
  }

  /** Once per accept_proxy connection on the relay path (transport.ts onConnection). */
  adopt(handle: TcpHandle, rt: ServiceRuntime): void {
    const client = handle as Handle;
    const s = this.relay.take(this);
    s.client = client;
    client[kSession] = s;
    client.onread = onLentRead;
    client.useUserBuffer(this.readBuffer);
    client.readStart();
    this.core.accepted(s, rt);
  }

  connect(session: Session, ip: string, port: number, family: number): number {
    const s = session as RelaySession;
    const handle = s.client!;
    handle.readStop(); // the relay reads from here on
    return this.relay.connectClient(s, handle.fd, false, ip, port, family);
  }

  abandon(s: Session): void {
    this.relay.unwatch(s);
  }

  syncBytes(s: Session): void {
    this.relay.syncBytes(s);
  }

  moved(s: Session): boolean {
    return this.relay.moved(s);
  }

  close(session: Session): void {
    const s = session as RelaySession;
    this.relay.closeSlot(s);
    const handle = s.client;
    if (handle === null) return;
    handle[kSession] = null;
    handle.close();
    s.client = null;
  }

  recycle(s: Session): void {
    this.relay.recycle(s);
  }
}

/** Once per chunk a lent handle reads (its PROXY header, early bytes; none once the relay has it). */
function onLentRead(this: Handle): undefined {
  const s = this[kSession] as RelaySession | null;
  if (s === null) return undefined;
  const t = s.t as LentTransport;
  const n = streamState[K_NREAD];
  if (n > 0) {
    s.bytesIn += n;
    if (t.core.early(s, t.readBuffer, n) && this[kSession] === s) this.readStop(); // until the relay connects
    return undefined;
  }
  if (n === UV_EOF) t.core.clientLeft(s);
  else if (n < 0) t.core.end(s, TERM_CLIENT_CLOSED); // reset
  return undefined;
}

/** A copy of `b` in an allocation of its own (not a slice of Node's pool). Sanitized runs only. */
export function ownAllocation(b: Uint8Array): Buffer {
  const copy = Buffer.allocUnsafeSlow(b.length);
  copy.set(b);
  return copy;
}
