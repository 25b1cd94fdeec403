/**
 * Scale-out by BGP: this node announces its VIPs through a real BGP daemon (no home-made BGP),
 * and only what it can serve. Each VIP is put on `lo` at start (so services bind it like any
 * local address) and announced while
 *   - the data plane listens (setListening, from src/main.ts once the workers are up),
 *   - every service listening on it (its address or 0.0.0.0) has announce_when.min_backends_up
 *     backends up (re-evaluated on each backend-state event: src/control/routes.ts bgpRoutes),
 *   - the node is not draining (stop(), drain()).
 * A drain (stop, `fulcrum ctl node drain`) quiesces before it withdraws, so that withdrawing costs
 * no connection: the VIPs' services first stop completing new handshakes without refusing them
 * (their listeners drop pure SYNs: the relay's quiesce filter, on every worker), so their clients
 * retransmit a second later; the node's connections on them end (at most `drain`); only then is
 * the route withdrawn, and the router sends those retransmits to the other nodes. The listeners
 * hold SYNs back `drain` more while the router moves (a closed port would refuse them); then a
 * stop closes them, and an operator's drain lets them accept again. Without the filter (the relay
 * not built) the withdraw comes first and the node keeps accepting for `drain`.
 * Every announce and withdraw runs through the speaker (gobgp.ts or command.ts) one at a time,
 * is logged with its cause, counted, and emitted as a 'route' event; a failed one is retried.
 * Death and hangs are the speaker's part (gobgp.ts: the daemon dies with fulcrum, and is killed
 * when fulcrum's loop stops feeding it).
 *
 * `fulcrum upgrade` hands the announcements over (src/control/upgrade.ts, carry.ts): the old
 * process's carry() gives what it announces and, for gobgp, the running daemon to adopt; it then
 * release()s instead of stopping (no withdraw, gobgpd and the VIPs on lo stay). The new process
 * is built with `carried`: it adopts, counts the carried VIPs as announced, and changes nothing on
 * the speaker until commit() (its start went through; a failed start only releases). commit()
 * reads what the speaker announces now and reconciles from there: announce what should be and
 * is not, withdraw what should not be — never a withdraw followed by an announce of the same VIP.
 */
import { EventEmitter } from 'node:events';
import type { BgpConfig } from '../config/schema.ts';
import type { BgpEvents, BgpRouteEvent } from '../events.ts';
import { VipManager } from '../failover/vip.ts';
import type { Logger } from '../observability/log.ts';
import { realClock, type Clock } from '../util/clock.ts';
import { CommandSpeaker, commandBinaries } from './command.ts';
import { GobgpSpeaker, gobgpBinaries, type GobgpAdoption } from './gobgp.ts';
import { BgpSpeakerError } from './errors.ts';
import type { CarriedBgp, NamedHandle, SessionState, Speaker } from './speaker.ts';

export { BgpRouteError, BgpSpeakerError } from './errors.ts';
export type { CarriedBgp, NamedHandle, SessionState, Speaker } from './speaker.ts';

/** A service listening on a VIP, with its backends up now. */
export interface BgpServiceView {
  name: string;
  up: number;
  /** Its connections open now (all workers); a drain waits for them to end before it withdraws. */
  active: number;
  /** udp: no handshake to hold back, and its flows are not waited for (they end on idle). */
  protocol: 'tcp' | 'udp';
}

/** A listener the quiesce could not change (the pool's ListenProblem). */
export interface QuiesceProblem {
  service: string;
  address: string;
  message: string;
}

/** Where a drain is: holding new SYNs back and waiting for the node's connections, or withdrawn. */
export interface BgpDrainStatus {
  /**
   * quiescing: the listeners are being told; waiting: new SYNs are held back, `connections` still
   * open; withdrawn: the route is gone and new SYNs are still held back while the router moves
   * flows away; settled (an operator's drain): the listeners accept again, the route stays withdrawn.
   */
  phase: 'quiescing' | 'waiting' | 'withdrawn' | 'settled';
  cause: string;
  /** The VIPs' TCP services whose listeners hold new SYNs back now. */
  quiesced: string[];
  /** Connections open on those services at the last look. */
  connections: number;
  /** Why new SYNs are not held back (the quiesce filter could not be set), else null. */
  unquiesced: string | null;
  /** ISO time the phase began. */
  since: string;
}

