/**
 * The failover state machine: pure, no clock, no sockets, no commands. It is fed events (start,
 * an advert from the peer, the master-down timer firing, track changes, a reload's settings, stop)
 * and answers each with a step `{ to, cause, actions }`; the driver (index.ts) runs the actions in
 * order: VIP commands, listener pause/resume, heartbeat sends and the master-down timer.
 *
 * It follows VRRP (RFC 5798) where VRRP has something to say, and keepalived's vrrp.c in its
 * shape: one handler per state × event (`backupOnMasterDown`, `masterOnHigherPriority`, …) and a
 * `wanted` state kept apart from the `current` one (a master whose track fails *wants* fault but
 * keeps the VIP while no peer can take it).
 *
 * Two deliberate differences from VRRP, both because there are exactly two instances and a unicast
 * heartbeat rather than a multicast group:
 *  - Every instance sends a heartbeat every advert interval, whatever its state, carrying that
 *    state. VRRP backups are silent; here the master must know whether its backup is alive and
 *    healthy before it gives up the VIP on a track failure, and `status()` shows the peer's state.
 *    Only heartbeats whose state is `master` are VRRP ADVERTISEMENTs for the rules below.
 *  - A master that sees another master with a lower priority does not just discard its
 *    advertisement (§6.4.3): it answers at once with an advert (so the other steps down within one
 *    round trip rather than one interval) and announces the VIP again with gratuitous ARP, since
 *    clients may have learnt the loser's MAC while both held the address (split brain healing).
 */

export const ROLES = ['init', 'backup', 'master', 'fault'] as const;
export type Role = (typeof ROLES)[number];

export type Action =
  | { type: 'addVip' }
  | { type: 'removeVip' }
  | { type: 'sendGarp' }
  | { type: 'startAccepting' }
  | { type: 'stopAccepting' }
  /** A heartbeat sent now, outside the periodic schedule; priority 0 means "I am leaving, take over". */
  | { type: 'sendAdvert'; priority: number }
  /** (Re)start the master-down timer: when it fires, the driver calls `masterDown()`. */
  | { type: 'armMasterDown'; ms: number }
  | { type: 'cancelMasterDown' }
  /** Start the VIP retry timer: when it fires, the driver calls `vipRetry()`. */
  | { type: 'armVipRetry'; ms: number }
  | { type: 'cancelVipRetry' };

/** Which command failed to hold the VIP: `ip addr add`, or the gratuitous ARP (`arping`) that announces it. */
export type VipFailure = 'add' | 'garp';

/**
 * Backoff of the retries after a VIP fault: the first after VIP_RETRY_BASE_MS, each next one twice
 * as late, at most VIP_RETRY_MAX_MS (a missing capability does not come back by itself; a
 * transient failure, a busy netlink or an interface being renamed, is retried soon).
 */
export const VIP_RETRY_BASE_MS = 1000;
export const VIP_RETRY_MAX_MS = 30_000;

export function vipRetryDelay(failures: number): number {
  return Math.min(VIP_RETRY_MAX_MS, VIP_RETRY_BASE_MS * 2 ** Math.max(0, failures - 1));
}

/** What a handler decided. `to` equal to the current role is a step that only runs actions. */
export interface Step {
  from: Role;
  to: Role;
  /** Why, in words for the log line: "no advert from master for 361ms". */
  cause: string;
  /** The handler's name, e.g. "backupOnMasterDown", for logs and tests. */
  handler: string;
  actions: Action[];
}

/** A valid heartbeat from the peer, as the FSM needs it (heartbeat.ts has already authenticated it). */
export interface PeerAdvert {
  role: Role;
  /** 0 means the peer master is resigning (RFC 5798 §6.4.3 / §6.4.2). */
  priority: number;
  /** The peer's heartbeat address as a 32-bit integer: breaks priority ties (§6.4.3: higher wins). */
  address: number;
  /** The peer's advert interval in ms (§6.4.2: a backup learns Master_Adver_Interval from the master). */
  intervalMs: number;
}

export interface FsmOptions {
  /** 1–254 (§5.2.4: 255 is reserved for the address owner, which fulcrum never is). */
  priority: number;
  /** Our own heartbeat address as a 32-bit integer, for the tie-break. */
  address: number;
  advertIntervalMs: number;
  /** Missed adverts before the master is declared dead (VRRP fixes this at 3). */
  deadAfter: number;
  /** §6.4.2: a higher-priority backup takes the VIP back from a lower-priority master. */
  preempt: boolean;
}

