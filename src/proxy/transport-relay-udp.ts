/**
 * UDP services on the relay path: the relay (relay/udp.c) moves the datagrams — recvmmsg on the
 * service socket, one connected socket per flow, replies batched with sendmmsg — and this
 * transport tells the session core what happened, as transport-udp.ts does on the JavaScript path
 * with node:dgram. The core decides as for a TCP connection; nothing here calls it per datagram.
 *
 *   EV_UDP_NEW (a new client address and port; the relay holds its datagrams) ─▶ core.accepted:
 *     admission and pick in WASM ─▶ connect ─▶ relay.udpConnect (the relay sends what it held)
 *     ─▶ core.connected at once (a connected UDP socket has no handshake); refused ─▶ udpClose
 *   EV_UDP_FAILED (ICMP unreachable on the flow's socket) ─▶ core.connectFailed: passive health,
 *     another backend (udpConnect again on the same slot: the held datagrams go there), or the end
 *   EV_UDP_ENDED (udp.responses reached, or its backend down / maint: END_MOVED) ─▶ core.end;
 *     a moved flow's datagram comes next as the EV_UDP_NEW of a new flow (a new pick)
 *   the core's sweep: idle expiry from the relay's activity count (moved), bytes and datagrams
 *     from the stats array (syncBytes); the log line per ended flow is the core's
 *
 * A flow's session has a relay slot from its connect (the relay's stats and events name it) and,
 * before, the relay's pending id. Removed backends: the relay cannot know, so a reload marks
 * their flows (udpMove, from configure) and they move on their next datagram, as on the JS path.
 */
import { getSystemErrorName } from 'node:util';
import { isIP } from 'node:net';
import { backendAddr, B_STATE, TERM_BACKEND_DOWN, TERM_SERVER_CLOSED, TERM_SHUTDOWN } from '../shm/layout.ts';
import type { DataPath } from './core.ts';
import type { SockAddr } from './handles.ts';
import type { ListenProblem, ServiceEntry } from './messages.ts';
import {
  END_MOVED, EV_A, EV_ADDR, EV_B, EV_ID, EV_UDP_ENDED, EV_UDP_FAILED, EV_UDP_NEW, formatAddress, STAT_BYTES_IN, STAT_BYTES_OUT,
  STAT_DGRAMS_IN, STAT_DGRAMS_OUT, STAT_FIELDS, UDP_MAX_BATCH, type RelayBinding,
} from './relay.ts';
import { ST_CONNECTED, type Session } from './session.ts';
import { ownAllocation, RelaySession, type RelayTransport } from './transport-relay.ts';
import { SESSION_POOL_MAX } from './transport-js.ts';
import { countRefused, FlowTransport, listenAddress, stillListed, type DatagramListener, type DatagramTransport } from './transport-udp.ts';
import type { ListenerRef } from './transport.ts';

/** One UDP service's socket in this worker's relay. */
export interface RelayUdpListener extends DatagramListener {
  readonly lid: number;
  /** The bound address (the PROXY header's destination). */
  readonly local: SockAddr;
}

class RelayUdpSession extends RelaySession {
  listener: RelayUdpListener | null = null;
  /** The relay's pending id until the first udpConnect takes it, else -1. */
  pid = -1;
  clientIp = '';
  clientPort = 0;
  clientFamily = '';
  /** The service table entry the flow's backend was last checked against (stillListed). */
  entrySeen: ServiceEntry | null = null;

  override reset(): void {
    super.reset();
    this.listener = null;
    this.pid = -1;
    this.clientIp = this.clientFamily = '';
    this.clientPort = 0;
    this.entrySeen = null;
  }
}

export class RelayUdpTransport extends FlowTransport implements DatagramTransport {
  readonly core: DataPath;
  private readonly relay: RelayTransport;
  private readonly binding: RelayBinding;
  private readonly f64: Float64Array;
  private readonly listeners: (RelayUdpListener | undefined)[] = [];
  private readonly pool: RelayUdpSession[] = [];

  /** `batch`: datagrams per recvmmsg / sendmmsg (1: a system call per datagram, to measure what batching buys). */
  constructor(relay: RelayTransport, core: DataPath, binding: RelayBinding, batch = UDP_MAX_BATCH) {
    super();
    this.relay = relay;
    this.core = core;
    this.binding = binding;
    this.f64 = new Float64Array(core.ctx.memory.buffer);
    binding.udpInit(this.f64, batch);
    relay.udp = this;
  }

  // ── listeners (worker.ts) ──────────────────────────────────────────────────

  /** Binds the service's socket in the relay, or has it take `fd`, one the previous process handed over (upgrade). */
  async listen(ref: ListenerRef, address: string, reusePort: boolean, fd?: number): Promise<RelayUdpListener | ListenProblem> {
    const e = ref.rt.entry;
    const ip = await listenAddress(e, address);
    if (typeof ip !== 'string') return ip;
    const family = isIP(ip);
    const lid = this.binding.udpListen(ip, e.listen.port, family, reusePort, fd ?? -1);
    if (lid < 0) {
      const code = getSystemErrorName(lid);
      return { service: e.name, address, message: fd === undefined ? `bind ${code} ${address}` : `adopting the socket handed over: ${code} ${address}`, code };
    }
    const l: RelayUdpListener = { ref, lid, local: { address: ip, port: e.listen.port, family: family === 6 ? 'IPv6' : 'IPv4' } };
    this.listeners[lid] = l;
    this.configure(l);
    return l;
  }

