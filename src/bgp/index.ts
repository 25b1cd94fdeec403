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
 */
import { EventEmitter } from 'node:events';
import type { BgpConfig } from '../config/schema.ts';
import type { BgpEvents, BgpRouteEvent } from '../events.ts';
import { VipManager } from '../failover/vip.ts';
import type { Logger } from '../observability/log.ts';
import { CommandSpeaker, commandBinaries } from './command.ts';
import { GobgpSpeaker, gobgpBinaries } from './gobgp.ts';
import type { SessionState, Speaker } from './speaker.ts';

export { BgpRouteError, BgpSpeakerError } from './errors.ts';
export type { SessionState, Speaker } from './speaker.ts';

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

export function buildSpeaker(config: BgpConfig, logger: Logger): Speaker {
  if (config.speaker === 'command') return new CommandSpeaker({ announce: config.announce!, withdraw: config.withdraw! });
  return new GobgpSpeaker({
    asn: config.asn!, routerId: config.router_id!, localAddress: config.local_address, neighbors: config.neighbors,
    holdTimeMs: config.hold_time, livenessMs: config.liveness, logger,
  });
}

export class Bgp extends EventEmitter<BgpEvents> {
  readonly speaker: Speaker;
  readonly config: BgpConfig;
  private readonly log: Logger;
  private readonly lo: VipManager;
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

  constructor(opts: BgpOptions) {
    super();
    this.config = opts.config;
    this.log = opts.logger.child({ component: 'bgp' });
    this.servicesOn = opts.servicesOn;
    this.retryMs = opts.retryMs ?? 1000;
    this.speaker = opts.speaker ?? buildSpeaker(opts.config, this.log);
    this.lo = new VipManager({ vips: opts.config.vips.map((address) => ({ address, prefix: 32 })), iface: 'lo', garp: { count: 0, interval: 1000 }, logger: this.log, ipCommand: opts.ipCommand });
    for (const vip of opts.config.vips) this.vips.set(vip, { vip, announced: false, wanted: false, reason: 'starting', since: null });
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

  /** Last part of a stop: the speaker goes (its sessions close) and the VIPs leave lo. */
  async close(): Promise<void> {
    await this.queue;
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    await this.speaker.stop();
    await this.lo.remove();
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