export interface BgpOptions {
  config: BgpConfig;
  logger: Logger;
  /** The services that listen on `vip` (its address or 0.0.0.0), read at each evaluation. */
  servicesOn: (vip: string) => BgpServiceView[];
  /** Default: built from config.speaker. */
  speaker?: Speaker;
  /** The `ip` binary (default: on PATH). */
  ipCommand?: string;
  /** A failed announce or withdraw is tried again after this long (ms). */
  retryMs?: number;
  /**
   * Holds new SYNs back on these services' listeners in every worker (an empty list: lets them
   * through again): the pool's quiesce. Absent: a drain withdraws first (no quiesce).
   */
  quiesce?: (services: string[]) => Promise<QuiesceProblem[]>;
  /** The drain's waits (default: the real clock). */
  clock?: Clock;
  /** Started by `fulcrum upgrade`: what the old process carried and the descriptors it handed over. */
  carried?: { state: CarriedBgp; handles: ReadonlyMap<string, object>; fromPid: number };
}

export interface BgpVipStatus {
  vip: string;
  announced: boolean;
  /** What the last evaluation wants. */
  wanted: boolean;
  /** Why it is (or is not) announced. */
  reason: string;
  /** ISO time of the last announce or withdraw. */
  since: string | null;
}

export interface BgpStatus {
  speaker: 'gobgp' | 'command';
  draining: string | null;
  /** The drain under way or done (quiesce, connections, withdraw), or null. */
  drain: BgpDrainStatus | null;
  /** A graceful stop began: the VIPs stay withdrawn (an operator's `ready` is refused). */
  stopping: boolean;
  listening: boolean;
  min_backends_up: number;
  drain_ms: number;
  /** null: the speaker cannot tell (command). */
  sessions: SessionState[] | null;
  sessions_up: number | null;
  vips: BgpVipStatus[];
  counts: { announce: number; withdraw: number; failed: number };
  speaker_info: Record<string, unknown>;
}

type VipState = BgpVipStatus;

/**
 * After the quiesce, a drain waits at least this long (within `drain`) before it withdraws, even
 * with no connection open: a handshake under way when the filter went on completes within a
 * round trip, and its connection must be counted before the route goes.
 */
const HANDSHAKE_MS = 250;
/** How often a drain looks at the connections still open. */
const DRAIN_POLL_MS = 20;

/** `fulcrum check`: the binaries the configured speaker runs are there (BgpSpeakerError names a missing one). */
export function checkSpeakerBinaries(config: BgpConfig): void {
  if (config.speaker === 'command') commandBinaries({ announce: config.announce!, withdraw: config.withdraw! });
  else gobgpBinaries();
}

export function buildSpeaker(config: BgpConfig, logger: Logger, adopt?: GobgpAdoption): Speaker {
  if (config.speaker === 'command') return new CommandSpeaker({ announce: config.announce!, withdraw: config.withdraw! });
  return new GobgpSpeaker({
    asn: config.asn!, routerId: config.router_id!, localAddress: config.local_address, neighbors: config.neighbors,
    holdTimeMs: config.hold_time, livenessMs: config.liveness, logger, adopt,
  });
}

export class Bgp extends EventEmitter<BgpEvents> {
  readonly speaker: Speaker;
  readonly config: BgpConfig;
  private readonly log: Logger;
  private readonly lo: VipManager;
  private readonly ipCommand: string | undefined;
  private readonly servicesOn: (vip: string) => BgpServiceView[];
  private readonly retryMs: number;
  private readonly vips = new Map<string, VipState>();
  private listening = false;
  private draining: string | null = null;
  /** stop() began: the VIPs stay withdrawn whatever an operator asks. */
  private stopping = false;
  private counts = { announce: 0, withdraw: 0, failed: 0 };
  /** Speaker commands run one after another. */
  private queue: Promise<unknown> = Promise.resolve();
  private retryTimer: NodeJS.Timeout | null = null;
  private closed = false;
  private readonly quiesceFn: BgpOptions['quiesce'];
  private readonly clock: Clock;
  private drainState: BgpDrainStatus | null = null;
  /** Bumped by each drain, undrain and stop: a drain's later steps stop when another began. */
  private drainGen = 0;
  private drainQueue: Promise<unknown> = Promise.resolve();
  /** `fulcrum upgrade`: what the old process carried; `adopting` until commit() (nothing is asked of the speaker meanwhile). */
  private readonly carried: BgpOptions['carried'] | null;
  private adopting: boolean;
  /** release() ran: the speaker and the VIPs are the next process's; close() has nothing left to do. */
  private released = false;