/** What reconfigure() can change. */
export type Reconfigurable = Omit<FsmOptions, 'address'>;

function checkPriority(priority: number): void {
  if (!Number.isInteger(priority) || priority < 1 || priority > 254) {
    throw new RangeError(`ha.priority: must be an integer 1–254, got ${priority}`);
  }
}

export interface PeerView {
  role: Role;
  priority: number;
  address: number;
  alive: boolean;
}

/** What a state machine continues from (continueFrom): the role and what it had learnt. */
export interface FsmCarry {
  role: Role;
  peer: PeerView | null;
  masterAdvertIntervalMs: number;
  vipFailures: number;
}

/**
 * Skew_Time (§6.1): (256 − Priority) × Master_Adver_Interval / 256. A higher priority waits less,
 * so when both instances start together the higher one's timer fires first.
 */
export function skewTime(priority: number, intervalMs: number): number {
  return ((256 - priority) * intervalMs) / 256;
}

/** Master_Down_Interval (§6.1), with `dead_after` in place of VRRP's fixed 3. */
export function masterDownInterval(priority: number, intervalMs: number, deadAfter: number): number {
  return deadAfter * intervalMs + skewTime(priority, intervalMs);
}

export class FailoverFsm {
  current: Role = 'init';
  /** Where the instance should be; differs from `current` only while a master waits to hand over. */
  wanted: Role = 'init';
  /** The last track verdict (min_backends_up, interface state). */
  trackPassing = true;
  trackCause = 'not checked yet';
  peer: PeerView | null = null;
  /** While in fault because the VIP could not be held: why (the command and its error); else null. */
  vipFault: string | null = null;
  /**
   * VIP faults since the VIP was last held and announced (vipOk). While above 0 the retry waits
   * longer each time, and a backup does not preempt: a node that could not hold the VIP does not
   * take it from a master that can; it takes it only when no master is left.
   */
  vipFailures = 0;
  /** §6.4.2: learnt from the master's adverts; our own interval until then. */
  masterAdvertIntervalMs: number;
  readonly address: number;
  /** The settings a reload can change (reconfigure()); the address cannot. */
  priority: number;
  advertIntervalMs: number;
  deadAfter: number;
  preempt: boolean;

  constructor(opts: FsmOptions) {
    checkPriority(opts.priority);
    this.priority = opts.priority;
    this.address = opts.address;
    this.advertIntervalMs = opts.advertIntervalMs;
    this.deadAfter = opts.deadAfter;
    this.preempt = opts.preempt;
    this.masterAdvertIntervalMs = opts.advertIntervalMs;
  }

  /** Master_Down_Interval as this instance computes it now. */
  masterDownMs(): number {
    return masterDownInterval(this.priority, this.masterAdvertIntervalMs, this.deadAfter);
  }

  // ── events: each dispatches to the handler for (current state × event) ──────────────────────

  start(): Step | null {
    return this.current === 'init' ? this.initOnStart() : null;
  }

  /**
   * Start where another process left off (`fulcrum upgrade`: its failover was abandoned, not
   * stopped): in its role, knowing its peer. Not a role change for the pair: the step goes from
   * init, and the driver does not count it as a transition.
   */
  continueFrom(c: FsmCarry): Step | null {
    return this.current === 'init' ? this.initOnCarried(c) : null;
  }

  advert(a: PeerAdvert): Step | null {
    const before = this.peer;
    this.peer = { role: a.role, priority: a.priority, address: a.address, alive: true };
    switch (this.current) {
      case 'init': return null; // not started yet: only remember the peer
      case 'backup': return this.backupOnAdvert(a);
      case 'master': return this.masterOnAdvert(a, before);
      case 'fault': return null; // a faulty instance never competes for the VIP
    }
  }

  /** The master-down timer fired (the driver only runs it in backup). */
  masterDown(): Step | null {
    return this.current === 'backup' ? this.backupOnMasterDown() : null;
  }

