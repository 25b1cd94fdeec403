/**
 * Scale-out by BGP: this node announces its VIPs through a real BGP daemon (no home-made BGP),
 * and only what it can serve. Each VIP is put on `lo` at start (so services bind it like any
 * local address) and announced while
 *   - the data plane listens (setListening, from src/main.ts once the workers are up),
 *   - every service listening on it (its address or 0.0.0.0) has announce_when.min_backends_up
 *     backends up (re-evaluated on each backend-state event: src/control/routes.ts bgpRoutes),
 *   - the node is not draining (stop(), drain()).
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

  /** Withdraws every VIP and keeps them withdrawn (an operator's drain), or lets them back. */
  drain(on: boolean, cause = on ? 'drained by operator' : 'undrained by operator'): Promise<void> {
    if (this.stopping && !on) return Promise.resolve();
    this.draining = on ? cause : null;
    return this.evaluate(cause);
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
   * Graceful stop, first part: withdraw every VIP, then keep serving `drain` while the router
   * moves new flows away. The listeners close after this (src/main.ts), then shutdown_grace.
   */
  async stop(why = 'stop requested'): Promise<void> {
    this.stopping = true;
    await this.drain(true, `stopping: ${why}`);
    const drainMs = this.config.drain;
    this.log.info({ drain_ms: drainMs }, 'VIPs withdrawn; still accepting while the router moves flows away');
    if (drainMs > 0) await new Promise((r) => setTimeout(r, drainMs));
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