  constructor(opts: BgpOptions) {
    super();
    this.config = opts.config;
    this.log = opts.logger.child({ component: 'bgp' });
    this.servicesOn = opts.servicesOn;
    this.retryMs = opts.retryMs ?? 1000;
    this.quiesceFn = opts.quiesce;
    this.clock = opts.clock ?? realClock;
    this.carried = opts.carried ?? null;
    this.adopting = this.carried !== null;
    const c = this.carried;
    const adopt = c?.state.speaker === opts.config.speaker && c.state.gobgp ? { carried: c.state.gobgp, handles: c.handles, fromPid: c.fromPid } : undefined;
    this.speaker = opts.speaker ?? buildSpeaker(opts.config, this.log, adopt);
    this.ipCommand = opts.ipCommand;
    this.lo = this.loFor(opts.config.vips);
    for (const vip of opts.config.vips) {
      // Carried: announced by the old process, and counted so here until commit() reads the speaker.
      const announced = c?.state.announced.includes(vip) ?? false;
      this.vips.set(vip, { vip, announced, wanted: false, reason: announced ? `carried over from pid ${c!.fromPid} (upgrade)` : 'starting', since: null });
    }
    this.speaker.onSession = (neighbor, from, to) => {
      this.log.info({ neighbor, from, to }, `BGP session ${neighbor}: ${from} → ${to}`);
      this.emit('session', { neighbor, from, to });
    };
    this.speaker.onRoutesLost = (cause) => {
      // gobgpd went away (its routes with it) or came back empty: what it announced is gone.
      for (const v of this.vips.values()) if (v.announced) this.record(v, 'withdraw', cause);
      this.evaluate(cause);
    };
  }

  /** Starts the speaker (a missing binary rejects, naming it) and puts the VIPs on lo. */
  async start(): Promise<void> {
    const c = this.carried;
    if (c && c.state.speaker !== this.config.speaker) {
      throw new BgpSpeakerError(`bgp.speaker: the running fulcrum (pid ${c.fromPid}) announces through ${c.state.speaker}, this config through ${this.config.speaker}; an upgrade keeps the speaker: restart fulcrum to change it`);
    }
    await this.speaker.start();
    const errors = await this.lo.add();
    if (errors.length > 0) {
      await this.speaker.stop();
      throw errors[0];
    }
    this.log.info({ speaker: this.speaker.kind, vips: this.config.vips }, 'BGP speaker started; VIPs on lo');
  }

  /** The data plane listens (true) or stopped listening (false). */
  setListening(on: boolean): void {
    this.listening = on;
    this.evaluate(on ? 'listeners open' : 'listeners closed');
  }

  /**
   * An operator's drain (on): quiesce, wait for the node's connections (at most `drain`),
   * withdraw every VIP and keep them withdrawn; resolves once withdrawn. `drain` later the
   * listeners accept again (the router has moved), the route staying withdrawn. Off: the
   * listeners accept again (if still held), then the VIPs are announced when they can be served.
   */
  drain(on: boolean, cause = on ? 'drained by operator' : 'undrained by operator'): Promise<void> {
    if (this.stopping) return Promise.resolve(); // the stop drains, and its routes stay withdrawn
    if (!on) {
      this.drainGen++; // a drain still waiting for connections stops there, without withdrawing
      return this.drainJob(async () => {
        await this.unquiesce(cause);
        this.drainState = null;
        this.draining = null;
        await this.evaluate(cause);
      });
    }
    if (this.withdrawnNow(cause)) return this.queue.then(() => undefined);
    return this.drainJob(async () => {
      if (this.draining !== null) return; // drained already: the route is withdrawn
      const gen = await this.quiesceAndWithdraw(cause);
      if (gen === null) return;
      this.clock.setTimeout(() => void this.drainJob(async () => {
        if (gen !== this.drainGen) return;
        await this.unquiesce(`the router had ${this.config.drain}ms to move flows away`);
        this.setPhase('settled');
        this.log.info({ cause }, 'BGP drain settled: the listeners accept again; the route stays withdrawn until `node ready`');
      }), this.config.drain).unref();
    });
  }

  /**
   * Withdrawn already (drained before, or nothing announced: no router sends here): nothing to
   * quiesce or wait for, drained at once. Whether it was.
   */
  private withdrawnNow(cause: string): boolean {
    if (this.draining === null) {
      if ([...this.vips.values()].some((v) => v.announced)) return false;
      this.drainGen++;
    }
    // Drained already (an operator's drain): a stop keeps what it did, under the stop's cause.
    if (this.draining === null || this.stopping) this.draining = cause;
    void this.evaluate(cause);
    return true;
  }