  /**
   * A command that holds the VIP failed (`ip addr add`, or the first gratuitous ARP after it): a
   * master that cannot hold the VIP is a fault, or the peer would never take over.
   */
  vipFailed(kind: VipFailure, cause: string): Step | null {
    return this.current === 'master' ? this.masterOnVipFail(kind, cause) : null;
  }

  /** The VIP is held and was announced: the next VIP fault retries at the base delay again. */
  vipOk(): void {
    this.vipFailures = 0;
  }

  /** The VIP retry timer fired (the driver only runs it in fault). */
  vipRetry(): Step | null {
    return this.current === 'fault' && this.vipFault !== null ? this.faultOnVipRetry() : null;
  }

  /** No valid heartbeat at all from the peer for the dead interval. */
  peerLost(): Step | null {
    if (this.peer) this.peer.alive = false;
    return null; // backup: its master-down timer decides; master: keeps the VIP; fault: stays out
  }

  trackFail(cause: string): Step | null {
    this.trackPassing = false;
    this.trackCause = cause;
    switch (this.current) {
      case 'init': return null; // start() looks at trackPassing
      case 'backup': return this.backupOnTrackFail(cause);
      case 'master': return this.wanted === 'fault' ? null : this.masterOnTrackFail(cause);
      case 'fault': return null;
    }
  }

  trackOk(cause: string): Step | null {
    this.trackPassing = true;
    this.trackCause = cause;
    switch (this.current) {
      case 'init': case 'backup': return null;
      case 'master': return this.masterOnTrackOk(cause);
      case 'fault': return this.faultOnTrackOk(cause);
    }
  }

  /**
   * A reload changed priority, advert interval, dead_after or preempt (keepalived applies these on
   * reload too). Returns null when nothing the state machine uses changed.
   */
  reconfigure(opts: Reconfigurable): Step | null {
    checkPriority(opts.priority);
    const changed: string[] = [];
    if (opts.priority !== this.priority) changed.push(`priority ${this.priority} → ${opts.priority}`);
    if (opts.advertIntervalMs !== this.advertIntervalMs) changed.push(`advert_interval ${this.advertIntervalMs}ms → ${opts.advertIntervalMs}ms`);
    if (opts.deadAfter !== this.deadAfter) changed.push(`dead_after ${this.deadAfter} → ${opts.deadAfter}`);
    if (opts.preempt !== this.preempt) changed.push(`preempt ${this.preempt} → ${opts.preempt}`);
    if (changed.length === 0) return null;
    // A master's own interval is what its backup learns; a backup keeps the one it learnt.
    if (this.current !== 'backup') this.masterAdvertIntervalMs = opts.advertIntervalMs;
    this.priority = opts.priority;
    this.advertIntervalMs = opts.advertIntervalMs;
    this.deadAfter = opts.deadAfter;
    this.preempt = opts.preempt;
    const cause = `reconfigured: ${changed.join(', ')}`;
    switch (this.current) {
      case 'init': return null;
      case 'backup': return this.backupOnReconfigure(cause);
      case 'master': return this.masterOnReconfigure(cause);
      case 'fault': return this.stay(cause, 'faultOnReconfigure', []);
    }
  }

  stop(): Step | null {
    switch (this.current) {
      case 'init': return null;
      case 'backup': return this.backupOnStop();
      case 'master': return this.masterOnStop();
      case 'fault': return this.faultOnStop();
    }
  }

  // ── init ────────────────────────────────────────────────────────────────────────────────────

  /**
   * §6.4.1: an instance that does not own the address (priority < 255: always, here) starts as
   * backup with Master_Down_Timer = Master_Down_Interval. A failing track starts it in fault.
   */
  private initOnStart(): Step {
    if (!this.trackPassing) return this.go('fault', 'fault', `track failed at start: ${this.trackCause}`, 'initOnStart', []);
    return this.go('backup', 'backup', 'started', 'initOnStart', [{ type: 'armMasterDown', ms: this.masterDownMs() }]);
  }

