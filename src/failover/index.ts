/**
 * Failover: one instance of an active/passive pair. Wires the pure state machine (fsm.ts) to the
 * heartbeat (heartbeat.ts), the VIP commands (vip.ts), the track checks and the timers, and
 * reports roles to whoever wires it (src/control/routes.ts): 'role' {from, to, cause} on every
 * change; the listeners on the VIP start or stop accepting through the setAccepting it is given.
 *
 * Timers and the ages in status() use a Clock (src/util/clock.ts: by default Node's timers and
 * performance.now(), libuv's monotonic clock), so a wall-clock step never declares the peer dead;
 * only the heartbeat's timestamp (checked against a window, see heartbeat.ts) uses the wall clock.
 */
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { formatHostPort, HA_RESTART_ONLY, type HaConfig } from '../config/schema.ts';
import type { FailoverEvents } from '../events.ts';
import type { Logger } from '../observability/log.ts';
import type { FAULT_KINDS } from '../observability/prom.ts';
import { realClock, type Clock, type ClockTimer } from '../util/clock.ts';
import { FulcrumError } from '../errors.ts';
import { HaAddressError } from './errors.ts';
import { FailoverFsm, ipv4ToInt, masterDownInterval, vipRetryDelay, type Action, type PeerView, type Role, type Step, type VipFailure } from './fsm.ts';
import { Heartbeat, readSecret, staleWindowMs, DROP_REASONS, type Advert, type DropReason, type HeartbeatSequence } from './heartbeat.ts';
import type { VipCommandError } from './errors.ts';
import { VipManager } from './vip.ts';

export type { Role, Step } from './fsm.ts';
export type { DropReason } from './heartbeat.ts';

export type { RoleChange } from '../events.ts';

export interface FailoverOptions {
  config: HaConfig;
  logger: Logger;
  /** Backends currently up, across every service (ha.track.min_backends_up compares with it). */
  backendsUp?: () => number;
  /**
   * Called with false at start and on stepping down, true on taking over. Should return promptly
   * (stop accepting new connections; do not wait for open ones to end).
   */
  setAccepting?: (accepting: boolean) => void | Promise<void>;
  /** Where the interface state is read; tests point it elsewhere. */
  operstateFile?: (iface: string) => string;
  /** The `ip` and `arping` binaries (default: found on PATH). */
  commands?: { ip?: string; arping?: string };
  /** Paces adverts and times out the master and the peer; the real clock by default (tests drive one by hand). */
  clock?: Clock;
}

export interface FailoverStatus {
  role: Role;
  /** Differs from role while a master with a failing track waits for the peer to be ready. */
  wanted: Role;
  priority: number;
  preempt: boolean;
  vips: string[];
  interface: string;
  vip_held: boolean;
  accepting: boolean;
  advert_interval_ms: number;
  master_down_interval_ms: number;
  peer: {
    address: string;
    role: Role | null;
    priority: number | null;
    /** Since the last valid heartbeat from the peer; null if none ever came. */
    last_advert_ms_ago: number | null;
    alive: boolean;
  };
  /** How many times this instance took the VIP (became master). */
  failovers: number;
  /** Role changes since start. */
  transitions: number;
  last_transition: { from: Role; to: Role; cause: string; at: string } | null;
  track: {
    ok: boolean;
    cause: string;
    backends_up: number | null;
    min_backends_up: number;
    interface_state: string | null;
  };
  heartbeat: { sent: number; received: number; epoch: number };
  dropped: Record<DropReason, number>;
  /** Failed VIP commands since start, by code (FULCRUM_ERR_VIP_ADD, FULCRUM_ERR_VIP_REMOVE, FULCRUM_ERR_GARP). */
  errors: Record<string, number>;
  /** Why this instance is in fault (null in any other role): the VIP could not be held, or the track fails. */
  fault: { kind: FaultKind; cause: string } | null;
  /** VIP faults since the VIP was last held and announced (the retry backs off with them). */
  vip_failures: number;
}

/**
 * What an abandoned failover hands to the next process (`fulcrum upgrade`, src/control/carry.ts's
 * `ha`): plain data, it crosses a thread and the IPC channel as JSON.
 */