  /** Drains, undrains and the stop's drain run one after another (each quiesce then has its undo in order). */
  private drainJob(job: () => Promise<void>): Promise<void> {
    const next = this.drainQueue.then(job);
    this.drainQueue = next.catch((err: unknown) => this.log.error({ err }, 'BGP drain step failed'));
    return next;
  }

  /**
   * A drain's first part, shared by drain(true) and stop(): quiesce the VIPs' TCP services, wait
   * until their connections end (at most `drain`), withdraw. Resolves with the drain's
   * generation, or null when an undrain superseded it before the withdraw.
   */
  private async quiesceAndWithdraw(cause: string): Promise<number | null> {
    const gen = ++this.drainGen;
    const services = this.vipServices();
    const tcp = services.filter((s) => s.protocol === 'tcp').map((s) => s.name);
    this.drainState = { phase: 'quiescing', cause, quiesced: [], connections: countOpen(services), unquiesced: null, since: new Date().toISOString() };
    const why = this.quiesceFn === undefined ? 'no quiesce in this process' : tcp.length === 0 ? 'no TCP service on the VIPs' : await this.quiesce(tcp);
    if (gen !== this.drainGen) return null;
    if (why !== null) {
      // Without the filter the node keeps completing handshakes: waiting for its connections
      // to end would only wait out `drain`. The withdraw comes first, as before the quiesce.
      this.drainState.unquiesced = why;
      this.log.warn({ cause, reason: why }, `BGP drain without quiesce (${why}): withdrawing with connections open; still accepting for ${this.config.drain}ms`);
    } else {
      this.drainState.quiesced = tcp;
      await this.waitConnections(gen, cause);
      if (gen !== this.drainGen) return null;
    }
    this.draining = cause;
    await this.evaluate(cause);
    this.setPhase('withdrawn');
    this.log.info({ cause, drain_ms: this.config.drain, quiesced: this.drainState.quiesced },
      why === null ? `BGP drain: withdrawn; new SYNs held back ${this.config.drain}ms more while the router moves flows away` : 'BGP drain: withdrawn');
    return gen;
  }

  /** Sets the filter on `services`; null, or why it could not (and then nothing is held back). */
  private async quiesce(services: string[]): Promise<string | null> {
    this.log.info({ services }, `BGP drain: quiescing ${services.join(', ')} (new SYNs unanswered; their clients retry)`);
    const problems = await this.quiesceFn!(services);
    if (problems.length === 0) return null;
    await this.quiesceFn!([]);
    return problems.map((p) => `${p.service} ${p.address}: ${p.message}`).join('; ');
  }

  private async unquiesce(cause: string): Promise<void> {
    if (this.drainState === null || this.drainState.quiesced.length === 0 || this.quiesceFn === undefined) return;
    const problems = await this.quiesceFn([]);
    this.drainState.quiesced = [];
    if (problems.length > 0) this.log.error({ problems }, `BGP drain: could not let new connections in again: ${problems.map((p) => `${p.service} ${p.address}: ${p.message}`).join('; ')}`);
    else this.log.info({ cause }, `BGP drain: listeners accept new connections again (${cause})`);
  }

  /** Polls the VIPs' TCP connections until none is open (and a handshake's round trip has passed), at most `drain`. */
  private async waitConnections(gen: number, cause: string): Promise<void> {
    const t0 = this.clock.now();
    const bound = this.config.drain;
    const open = (): number => countOpen(this.vipServices());
    this.drainState!.connections = open();
    this.setPhase('waiting');
    this.log.info({ cause, connections: this.drainState!.connections, drain_ms: bound }, `BGP drain: waiting for ${this.drainState!.connections} connections to end (at most ${bound}ms) before withdrawing`);
    for (;;) {
      const elapsed = this.clock.now() - t0;
      const n = open();
      this.drainState!.connections = n;
      if (gen !== this.drainGen) return;
      if ((n === 0 && elapsed >= Math.min(HANDSHAKE_MS, bound)) || elapsed >= bound) {
        if (n === 0) this.log.info({ cause, waited_ms: Math.round(elapsed) }, `BGP drain: no connection open after ${Math.round(elapsed)}ms`);
        else this.log.warn({ cause, connections: n, waited_ms: Math.round(elapsed) }, `BGP drain: ${n} connections still open after ${bound}ms; withdrawing (the router may send their packets elsewhere)`);
        return;
      }
      await new Promise<void>((r) => this.clock.setTimeout(r, Math.min(DRAIN_POLL_MS, bound - elapsed)));
    }
  }