  /**
   * A master stays master: the VIP is verified (`ip addr add` of an address already there is no
   * error) and the listeners on it accept at once; the driver's first heartbeat goes out as it
   * starts, before these run. No gratuitous ARP: the address and its MAC did not move. A backup stays backup, with a whole
   * Master_Down_Interval before it would take over. Fault or init start as a fresh process does
   * (neither holds the VIP).
   */
  private initOnCarried(c: FsmCarry): Step {
    this.peer = c.peer === null ? null : { ...c.peer };
    this.masterAdvertIntervalMs = c.masterAdvertIntervalMs;
    this.vipFailures = c.vipFailures;
    if (c.role === 'master') {
      // A failing track (checked before this) waits for a ready peer, as masterOnTrackFail does.
      return this.go('master', this.trackPassing ? 'master' : 'fault', 'carried over (upgrade)', 'initOnCarried', [
        { type: 'addVip' },
        { type: 'startAccepting' },
      ]);
    }
    if (c.role === 'backup' && this.trackPassing) {
      return this.go('backup', 'backup', 'carried over (upgrade)', 'initOnCarried', [{ type: 'armMasterDown', ms: this.masterDownMs() }]);
    }
    return this.initOnStart();
  }

  // ── backup ──────────────────────────────────────────────────────────────────────────────────

  /** §6.4.2, on an ADVERTISEMENT. Heartbeats from a peer that is not master mean nothing here. */
  private backupOnAdvert(a: PeerAdvert): Step | null {
    if (a.role !== 'master') return null;
    if (a.priority === 0) return this.backupOnMasterResign();
    if (this.preempt && this.vipFailures === 0 && a.priority < this.priority) return this.backupOnLowerPriority(a);
    // §6.4.2: "If Preempt_Mode is False, or if the Priority in the ADVERTISEMENT is greater than or
    // equal to the local Priority": learn the master's interval and reset Master_Down_Timer.
    this.masterAdvertIntervalMs = a.intervalMs;
    return this.stay('master alive', 'backupOnAdvert', [{ type: 'armMasterDown', ms: this.masterDownMs() }]);
  }

  /** §6.4.2: priority 0 from the master (it is stopping): Master_Down_Timer = Skew_Time. */
  private backupOnMasterResign(): Step {
    return this.stay('master resigned (priority 0)', 'backupOnMasterResign', [
      { type: 'armMasterDown', ms: skewTime(this.priority, this.masterAdvertIntervalMs) },
    ]);
  }

  /**
   * §6.4.2 "Else (preempting): Discard the ADVERTISEMENT": the timer is *not* reset, so it fires
   * within Master_Down_Interval and this instance takes the VIP back; the lower master then sees
   * our higher priority and steps down (§6.4.3).
   */
  private backupOnLowerPriority(_a: PeerAdvert): Step | null {
    return null;
  }

  /** §6.4.2 "If the Master_Down_Timer fires": become master. */
  private backupOnMasterDown(): Step {
    const cause = this.peer?.alive && this.peer.role === 'master' && this.peer.priority === 0
      ? 'master resigned (priority 0)'
      : this.peer?.role === 'master' && this.peer.alive && this.peer.priority < this.priority && this.preempt
        ? `preempting a lower-priority master (${this.peer.priority} < ${this.priority})`
        : `no advert from a master for ${Math.round(this.masterDownMs())}ms`;
    return this.go('master', 'master', cause, 'backupOnMasterDown', this.takeOver());
  }

  /**
   * The master-down timer restarts with the new Master_Down_Interval. With a priority now above
   * the master's and preempt on, the master's next adverts are discarded (backupOnLowerPriority),
   * so the timer fires and this instance takes the VIP, as a backup started with that priority would.
   */
  private backupOnReconfigure(cause: string): Step {
    return this.stay(cause, 'backupOnReconfigure', [{ type: 'armMasterDown', ms: this.masterDownMs() }]);
  }

  private backupOnTrackFail(cause: string): Step {
    return this.go('fault', 'fault', `track failed: ${cause}`, 'backupOnTrackFail', [{ type: 'cancelMasterDown' }]);
  }

  private backupOnStop(): Step {
    return this.go('init', 'init', 'stopping', 'backupOnStop', [{ type: 'cancelMasterDown' }]);
  }

  // ── master ──────────────────────────────────────────────────────────────────────────────────