  /** The service's settings to the relay; a reload's removed backends: their flows move on their next datagram. */
  configure(dl: DatagramListener): void {
    const l = dl as RelayUdpListener;
    const rt = l.ref.rt;
    const e = rt.entry;
    this.binding.udpConfigure(l.lid, e.udp.max_datagram, e.udp.responses, rt.scBase);
    for (const s of this.core.sessions) {
      if (s.t !== this || s.state !== ST_CONNECTED) continue;
      const f = s as RelayUdpSession;
      if (f.listener === l && f.busy && !stillListed(f, e)) this.binding.udpMove(f.slot);
    }
  }

  fdOf(dl: DatagramListener): number {
    return this.binding.udpListenerFd((dl as RelayUdpListener).lid);
  }

  /** Closes a service socket: its flows end with it (their replies could no longer reach the clients). */
  closeListener(dl: DatagramListener): void {
    const l = dl as RelayUdpListener;
    for (const s of this.core.sessions) if (s.t === this && (s as RelayUdpSession).listener === l) this.core.end(s, TERM_SHUTDOWN, true);
    this.binding.udpCloseListener(l.lid);
    this.listeners[l.lid] = undefined;
  }

  // ── events (RelayTransport.onEvents: once per event of a wake) ─────────────

  onEvent(type: number, ev: Int32Array, at: number): void {
    if (type === EV_UDP_NEW) {
      this.newFlow(ev[at + EV_ID], ev[at + EV_A], ev, at);
      return;
    }
    const s = this.relay.slotSessions[ev[at + EV_ID]] as RelayUdpSession | null | undefined;
    if (s === null || s === undefined || s.t !== this || !s.busy) return;
    if (type === EV_UDP_FAILED) this.flowError(s, getSystemErrorName(ev[at + EV_A]), ev[at + EV_A]); // the relay counted an ICMP unreachable
    else if (type === EV_UDP_ENDED) {
      s.busy = false; // the relay freed the flow
      this.core.end(s, ev[at + EV_A] === END_MOVED ? TERM_BACKEND_DOWN : TERM_SERVER_CLOSED);
    }
  }

  /** HOT: once per new flow (its first datagram waits in the relay). */
  private newFlow(lid: number, pid: number, ev: Int32Array, at: number): void {
    const l = this.listeners[lid];
    if (l === undefined) {
      this.binding.udpClose(0, pid);
      return;
    }
    const s = this.pool.pop() ?? new RelayUdpSession(this);
    s.listener = l;
    s.pid = pid;
    const e = l.ref.rt.entry;
    if (e.hashed || e.send_proxy !== 'none' || this.core.ctx.onClose !== null) {
      // Only what needs it pays for the text (the hash key, the PROXY header, the log line).
      const familyPort = ev[at + EV_B];
      const family = familyPort >>> 16;
      s.clientIp = formatAddress(family, ev, at + EV_ADDR);
      s.clientPort = familyPort & 0xffff;
      s.clientFamily = family === 6 ? 'IPv6' : 'IPv4';
    }
    s.datagramsIn = s.datagramsOut = 0;
    this.core.accepted(s, l.ref.rt);
  }

  // ── the Transport interface (peer, local, watch, unwatch: FlowTransport) ──

  /**
   * Once per flow (and per retry after an ICMP unreachable): the relay connects the flow's socket
   * to the backend and sends the datagrams it held; connected at once (no handshake).
   */
  connect(session: Session, ip: string, port: number, family: number): number {
    const s = session as RelayUdpSession;
    let header: Uint8Array | null = this.core.proxyHeader(s);
    if (header !== null && this.relay.sanitized) header = ownAllocation(header);
    const slot = this.relay.slotOf(s);
    const err = this.binding.udpConnect(slot, s.pid, ip, port, family, header, (backendAddr(s.backend) + B_STATE) >> 2, s.bcBase);
    if (err !== 0) return err;
    s.pid = -1;
    s.busy = true;
    s.entrySeen = s.svc!.entry;
    this.core.connected(s);
    return 0;
  }

  /** A failed attempt: the relay keeps the flow (its socket, its held datagrams) for the next connect or the close. */
  abandon(): void {}

  /** Bytes and datagrams from the relay's stats (the log line's, the byte counters'). */
  syncBytes(session: Session): void {
    const s = session as RelayUdpSession;
    if (s.slot < 0) return;
    const st = this.relay.stats;
    const base = s.slot * STAT_FIELDS;
    s.bytesIn = st[base + STAT_BYTES_IN];
    s.bytesOut = st[base + STAT_BYTES_OUT];
    s.datagramsIn = st[base + STAT_DGRAMS_IN];
    s.datagramsOut = st[base + STAT_DGRAMS_OUT];
  }

  moved(s: Session): boolean {
    return this.relay.moved(s);
  }

  close(session: Session): void {
    const s = session as RelayUdpSession;
    if (s.pid >= 0) {
      this.binding.udpClose(0, s.pid); // refused before its first backend: its datagrams are dropped
      s.pid = -1;
    }
    countRefused(this.f64, s);
    if (s.slot < 0) return;
    if (s.busy) {
      this.binding.udpClose(s.slot, -1);
      s.busy = false;
    }
    this.syncBytes(s);
    this.relay.releaseSlot(s);
  }

  recycle(s: Session): void {
    s.reset();
    if (this.pool.length < SESSION_POOL_MAX) this.pool.push(s as RelayUdpSession);
  }
}