  private setPhase(phase: BgpDrainStatus['phase']): void {
    if (this.drainState === null) return;
    this.drainState.phase = phase;
    this.drainState.since = new Date().toISOString();
  }

  /** The services on any of the VIPs, each once. */
  private vipServices(): BgpServiceView[] {
    const seen = new Map<string, BgpServiceView>();
    for (const vip of this.vips.keys()) for (const s of this.servicesOn(vip)) seen.set(s.name, s);
    return [...seen.values()];
  }

  /** Re-decides every VIP; resolves once the speaker did what that asks. */
  evaluate(cause: string): Promise<void> {
    if (this.closed) return Promise.resolve();
    for (const v of this.vips.values()) {
      const { wanted, reason } = this.decide(v.vip);
      v.wanted = wanted;
      v.reason = reason;
    }
    // Adopting (upgrade): the speaker is the old process's until commit(), which reconciles.
    if (this.adopting) return Promise.resolve();
    return this.enqueue(() => this.reconcile(cause));
  }

  private decide(vip: string): { wanted: boolean; reason: string } {
    if (this.draining !== null) return { wanted: false, reason: this.draining };
    if (!this.listening) return { wanted: false, reason: 'listeners not open' };
    const services = this.servicesOn(vip);
    if (services.length === 0) return { wanted: false, reason: 'no service listens on it' };
    const min = this.config.announce_when.min_backends_up;
    const short = services.find((s) => s.up < min);
    if (short) return { wanted: false, reason: `${short.name} has ${short.up} backend${short.up === 1 ? '' : 's'} up (needs ${min})` };
    return { wanted: true, reason: `ready: ${services.map((s) => `${s.name} ${s.up} up`).join(', ')}` };
  }