  /** §6.4.3, on an ADVERTISEMENT (another master exists: a split brain or a preempting peer). */
  private masterOnAdvert(a: PeerAdvert, before: PeerView | null): Step | null {
    // Waiting to hand over because our track failed, and the peer is alive and healthy (backup,
    // or already master after a partition): now it can take the VIP.
    if (this.wanted === 'fault' && (a.role === 'backup' || a.role === 'master') && a.priority > 0) return this.masterOnPeerReady();
    if (a.role !== 'master') {
      // The peer was unheard (a partition) or master too, and now it is not: it may have held the
      // VIP meanwhile and answered ARP for it, so announce the VIP again.
      if (before && (!before.alive || before.role === 'master')) return this.masterOnPeerReturn(a, before);
      return null;
    }
    if (a.priority === 0) return this.masterOnResign();
    if (a.priority > this.priority || (a.priority === this.priority && a.address > this.address)) {
      return this.masterOnHigherPriority(a);
    }
    return this.masterOnLowerPriority(a);
  }

  /**
   * The end of a split brain seen from the winner when the loser's step-down reached us first
   * (or the peer came back after being lost): whichever way the partition healed, the winner
   * announces the VIP again, since clients may have learnt the peer's MAC for it.
   */
  private masterOnPeerReturn(a: PeerAdvert, before: PeerView): Step {
    const why = before.alive ? `peer stepped down to ${a.role}: announcing the VIP again` : `peer heard again (${a.role}) after being lost: announcing the VIP again`;
    return this.stay(why, 'masterOnPeerReturn', [{ type: 'sendGarp' }]);
  }

  /** §6.4.3: "If the Priority in the ADVERTISEMENT is zero, then: Send an ADVERTISEMENT". */
  private masterOnResign(): Step {
    return this.stay('the other master resigned (priority 0)', 'masterOnResign', [
      { type: 'sendAdvert', priority: this.priority },
      { type: 'sendGarp' },
    ]);
  }

  /**
   * §6.4.3: a higher priority (or the same priority from a higher address) wins: cancel the
   * advertising, set Master_Down_Timer, go to backup, and stop answering for the VIP.
   */
  private masterOnHigherPriority(a: PeerAdvert): Step {
    this.masterAdvertIntervalMs = a.intervalMs;
    const why = a.priority > this.priority
      ? `peer master has a higher priority (${a.priority} > ${this.priority})`
      : `peer master has the same priority (${a.priority}) and a higher address`;
    return this.go('backup', 'backup', why, 'masterOnHigherPriority', [
      ...this.giveUp(),
      { type: 'armMasterDown', ms: this.masterDownMs() },
    ]);
  }

  /**
   * Two masters and we win (split brain healing, or a peer that has not seen us yet). §6.4.3
   * discards the advert; we answer at once so the peer steps down within one round trip, and
   * announce the VIP again because clients may hold the loser's MAC.
   */
  private masterOnLowerPriority(a: PeerAdvert): Step {
    const why = a.priority < this.priority
      ? `peer is also master with a lower priority (${a.priority} < ${this.priority}): reasserting`
      : `peer is also master with the same priority (${a.priority}) and a lower address: reasserting`;
    return this.stay(why, 'masterOnLowerPriority', [{ type: 'sendAdvert', priority: this.priority }, { type: 'sendGarp' }]);
  }

  /**
   * Track failed: give the VIP up only if the peer can take it (alive and not in fault); a master
   * with too few backends still serves better than no master at all.
   */
  private masterOnTrackFail(cause: string): Step {
    this.wanted = 'fault';
    if (this.peerCanTakeOver()) return this.toFaultFromMaster(`track failed: ${cause}`, 'masterOnTrackFail');
    return this.stay(`track failed (${cause}) but the peer cannot take over: keeping the VIP`, 'masterOnTrackFail', []);
  }

  private masterOnPeerReady(): Step {
    return this.toFaultFromMaster(`track failed (${this.trackCause}) and the peer is ready: handing over`, 'masterOnPeerReady');
  }

  private masterOnTrackOk(cause: string): Step | null {
    if (this.wanted !== 'fault') return null;
    this.wanted = 'master';
    return this.stay(`track ok again: ${cause}`, 'masterOnTrackOk', []);
  }

  /**
   * The peer hears the new priority and interval at once rather than at the next tick: a backup
   * that now outranks us (and preempts) starts discarding our adverts, and takes the VIP.
   */
  private masterOnReconfigure(cause: string): Step {
    return this.stay(cause, 'masterOnReconfigure', [{ type: 'sendAdvert', priority: this.priority }]);
  }