export interface FailoverCarry {
  /** The process that abandoned it. */
  pid: number;
  role: Role;
  /** The heartbeat's epoch and last counter: the next process's first heartbeat is counter + 1 in the same epoch. */
  sequence: HeartbeatSequence;
  /** Wall clock (ms since the epoch) of the last heartbeat sent, as it stamped it: the next process logs the gap to its first. */
  last_sent_at: number;
  peer: PeerView | null;
  master_advert_interval_ms: number;
  vip_failures: number;
  /** The pair's identity it ran with (pairIdentity): the next process continues only the same pair. */
  identity: string;
}

/** ha's VIPs, interface, heartbeat address and peer, in words: what a carried failover must match. */
export function pairIdentity(c: HaConfig): string {
  return `vip ${c.vip.map((v) => `${v.address}/${v.prefix}`).join(',')} on ${c.interface}, bind ${formatHostPort(c.bind)}, peer ${formatHostPort(c.peer)}`;
}

/** What put an instance in fault: the VIP (a failed `ip addr add` or `arping`), or the track. */
export type FaultKind = (typeof FAULT_KINDS)[number];

/** Interface states that mean "no link" (anything else: up, unknown for virtual links). */
const DOWN_OPERSTATES = new Set(['down', 'lowerlayerdown', 'notpresent', 'dormant', 'testing', 'missing']);

export class Failover extends EventEmitter<FailoverEvents> {
  readonly fsm: FailoverFsm;
  readonly vip: VipManager;
  private hb: Heartbeat | null = null;
  private config: HaConfig;
  private readonly log: Logger;
  private readonly backendsUp: (() => number) | undefined;
  private readonly setAccepting: ((accepting: boolean) => void | Promise<void>) | undefined;
  private readonly operstateFile: (iface: string) => string;
  private readonly bindAddress: number;
  private readonly peerAddress: number;
  private readonly clock: Clock;

  private tickTimer: ClockTimer | null = null;
  private masterDownTimer: ClockTimer | null = null;
  private peerTimer: ClockTimer | null = null;
  private vipRetryTimer: ClockTimer | null = null;
  /** Actions that touch the system run one after another, in the order the FSM gave them. */
  private actions: Promise<unknown> = Promise.resolve();
  private accepting = false;
  private acceptingSet = false;
  private lastAdvertAt: number | null = null;
  private failovers = 0;
  private transitions = 0;
  private lastTransition: FailoverStatus['last_transition'] = null;
  private lastBackendsUp: number | null = null;
  private lastOperstate: string | null = null;
  private stopped = false;
  /** Handed to the next process (abandon): silent, deaf, and nothing it decides is run. */
  private abandoned = false;

  constructor(opts: FailoverOptions) {
    super();
    const c = opts.config;
    this.config = c;
    this.log = opts.logger.child({ component: 'failover' });
    this.backendsUp = opts.backendsUp;
    this.setAccepting = opts.setAccepting;
    this.operstateFile = opts.operstateFile ?? ((iface) => `/sys/class/net/${iface}/operstate`);
    this.clock = opts.clock ?? realClock;
    this.bindAddress = ipv4ToInt(c.bind.host);
    if (this.bindAddress < 0) throw new HaAddressError('ha.bind', formatHostPort(c.bind));
    this.peerAddress = ipv4ToInt(c.peer.host);
    if (this.peerAddress < 0) throw new HaAddressError('ha.peer', formatHostPort(c.peer));
    this.fsm = new FailoverFsm({
      priority: c.priority, address: this.bindAddress, advertIntervalMs: c.advert_interval,
      deadAfter: c.dead_after, preempt: c.preempt,
    });
    this.vip = new VipManager({
      vips: c.vip, iface: c.interface, garp: c.garp, logger: this.log,
      ipCommand: opts.commands?.ip, arpingCommand: opts.commands?.arping,
    });
  }