  private async reconcile(cause: string): Promise<void> {
    let failed = false;
    for (const v of this.vips.values()) {
      if (v.wanted === v.announced || this.closed) continue;
      const action = v.wanted ? 'announce' : 'withdraw';
      try {
        await (v.wanted ? this.speaker.announce(v.vip) : this.speaker.withdraw(v.vip));
        this.record(v, action, v.reason === cause ? cause : `${v.reason} (${cause})`);
      } catch (err) {
        failed = true;
        this.counts.failed++;
        this.log.error({ err, code: (err as { code?: string }).code, vip: v.vip, action }, `BGP ${action} of ${v.vip} failed; retrying in ${this.retryMs}ms`);
      }
    }
    if (failed && !this.retryTimer && !this.closed) {
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        void this.evaluate('retry');
      }, this.retryMs);
      this.retryTimer.unref();
    }
  }

  private record(v: VipState, action: BgpRouteEvent['action'], cause: string): void {
    v.announced = action === 'announce';
    v.since = new Date().toISOString();
    this.counts[action]++;
    this.log.info({ vip: v.vip, action, cause, announced: this.counts.announce, withdrawn: this.counts.withdraw }, `BGP ${action} ${v.vip}: ${cause}`);
    this.emit('route', { vip: v.vip, action, cause });
  }

  /**
   * Graceful stop, first part: quiesce, wait for the node's connections (at most `drain`),
   * withdraw every VIP, then hold new SYNs back (or, without the filter, keep accepting) `drain`
   * more while the router moves flows away. The listeners close after this (src/main.ts), then
   * shutdown_grace.
   */
  async stop(why = 'stop requested'): Promise<void> {
    this.stopping = true;
    this.drainGen++; // an operator's drain still waiting gives way to this one
    const cause = `stopping: ${why}`;
    if (!this.withdrawnNow(cause)) await this.drainJob(async () => void (await this.quiesceAndWithdraw(cause)));
    else await this.queue;
    const drainMs = this.config.drain;
    if (drainMs > 0) await new Promise<void>((r) => this.clock.setTimeout(r, drainMs));
  }

  /**
   * Last part of a stop: the speaker goes (its sessions close) and the VIPs leave lo. Adopting
   * (an upgrade whose start failed): only what this process added goes; the speaker, its routes
   * and the carried VIPs stay the old process's.
   */
  async close(): Promise<void> {
    if (this.released) return;
    if (this.adopting) {
      this.released = true;
      // Released, not stopped: gobgpd stays tied to the old process (a speaker with nothing to let go stops).
      await (this.speaker.release ? this.speaker.release() : this.speaker.stop());
      await this.loFor(this.config.vips.filter((v) => !this.carried!.state.vips.includes(v))).remove();
      return;
    }
    await this.queue;
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    await this.speaker.stop();
    await this.lo.remove();
  }

  /** `fulcrum upgrade`, the old process: what the next one starts from, and the descriptors it must hold. */
  carry(): { state: CarriedBgp; handles: NamedHandle[] } {
    const h = this.speaker.handOver?.() ?? null;
    const announced = [...this.vips.values()].filter((v) => v.announced).map((v) => v.vip);
    return { state: { speaker: this.speaker.kind, vips: [...this.config.vips], announced, ...(h ? { gobgp: h.carried } : {}) }, handles: h?.handles ?? [] };
  }

  /**
   * `fulcrum upgrade`, the old process once the new one serves: lets go without withdrawing —
   * gobgpd keeps running (tied to the new process only), the VIPs stay on lo.
   */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    await this.queue;
    await this.speaker.release?.();
    this.log.info({ announced: [...this.vips.values()].filter((v) => v.announced).map((v) => v.vip) }, 'BGP handed over to the new process: nothing withdrawn');
  }

  /**
   * `fulcrum upgrade`, the new process once its start went through: the hand-over is final.
   * What is announced is read from the speaker (gobgp's RIB), or, when it cannot say (command),
   * taken as carried and announced again where it should be (the operator's command runs once
   * more: it must accept an announce of what is announced). Then one reconcile from there;
   * VIPs this config dropped are withdrawn and leave lo.
   */
  async commit(): Promise<void> {
    const c = this.carried;
    if (!c || !this.adopting) return;
    this.adopting = false;
    this.speaker.commit?.();
    const seen = (await this.speaker.announced?.()) ?? null;
    const cause = `upgrade from pid ${c.fromPid}`;
    if (seen !== null) for (const v of this.vips.values()) v.announced = seen.includes(v.vip);
    for (const v of this.vips.values()) Object.assign(v, this.decide(v.vip));
    const dropped = (seen ?? c.state.announced).filter((vip) => !this.vips.has(vip));
    await this.enqueue(async () => {
      if (seen === null) {
        for (const v of this.vips.values()) {
          if (!v.wanted || !v.announced) continue;
          await this.speaker.announce(v.vip).then(() => this.record(v, 'announce', `${v.reason} (${cause}: announced again, the speaker cannot say what it announces)`),
            (err) => this.log.error({ err, vip: v.vip }, `BGP announce of ${v.vip} again after the upgrade failed`));
        }
      }
      for (const vip of dropped) {
        const gone: VipState = { vip, announced: true, wanted: false, reason: 'not in this config', since: null };
        await this.speaker.withdraw(vip).then(() => this.record(gone, 'withdraw', `not in this config (${cause})`),
          (err) => this.log.error({ err, vip }, `BGP withdraw of ${vip} (not in this config) failed`));
      }
    });
    const off = c.state.vips.filter((vip) => !this.vips.has(vip));
    if (off.length > 0) await this.loFor(off).remove();
    await this.evaluate(cause);
  }

  /** A VipManager for these VIPs on lo. */
  private loFor(vips: readonly string[]): VipManager {
    return new VipManager({ vips: vips.map((address) => ({ address, prefix: 32 })), iface: 'lo', garp: { count: 0, interval: 1000 }, logger: this.log, ipCommand: this.ipCommand });
  }

  status(): BgpStatus {
    const sessions = this.speaker.sessions();
    return {
      speaker: this.speaker.kind,
      draining: this.draining,
      drain: this.drainState === null ? null : { ...this.drainState, quiesced: [...this.drainState.quiesced] },
      stopping: this.stopping,
      listening: this.listening,
      min_backends_up: this.config.announce_when.min_backends_up,
      drain_ms: this.config.drain,
      sessions,
      sessions_up: sessions ? sessions.filter((s) => s.established).length : null,
      vips: [...this.vips.values()].map((v) => ({ ...v })),
      counts: { ...this.counts },
      speaker_info: this.speaker.info(),
    };
  }

  private enqueue(job: () => Promise<void>): Promise<void> {
    const next = this.queue.then(job, job);
    this.queue = next.catch(() => undefined);
    return next;
  }
}

/** Connections open on the TCP services among `services` (a UDP flow ends on idle: not waited for). */
function countOpen(services: BgpServiceView[]): number {
  let n = 0;
  for (const s of services) if (s.protocol === 'tcp') n += s.active;
  return n;
}