  /**
   * The VIP could not be taken (or announced): step down as a failing track does, but without
   * waiting for the peer — holding nothing, this master serves nobody — and retry after a backoff.
   * Priority 0 makes a live backup take over after its Skew_Time; removeVip releases what `ip addr
   * add` may have added for other VIPs.
   */
  private masterOnVipFail(kind: VipFailure, cause: string): Step {
    this.vipFailures++;
    const ms = vipRetryDelay(this.vipFailures);
    this.vipFault = `${kind === 'add' ? 'cannot add the VIP' : 'cannot announce the VIP'}: ${cause}`;
    const step = this.toFaultFromMaster(`${this.vipFault} (retry in ${ms}ms)`, 'masterOnVipFail');
    step.actions.push({ type: 'armVipRetry', ms });
    return step;
  }

  /** A master leaving cleanly sends priority 0 (§6.4.3 "If a Shutdown event is received") first. */
  private masterOnStop(): Step {
    return this.go('init', 'init', 'stopping', 'masterOnStop', [
      { type: 'stopAccepting' },
      { type: 'sendAdvert', priority: 0 },
      { type: 'removeVip' },
    ]);
  }

  // ── fault ───────────────────────────────────────────────────────────────────────────────────

  /**
   * Healthy again: back to backup, which takes the VIP if no master shows up in time. A VIP fault
   * is still waiting for its retry: only the retry leaves it.
   */
  private faultOnTrackOk(cause: string): Step {
    if (this.vipFault !== null) return this.stay(`track ok again (${cause}); waiting for the VIP retry`, 'faultOnTrackOk', []);
    return this.go('backup', 'backup', `track ok again: ${cause}`, 'faultOnTrackOk', [
      { type: 'armMasterDown', ms: this.masterDownMs() },
    ]);
  }

  /**
   * Time to try the VIP again: back to backup, the only way to the VIP. With no master the
   * master-down timer fires and `ip addr add` runs again; with a master alive this node stays its
   * backup (it does not preempt while vipFailures > 0). A track still failing keeps it in fault.
   */
  private faultOnVipRetry(): Step {
    const was = this.vipFault;
    this.vipFault = null;
    if (!this.trackPassing) return this.stay(`VIP retry due, but the track fails: ${this.trackCause}`, 'faultOnVipRetry', []);
    return this.go('backup', 'backup', `retrying the VIP after: ${was}`, 'faultOnVipRetry', [
      { type: 'armMasterDown', ms: this.masterDownMs() },
    ]);
  }

  private faultOnStop(): Step {
    const actions: Action[] = this.vipFault !== null ? [{ type: 'cancelVipRetry' }] : [];
    this.vipFault = null;
    return this.go('init', 'init', 'stopping', 'faultOnStop', actions);
  }

  // ── helpers ─────────────────────────────────────────────────────────────────────────────────

  private peerCanTakeOver(): boolean {
    return !!this.peer && this.peer.alive && (this.peer.role === 'backup' || this.peer.role === 'master') && this.peer.priority > 0;
  }

  /** Order matters: the address first, then the listeners, then tell the LAN and the peer. */
  private takeOver(): Action[] {
    return [
      { type: 'cancelMasterDown' },
      { type: 'addVip' },
      { type: 'startAccepting' },
      { type: 'sendAdvert', priority: this.priority },
      { type: 'sendGarp' },
    ];
  }

  private giveUp(): Action[] {
    return [{ type: 'stopAccepting' }, { type: 'removeVip' }];
  }

  /** Priority 0 first so the peer starts its (short) Skew_Time timer while we release. */
  private toFaultFromMaster(cause: string, handler: string): Step {
    return this.go('fault', 'fault', cause, handler, [
      { type: 'stopAccepting' },
      { type: 'sendAdvert', priority: 0 },
      { type: 'removeVip' },
    ]);
  }

  private go(to: Role, wanted: Role, cause: string, handler: string, actions: Action[]): Step {
    const from = this.current;
    this.current = to;
    this.wanted = wanted;
    return { from, to, cause, handler, actions };
  }

  private stay(cause: string, handler: string, actions: Action[]): Step {
    return { from: this.current, to: this.current, cause, handler, actions };
  }
}

/** The addresses the tie-break compares, as 32-bit integers: config/address.ts parses and formats them. */
export { intToIpv4, ipv4ToInt } from '../config/address.ts';