  /**
   * Reads the secret, binds the heartbeat, releases a VIP a previous run may have left behind
   * (kill -9 leaves the address on the interface), stops the listeners, then starts as backup
   * (or fault, if the track fails). Throws FulcrumErrors for a bad secret or an unbindable address.
   *
   * `carried` (`fulcrum upgrade`): goes on from the old process's abandoned failover instead — its
   * heartbeat sequence, its role (a master keeps the VIP and its listeners: nothing is released
   * first), its peer (FailoverFsm.continueFrom).
   */
  async start(carried?: FailoverCarry): Promise<void> {
    const c = this.config;
    // Another VIP or another peer is another pair: what the old process held is not this one's to continue.
    if (carried && carried.identity !== pairIdentity(c)) {
      throw new FulcrumError('FULCRUM_ERR_UPGRADE', `ha: the failover cannot be handed over to a different pair (${carried.identity} → ${pairIdentity(c)}); restart instead`);
    }
    const hb = await this.bindHeartbeat(carried?.sequence);
    if (carried?.role !== 'master') {
      await this.applyAccepting(false);
      await this.vip.remove();
    }
    this.checkTrack();
    this.log.info({
      priority: c.priority, vips: c.vip.map((v) => `${v.address}/${v.prefix}`), interface: c.interface,
      bind: formatHostPort(c.bind), peer: formatHostPort(c.peer), advert_interval_ms: c.advert_interval,
      dead_after: c.dead_after, preempt: c.preempt, epoch: hb.epoch,
      ...(carried ? { carried_from: carried.pid, carried_role: carried.role, counter: carried.sequence.counter } : {}),
    }, 'failover starting');
    const step = carried ? this.fsm.continueFrom({
      role: carried.role, peer: carried.peer, masterAdvertIntervalMs: carried.master_advert_interval_ms, vipFailures: carried.vip_failures,
    }) : this.fsm.start();
    if (step?.handler === 'initOnCarried') {
      // The pair's role did not change: not a transition, not a failover (status and metrics count
      // this process's own from here).
      for (const action of step.actions) this.run(action);
    } else this.handle(step);
    this.tickTimer = this.clock.setInterval(() => this.tick(), c.advert_interval);
    // The first heartbeat at once: for a carried role, the peer's master-down timer was last reset
    // by the old process's final one (abandon).
    const firstAt = Date.now(); // the heartbeat's own timestamp, as the old one's last_sent_at
    void hb.send(this.fsm.current, this.fsm.priority).then(() => {
      if (carried === undefined) return;
      const gap = firstAt - carried.last_sent_at;
      this.log.info({ carried_from: carried.pid, role: this.fsm.current, heartbeat_gap_ms: gap, epoch: hb.epoch, counter: hb.sequence().counter },
        `failover continues as ${this.fsm.current} from pid ${carried.pid}: first heartbeat ${gap}ms after its last`);
    });
  }

  /**
   * `fulcrum upgrade`, once the new process is ready to take the failover: this one stops without
   * a word to the pair — one last ordinary heartbeat (the peer's timers restart from it), then no
   * heartbeat sent or heard, no timer; no priority 0, the VIP and the listeners stay as they are.
   * Resolves with what the new process continues from. resume() undoes it (the upgrade failed).
   */
  async abandon(): Promise<FailoverCarry> {
    if (this.stopped) throw new Error('the failover is stopped');
    this.abandoned = true;
    this.clock.clearInterval(this.tickTimer);
    this.tickTimer = null;
    this.clearMasterDown();
    this.clearVipRetry();
    this.clock.clearTimeout(this.peerTimer);
    this.peerTimer = null;
    // A VIP command under way finishes first: the role carried is the one it leaves.
    await this.actions;
    const hb = this.hb;
    const lastSentAt = Date.now(); // the last heartbeat's own timestamp
    if (hb && this.fsm.current !== 'init') await hb.send(this.fsm.current, this.fsm.priority);
    const sequence = hb?.sequence() ?? { epoch: 0, counter: 0 };
    hb?.close();
    this.hb = null;
    const f = this.fsm;
    this.log.info({ role: f.current, epoch: sequence.epoch, counter: sequence.counter }, `failover abandoned as ${f.current}: the new process continues it`);
    return {
      pid: process.pid, role: f.current, sequence, last_sent_at: lastSentAt,
      peer: f.peer === null ? null : { ...f.peer }, master_advert_interval_ms: f.masterAdvertIntervalMs, vip_failures: f.vipFailures,
      identity: pairIdentity(this.config),
    };
  }

  /**
   * The upgrade failed after abandon(): this process goes on in the role it had. A new heartbeat
   * epoch (the failed process may have sent in the carried one; the peer takes a fresher epoch as a
   * restart), and the timers of the role: a backup waits a whole Master_Down_Interval again.
   */
  async resume(): Promise<void> {
    if (!this.abandoned || this.stopped) return;
    const hb = await this.bindHeartbeat();
    this.abandoned = false;
    const f = this.fsm;
    if (f.current === 'backup') this.run({ type: 'armMasterDown', ms: f.masterDownMs() });
    if (f.current === 'fault' && f.vipFault !== null) this.run({ type: 'armVipRetry', ms: vipRetryDelay(f.vipFailures) });
    this.tickTimer = this.clock.setInterval(() => this.tick(), this.config.advert_interval);
    this.log.warn({ role: f.current, epoch: hb.epoch }, `failover resumed as ${f.current}: the upgrade did not take it`);
    void hb.send(f.current, f.priority);
  }

  private async bindHeartbeat(sequence?: HeartbeatSequence): Promise<Heartbeat> {
    const c = this.config;
    const hb = new Heartbeat({
      bind: c.bind, peer: c.peer, bindAddress: this.bindAddress, peerAddress: this.peerAddress, key: readSecret(c.secret_file),
      advertIntervalMs: c.advert_interval, staleWindowMs: staleWindowMs(c.dead_after, c.advert_interval, c.max_clock_skew),
      logger: this.log, sequence,
    });
    await hb.start();
    this.hb = hb;
    hb.on('advert', (a) => this.onAdvert(a));
    return hb;
  }

  /**
   * Leaves the pair cleanly: a master stops accepting, sends priority 0 (the backup takes over
   * after its Skew_Time instead of a full Master_Down_Interval) and removes the VIP.
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    // Abandoned: the VIP, the listeners and the pair are the new process's now.
    if (this.abandoned) return;
    this.clock.clearInterval(this.tickTimer);
    this.tickTimer = null;
    this.handle(this.fsm.stop());
    await this.actions;
    this.clearMasterDown();
    this.clock.clearTimeout(this.peerTimer);
    this.peerTimer = null;
    if (this.vip.held) await this.vip.remove();
    await this.vip.idle();
    this.hb?.close();
    this.hb = null;
  }

  /** The ha settings in force (a reload changes some of them; see reconfigure). */
  get settings(): HaConfig {
    return this.config;
  }

  /**
   * Applies a reloaded ha section: priority, advert_interval, dead_after and preempt go to the
   * state machine (a master tells its peer at once; a backup restarts its master-down timer),
   * max_clock_skew and the interval to the heartbeat, garp to the VIP manager, track is checked
   * again now. The HA_RESTART_ONLY settings keep their running values (the reload reports them:
   * src/control/diff.ts).
   */
  reconfigure(next: HaConfig): void {
    const prev = this.config;
    const kept = Object.fromEntries(HA_RESTART_ONLY.map((k) => [k, prev[k]]));
    this.config = { ...next, ...kept } as HaConfig;
    const c = this.config;
    if (this.stopped) return;
    this.hb?.retime(c.advert_interval, staleWindowMs(c.dead_after, c.advert_interval, c.max_clock_skew));
    this.vip.setGarp(c.garp);
    if (c.advert_interval !== prev.advert_interval && this.tickTimer) {
      this.clock.clearInterval(this.tickTimer);
      this.tickTimer = this.clock.setInterval(() => this.tick(), c.advert_interval);
    }
    this.handle(this.fsm.reconfigure({ priority: c.priority, advertIntervalMs: c.advert_interval, deadAfter: c.dead_after, preempt: c.preempt }));
    if (JSON.stringify(c.track) !== JSON.stringify(prev.track) && this.tickTimer) this.checkTrack();
  }

  status(): FailoverStatus {
    const f = this.fsm;
    const c = this.config;
    return {
      role: f.current,
      wanted: f.wanted,
      priority: f.priority,
      preempt: f.preempt,
      vips: c.vip.map((v) => `${v.address}/${v.prefix}`),
      interface: c.interface,
      vip_held: this.vip.held,
      accepting: this.accepting,
      advert_interval_ms: c.advert_interval,
      master_down_interval_ms: Math.round(f.masterDownMs()),
      peer: {
        address: formatHostPort(c.peer),
        role: f.peer?.role ?? null,
        priority: f.peer?.priority ?? null,
        last_advert_ms_ago: this.lastAdvertAt === null ? null : Math.round(this.clock.now() - this.lastAdvertAt),
        alive: f.peer?.alive ?? false,
      },
      failovers: this.failovers,
      transitions: this.transitions,
      last_transition: this.lastTransition,
      track: {
        ok: f.trackPassing,
        cause: f.trackCause,
        backends_up: this.lastBackendsUp,
        min_backends_up: c.track.min_backends_up,
        interface_state: this.lastOperstate,
      },
      heartbeat: { sent: this.hb?.sent ?? 0, received: this.hb?.received ?? 0, epoch: this.hb?.epoch ?? 0 },
      dropped: this.hb ? { ...this.hb.dropped } : Object.fromEntries(DROP_REASONS.map((r) => [r, 0])) as Record<DropReason, number>,
      errors: { ...this.vip.errors },
      fault: f.current !== 'fault' ? null : f.vipFault !== null ? { kind: 'vip', cause: f.vipFault } : { kind: 'track', cause: f.trackCause },
      vip_failures: f.vipFailures,
    };
  }

  // ── events in ──────────────────────────────────────────────────────────────────────────────

  /** Every advert interval: re-check the track, then send our heartbeat. */
  private tick(): void {
    this.checkTrack();
    if (this.hb && this.fsm.current !== 'init') void this.hb.send(this.fsm.current, this.fsm.priority);
  }

  private onAdvert(a: Advert): void {
    if (this.stopped || this.abandoned) return;
    this.lastAdvertAt = this.clock.now();
    // Peer liveness (any heartbeat, whatever its state): lost after Master_Down_Interval of silence.
    this.clock.clearTimeout(this.peerTimer);
    this.peerTimer = this.clock.setTimeout(() => {
      this.peerTimer = null;
      this.log.warn({ peer: formatHostPort(this.config.peer), silent_ms: Math.round(this.clock.now() - (this.lastAdvertAt ?? 0)) }, 'peer lost: no valid heartbeat');
      this.handle(this.fsm.peerLost());
    }, masterDownInterval(this.fsm.priority, a.intervalMs, this.config.dead_after));
    this.handle(this.fsm.advert({ role: a.role, priority: a.priority, address: a.senderAddress, intervalMs: a.intervalMs }));
  }

  /** Edge-triggered: the FSM hears about a track change once, with its cause. */
  private checkTrack(): void {
    const problems: string[] = [];
    const t = this.config.track;
    if (this.backendsUp) {
      const up = this.backendsUp();
      this.lastBackendsUp = up;
      if (t.min_backends_up > 0 && up < t.min_backends_up) problems.push(`${up} backend${up === 1 ? '' : 's'} up, ha.track.min_backends_up is ${t.min_backends_up}`);
    }
    if (t.interface) {
      const state = this.readOperstate();
      this.lastOperstate = state;
      if (DOWN_OPERSTATES.has(state)) problems.push(`interface ${this.config.interface} is ${state}`);
    }
    const ok = problems.length === 0;
    if (ok === this.fsm.trackPassing && this.fsm.trackCause !== 'not checked yet') return;
    const cause = ok ? (this.backendsUp ? `${this.lastBackendsUp} backends up` : 'ok') + (t.interface ? `, interface ${this.config.interface} ${this.lastOperstate}` : '') : problems.join('; ');
    this.handle(ok ? this.fsm.trackOk(cause) : this.fsm.trackFail(cause));
  }

  /** sysfs reads are served from memory by the kernel: a sync read of a few bytes costs microseconds. */
  private readOperstate(): string {
    try {
      return readFileSync(this.operstateFile(this.config.interface), 'utf8').trim();
    } catch {
      return 'missing';
    }
  }

  // ── actions out ────────────────────────────────────────────────────────────────────────────

  private handle(step: Step | null): void {
    if (!step || this.abandoned) return;
    if (step.from !== step.to) {
      this.transitions++;
      if (step.to === 'master') this.failovers++;
      this.lastTransition = { from: step.from, to: step.to, cause: step.cause, at: new Date().toISOString() };
      const level = step.to === 'fault' ? 'warn' : 'info';
      this.log[level]({ from: step.from, to: step.to, cause: step.cause, handler: step.handler }, `role ${step.from} → ${step.to}: ${step.cause}`);
      this.emit('role', { from: step.from, to: step.to, cause: step.cause });
    } else if (step.handler !== 'backupOnAdvert') {
      // Same role, something to say: reasserting, announcing again, keeping the VIP despite a
      // failing track. (A backup hearing its master, every advert interval, is not news.)
      const level = step.handler === 'masterOnTrackFail' ? 'warn' : 'info';
      this.log[level]({ role: step.to, cause: step.cause, handler: step.handler }, step.cause);
    }
    for (const action of step.actions) this.run(action);
  }

  /** Timers change at once; everything else waits its turn behind the previous system action. */
  private run(action: Action): void {
    switch (action.type) {
      case 'armMasterDown':
        this.clearMasterDown();
        this.masterDownTimer = this.clock.setTimeout(() => {
          this.masterDownTimer = null;
          this.handle(this.fsm.masterDown());
        }, action.ms);
        return;
      case 'cancelMasterDown':
        this.clearMasterDown();
        return;
      case 'sendGarp': {
        // The first announcement's outcome, unless the role changed meanwhile (an arping cut short
        // by the VIP's removal on stepping down is no fault).
        const epoch = this.transitions;
        this.queue(() => {
          if (epoch !== this.transitions) return;
          void this.vip.garp().then((errors) => {
            if (errors === null || epoch !== this.transitions) return;
            if (errors.length > 0) this.vipFailed('garp', errors);
            else if (this.vip.held) this.fsm.vipOk();
          });
        });
        return;
      }
      case 'sendAdvert': {
        const hb = this.hb;
        // Priority 0 is a master resigning; otherwise the role we have just taken (or keep), not
        // sent once that role was left while the advert waited its turn (a VIP fault, say).
        const role: Role = action.priority === 0 ? 'master' : this.fsm.current;
        const epoch = this.transitions;
        this.queue(async () => {
          if (!hb || (action.priority !== 0 && epoch !== this.transitions)) return;
          await hb.send(role, action.priority);
          // A priority-0 advert goes twice: a lost datagram would cost the peer a whole Master_Down_Interval.
          if (action.priority === 0) await hb.send(role, 0);
        });
        return;
      }
      case 'addVip':
        this.queue(async () => {
          const errors = await this.vip.add();
          if (errors.length > 0) this.vipFailed('add', errors);
        });
        return;
      case 'armVipRetry':
        this.clearVipRetry();
        this.vipRetryTimer = this.clock.setTimeout(() => {
          this.vipRetryTimer = null;
          this.handle(this.fsm.vipRetry());
        }, action.ms);
        return;
      case 'cancelVipRetry':
        this.clearVipRetry();
        return;
      case 'removeVip':
        this.queue(() => this.vip.remove());
        return;
      case 'startAccepting': {
        // Not once the master this was for has stepped down (its VIP could not be added).
        const epoch = this.transitions;
        this.queue(() => (epoch === this.transitions ? this.applyAccepting(true) : undefined));
        return;
      }
      case 'stopAccepting':
        this.queue(() => this.applyAccepting(false));
        return;
    }
  }

  private queue(job: () => unknown): void {
    this.actions = this.actions.then(job).catch((err: unknown) => {
      this.log.error({ err: (err as Error)?.message }, 'failover action failed');
    });
  }

  private async applyAccepting(on: boolean): Promise<void> {
    if (this.accepting === on && this.acceptingSet) return;
    this.acceptingSet = true;
    this.accepting = on;
    try {
      await this.setAccepting?.(on);
    } catch (err) {
      this.log.error({ err: (err as Error).message, accepting: on }, on ? 'could not start accepting on the VIP' : 'could not stop accepting on the VIP');
    }
  }

  /** A VIP command failed: the state machine decides (a master steps down); its error is already logged and counted. */
  private vipFailed(kind: VipFailure, errors: VipCommandError[]): void {
    this.handle(this.fsm.vipFailed(kind, errors.map((e) => e.message).join('; ')));
  }

  private clearVipRetry(): void {
    this.clock.clearTimeout(this.vipRetryTimer);
    this.vipRetryTimer = null;
  }

  private clearMasterDown(): void {
    this.clock.clearTimeout(this.masterDownTimer);
    this.masterDownTimer = null;
  }
}
