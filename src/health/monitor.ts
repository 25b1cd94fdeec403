/**
 * The health monitor: one prober per backend of every service that has a `health` section.
 * Control plane only; it decides "up" or "down" and says so in events, and src/control/routes.ts
 * routes them (a 'transition' becomes balancer.setHealth, which writes shared memory and rebuilds
 * the ring).
 *
 * Per backend:
 * - a probe every `interval` ± 10 % (so many backends' probes do not line up), measured from the
 *   start of the previous probe, and never two probes of one backend in flight;
 * - each probe bounded by `timeout` (an AbortSignal the probe honours, plus a safety net here so
 *   a probe that ignores it still cannot stall the monitor);
 * - results pass through a rise/fall Dampener; the first result after start, after the backend
 *   was added by a reload, after its check changed (type or role: probed again at once) or after
 *   it leaves maint decides at once;
 * - role (a service that routes by role, `routedRole`): its backends start down (as the balancer
 *   starts them) until a probe reports their role; an answer with the wrong role takes the backend
 *   out at once — the role is a fact, not a flaky signal, so no `fall` wait — while errors and
 *   timeouts still go through `fall`; it comes back after `rise` answers with the right role (a
 *   role that flaps does not flap the routing). firstRound() tells start-up when every such
 *   backend has had its first answer. The role each backend last reported, and when, is kept for
 *   the status page, the API and the metrics;
 * - passive health (HAProxy's `observe layer4`): `observe_failures` consecutive connect failures
 *   reported by the data plane mark the backend down at once; probes bring it back (rise);
 * - backends in maint are not probed. The admin state (drain, maint) is the balancer's: the
 *   monitor asks the AdminStates it is given, on each config and when told a backend's admin
 *   state changed (adminStateChanged, routed from the balancer's 'backend-state' by
 *   src/control/routes.ts).
 *
 * Events:
 *   'probe'      { service, address, ok, reason, latency_ms, role? }   every probe result
 *   'transition' { service, address, up, cause, initial }              a change of health
 *                (initial: true for the deciding first result, emitted even when it agrees with
 *                what the balancer assumed, so the receiver never has to guess the start state)
 */
import { EventEmitter } from 'node:events';
import type { HealthEvents, ProbeEvent, TransitionEvent } from '../events.ts';
import { formatHostPort, HEALTH_TYPES, routedRole, type Config, type HealthConfig, type HostPort } from '../config/schema.ts';
import { silentLogger, type Logger } from '../observability/log.ts';
import { realClock, type Clock, type ClockTimer } from '../util/clock.ts';
import { Dampener, type HealthState } from './dampener.ts';
import { ProbeThread } from './probe-thread.ts';
import type { Probe, ProbeResult, Role } from './probes/probe.ts';

export type { ProbeEvent, TransitionEvent } from '../events.ts';

export interface HistoryEntry extends ProbeResult {
  /** Epoch milliseconds when the probe finished. */
  at: number;
}

/** The role a backend last reported. */
export interface RoleSeen {
  reported: Role;
  /** Epoch milliseconds of the probe that reported it. */
  at: number;
  /** The service routes to this role (always true with role: any). */
  eligible: boolean;
  /** Replicas of a check with max_lag: the lag the same probe read (ms; null: behind by an unknown amount). */
  lag_ms?: number | null;
}

export interface BackendHealth {
  service: string;
  address: string;
  state: HealthState;
  /** True until the first probe result has decided the state. */
  pending: boolean;
  maint: boolean;
  connect_failures: number;
  last?: HistoryEntry;
  /** Database checks: the role this backend last reported, once one has. */
  role?: RoleSeen;
  /** While down: why it went down (a probe's reason, or passive health's), and when (epoch ms). */
  down_cause?: { cause: string; at: number };
}

/** Who owns drain and maint (the Balancer): the monitor asks, it never keeps its own copy. */
export interface AdminStates {
  /** undefined: no such backend (yet), probed as ready. */
  adminState(service: string, address: string): 'ready' | 'drain' | 'maint' | undefined;
}

export interface HealthMonitorOptions {
  logger?: Logger;
  /** The owner of the admin state; without one every backend is probed as ready. */
  admin?: AdminStates;
  /** Probe implementations by type, run on this thread (tests may swap one); defaults to the real ones, on the probe thread. */
  probes?: Partial<Record<HealthConfig['type'], Probe>>;
  /** Results kept per backend for the status page. */
  historySize?: number;
  /** Fraction of the interval each delay may vary by, both ways. */
  jitter?: number;
  /** Schedules probes, bounds them and measures them; the real clock by default (tests drive one by hand). */
  clock?: Clock;
}

/** How long past its timeout a probe may take before the monitor gives up on it. */
const SAFETY_MARGIN_MS = 250;

interface Tracked {
  service: string;
  address: string;
  target: HostPort;
  health: HealthConfig;
  /** A backup backend: in a service that routes to replicas, the primary may be one (see isEligible). */
  backup: boolean;
  dampener: Dampener;
  pending: boolean;
  /** In maint when last asked: not probed. */
  maint: boolean;
  connectFailures: number;
  timer: ClockTimer | null;
  inFlight: AbortController | null;
  /** Bumped whenever a result must be ignored (stop, removal, maint): in-flight probes compare. */
  epoch: number;
  history: HistoryEntry[];
  /** The role the server last reported, and when (epoch ms). */
  role: { reported: Role; at: number; lag_ms?: number | null } | null;
  /** Why the last transition to down happened (epoch ms); null while up. */
  downCause: { cause: string; at: number } | null;
  /** A probe has ended (a result, or skipped for a local reason): firstRound({ every }) counts these. */
  answered: boolean;
  log: Logger;
}

const keyOf = (service: string, address: string) => `${service}\u0000${address}`;

export class HealthMonitor extends EventEmitter<HealthEvents> {
  readonly #log: Logger;
  readonly #probes: Record<HealthConfig['type'], Probe>;
  /** Where the real probes run (probe-thread.ts); types swapped in by options.probes run here. */
  readonly #thread: ProbeThread;
  readonly #onThread: Set<HealthConfig['type']>;
  readonly #historySize: number;
  readonly #jitter: number;
  readonly #clock: Clock;
  readonly #tracked = new Map<string, Tracked>();
  readonly #admin: AdminStates | undefined;
  /** firstRound() callers, resolved when no backend of a service that routes by role is pending. */
  readonly #roundWaiters: Array<() => void> = [];
  /** firstRound({ every: true }) callers, resolved when every probed backend has had a result. */
  readonly #everyWaiters: Array<() => void> = [];
  #stopped = false;
  /** Probes skipped since the last log line about them (#skip). */
  #skipped = 0;
  #skipLoggedAt = -Infinity;

  constructor(config: Config, options: HealthMonitorOptions = {}) {
    super();
    this.#log = (options.logger ?? silentLogger).child({ component: 'health' });
    this.#thread = new ProbeThread(this.#log);
    const threaded = Object.fromEntries(HEALTH_TYPES.map((type) => [type, this.#thread.probe(type)])) as Record<HealthConfig['type'], Probe>;
    this.#probes = { ...threaded, ...options.probes };
    this.#onThread = new Set(HEALTH_TYPES.filter((type) => options.probes?.[type] === undefined));
    this.#historySize = options.historySize ?? 20;
    this.#jitter = options.jitter ?? 0.1;
    this.#admin = options.admin;
    this.#clock = options.clock ?? realClock;
    this.update(config);
  }

  /**
   * Applies a config (start and reload): starts probers for new backends, stops them for removed
   * ones (or services that lost their health section), and keeps the state of kept ones.
   */
  update(config: Config): void {
    if (this.#stopped) return;
    const seen = new Set<string>();
    for (const svc of config.services) {
      if (!svc.health) continue;
      for (const b of svc.backends) {
        const address = formatHostPort(b.address);
        const key = keyOf(svc.name, address);
        seen.add(key);
        const t = this.#tracked.get(key);
        if (!t) {
          this.#add(svc.name, address, b.address, svc.health, b.backup);
          continue;
        }
        t.backup = b.backup;
        const h = svc.health;
        if (h.rise !== t.health.rise || h.fall !== t.health.fall) t.dampener = new Dampener(t.dampener.state, h.rise, h.fall);
        const typeChanged = h.type !== t.health.type || h.role !== t.health.role;
        // A new role to route to: down until a probe answers, as the balancer holds it.
        const roleChanged = routedRole(h) !== null && routedRole(h) !== routedRole(t.health);
        t.health = h;
        // A new kind of check decides afresh, at once: a probe in flight asked the old question.
        // Otherwise the old dampened state stays until the new check decides.
        if (typeChanged) {
          this.#halt(t);
          t.pending = true;
          if (roleChanged) t.dampener.force('down');
          if (!t.maint) this.#schedule(t, 0);
        }
        // The balancer has applied this config first (src/control/reload.ts): its answer holds
        // the config's `state` and what was set at run time.
        this.#followAdmin(t);
      }
    }
    for (const [key, t] of this.#tracked) {
      if (!seen.has(key)) {
        this.#halt(t);
        this.#tracked.delete(key);
        this.#thread.forget(key);
      }
    }
    this.#checkRound();
  }

  /** The backend's admin state changed: asks its owner. Maint stops probing; leaving maint probes at once, and that result decides. */
  adminStateChanged(service: string, address: string): void {
    const t = this.#tracked.get(keyOf(service, address));
    if (t) this.#followAdmin(t);
  }

  /**
   * Passive health: the data plane failed to connect to this backend. Marks it down once
   * `observe_failures` of these arrive with no successful probe between them.
   * Returns true when this report marked the backend down.
   */
  observeConnectFailure(service: string, address: string): boolean {
    const t = this.#tracked.get(keyOf(service, address));
    if (!t || t.maint || this.#stopped) return false;
    const limit = t.health.observe_failures;
    if (limit === 0) return false;
    // Already down (and decided): probes, not the data plane, bring it back; nothing to count.
    if (t.dampener.state === 'down' && !t.pending) return false;
    t.connectFailures++;
    if (t.connectFailures < limit) return false;
    const n = t.connectFailures;
    t.connectFailures = 0;
    t.pending = false;
    t.dampener.force('down');
    this.#emitTransition(t, false, `passive: ${n} consecutive connect failure${n === 1 ? '' : 's'} in the data plane`, false);
    this.#checkRound();
    return true;
  }

  /** The last results of one backend, oldest first. */
  history(service: string, address: string): HistoryEntry[] {
    return [...(this.#tracked.get(keyOf(service, address))?.history ?? [])];
  }

  /** Current health of one backend, or undefined when it is not health-checked. */
  state(service: string, address: string): BackendHealth | undefined {
    const t = this.#tracked.get(keyOf(service, address));
    return t ? this.#describeOne(t) : undefined;
  }

  describe(): BackendHealth[] {
    return [...this.#tracked.values()].map((t) => this.#describeOne(t));
  }

  /**
   * Resolves once every backend of a service that routes by role (not in maint) has had its first
   * probe result, or the monitor stopped. Each probe is bounded by its timeout, so this is too:
   * start-up awaits it before the listeners open, so the first clients find the primary rather
   * than no eligible backend. `every`: every backend probed (not in maint), whatever its
   * service routes by — what systemd's READY=1 waits for (src/ops/notify.ts).
   */
  firstRound(options: { every?: boolean } = {}): Promise<void> {
    return new Promise((resolve) => {
      (options.every ? this.#everyWaiters : this.#roundWaiters).push(resolve);
      this.#checkRound();
    });
  }

  /**
   * Starts from states another process decided (`fulcrum upgrade`, src/control/carry.ts): a
   * backend known there is not pending here, so its next result goes through rise/fall as it
   * would have there, instead of deciding at once from one probe. Called right after the
   * constructor, before any probe has answered.
   */
  seed(states: readonly { service: string; address: string; state: HealthState; pending: boolean; role?: RoleSeen }[]): number {
    let seeded = 0;
    for (const s of states) {
      const t = this.#tracked.get(keyOf(s.service, s.address));
      if (t === undefined || s.pending || !t.pending) continue;
      t.pending = false;
      t.dampener.force(s.state);
      if (s.role) t.role = { reported: s.role.reported, at: s.role.at, ...(s.role.lag_ms !== undefined ? { lag_ms: s.role.lag_ms } : {}) };
      seeded++;
    }
    this.#checkRound();
    return seeded;
  }

  /** Resolves once the probe thread runs (the probes wait for it themselves; tests that time them do too). */
  ready(): Promise<void> {
    return this.#thread.ready();
  }

  /** Stops every prober and aborts probes in flight. Idempotent. */
  stop(): void {
    this.#stopped = true;
    for (const t of this.#tracked.values()) this.#halt(t);
    this.#checkRound();
    void this.#thread.close();
  }

  // ── internals ──────────────────────────────────────────────────────────────

  #describeOne(t: Tracked): BackendHealth {
    return {
      service: t.service,
      address: t.address,
      state: t.dampener.state,
      pending: t.pending,
      maint: t.maint,
      connect_failures: t.connectFailures,
      ...(t.history.length ? { last: t.history[t.history.length - 1] } : {}),
      ...(t.role ? { role: { ...t.role, eligible: isEligible(t.role.reported, t.health, t.backup) } } : {}),
      ...(t.downCause && t.dampener.state === 'down' ? { down_cause: { ...t.downCause } } : {}),
    };
  }

  #isMaint(service: string, address: string): boolean {
    return this.#admin?.adminState(service, address) === 'maint';
  }

  #followAdmin(t: Tracked): void {
    if (this.#stopped) return;
    const maint = this.#isMaint(t.service, t.address);
    if (maint === t.maint) return;
    t.maint = maint;
    if (maint) {
      this.#halt(t);
      t.log.info('maint: probes paused');
    } else {
      t.pending = true;
      t.connectFailures = 0;
      this.#schedule(t, 0);
    }
  }

  #checkRound(): void {
    if (this.#everyWaiters.length > 0 && (this.#stopped || [...this.#tracked.values()].every((t) => t.maint || t.answered))) {
      for (const w of this.#everyWaiters.splice(0)) w();
    }
    if (this.#roundWaiters.length === 0) return;
    if (!this.#stopped) {
      for (const t of this.#tracked.values()) if (t.pending && !t.maint && routedRole(t.health) !== null) return;
    }
    for (const w of this.#roundWaiters.splice(0)) w();
  }

  #add(service: string, address: string, target: HostPort, health: HealthConfig, backup: boolean): void {
    const maint = this.#isMaint(service, address);
    const t: Tracked = {
      service, address, target, health, backup, maint,
      // As the balancer starts it: assumed up until the first probe decides, except where the
      // service routes by role (down until a probe reports the role).
      dampener: new Dampener(routedRole(health) === null ? 'up' : 'down', health.rise, health.fall),
      pending: true,
      connectFailures: 0,
      timer: null,
      inFlight: null,
      epoch: 0,
      history: [],
      role: null,
      downCause: null,
      answered: false,
      log: this.#log.child({ service, backend: address }),
    };
    this.#tracked.set(keyOf(service, address), t);
    // The first probe goes out almost at once, spread a little so a big config does not burst.
    if (!maint) this.#schedule(t, Math.random() * Math.min(50, health.interval / 10));
  }

  #halt(t: Tracked): void {
    t.epoch++;
    this.#clock.clearTimeout(t.timer);
    t.timer = null;
    t.inFlight?.abort();
    t.inFlight = null;
  }

  #schedule(t: Tracked, delay: number): void {
    this.#clock.clearTimeout(t.timer);
    // A probe in flight reschedules itself when it ends; never start a second one.
    if (t.inFlight) {
      t.timer = null;
      return;
    }
    t.timer = this.#clock.setTimeout(() => void this.#probe(t), delay);
    t.timer.unref();
  }

  #jittered(interval: number): number {
    return interval * (1 - this.#jitter + 2 * this.#jitter * Math.random());
  }

  async #probe(t: Tracked): Promise<void> {
    t.timer = null;
    if (this.#stopped || t.maint || t.inFlight) return;
    const epoch = t.epoch;
    const health = t.health;
    const onThread = this.#onThread.has(health.type);
    // The probe thread starts with the first probe (and again after it ended): its start-up is
    // not the backend's time to answer.
    if (onThread) {
      t.inFlight = new AbortController();
      await this.#thread.ready(keyOf(t.service, t.address));
      t.inFlight = null;
      if (epoch !== t.epoch || this.#stopped || t.maint) return;
    }
    const controller = new AbortController();
    t.inFlight = controller;
    const clock = this.#clock;
    const started = clock.now();
    const timer = clock.setTimeout(() => controller.abort(), health.timeout);
    let result: ProbeResult;
    let safety: ClockTimer | undefined;
    try {
      const probe = this.#probes[health.type];
      result = await Promise.race([
        probe(t.target, probeSettings(health, t.backup), controller.signal, keyOf(t.service, t.address)),
        new Promise<ProbeResult>((resolve) => {
          safety = clock.setTimeout(() => {
            const reason = `timeout after ${health.timeout}ms (probe did not stop when asked)`;
            if (onThread) this.#thread.unresponsive(`${t.service} ${t.address}: ${reason}`, keyOf(t.service, t.address));
            resolve({ ok: false, reason, latency_ms: clock.now() - started });
          }, health.timeout + SAFETY_MARGIN_MS);
        }),
      ]);
    } catch (err) {
      // Probes do not throw by contract; a bug here still must not take the monitor down.
      result = { ok: false, reason: `probe error: ${(err as Error)?.message ?? err}`, latency_ms: clock.now() - started };
    } finally {
      clock.clearTimeout(timer);
      clock.clearTimeout(safety);
      controller.abort();
    }
    if (t.inFlight === controller) t.inFlight = null;
    if (epoch !== t.epoch || this.#stopped) return;
    if (result.skipped !== undefined) this.#skip(t, result);
    else this.#record(t, result);
    const elapsed = clock.now() - started;
    this.#schedule(t, Math.max(0, this.#jittered(t.health.interval) - elapsed));
  }

  /**
   * A probe that could not be made here (ProbeResult.skipped): no history, no dampener, no
   * transition; the 'probe' event carries `skipped` (a metric counts it). Comes in bursts (every
   * probe while the open-files limit is reached): one log line a minute at most, with the count.
   */
  #skip(t: Tracked, result: ProbeResult): void {
    this.#skipped++;
    t.answered = true;
    if (this.#everyWaiters.length > 0) this.#checkRound();
    this.emit('probe', { service: t.service, address: t.address, ...result } satisfies ProbeEvent);
    const now = this.#clock.now();
    if (now - this.#skipLoggedAt < 60_000) return;
    this.#skipLoggedAt = now;
    this.#log.error({ service: t.service, backend: t.address, skipped: this.#skipped, why: result.skipped },
      `health probes skipped, not counted against backends: ${result.reason}`);
    this.#skipped = 0;
  }

  #record(t: Tracked, result: ProbeResult): void {
    const entry: HistoryEntry = { ...result, at: Date.now() };
    t.history.push(entry);
    if (t.history.length > this.#historySize) t.history.shift();
    this.emit('probe', { service: t.service, address: t.address, ...result } satisfies ProbeEvent);
    if (result.ok) t.connectFailures = 0;
    t.answered = true;
    if (this.#everyWaiters.length > 0) this.#checkRound();
    if (result.role !== undefined) t.role = { reported: result.role, at: entry.at, ...(result.lag_ms !== undefined ? { lag_ms: result.lag_ms } : {}) };
    // A replica over max_lag: lag_action, not on_marked_down, decides what its sessions get.
    const lagging = !result.ok && result.lagging === true;

    if (t.pending) {
      t.pending = false;
      t.dampener.force(result.ok ? 'up' : 'down');
      this.#emitTransition(t, result.ok, `first probe: ${result.reason}`, true, lagging);
      this.#checkRound();
      return;
    }
    if (result.role !== undefined && !isEligible(result.role, t.health, t.backup)) {
      // The wrong role is a fact, not a flaky signal: out at once (and a rise streak starts over).
      if (t.dampener.force('down') !== null) this.#emitTransition(t, false, result.reason, false);
      return;
    }
    const changed = t.dampener.onResult(result.ok);
    if (changed === null) {
      if (!result.ok) t.log.debug({ reason: result.reason, remaining: t.dampener.remaining }, 'probe failed');
      return;
    }
    const cause = changed === 'up'
      ? `${t.health.rise} consecutive probe${t.health.rise === 1 ? '' : 's'} passed: ${result.reason}`
      : `${t.health.fall} consecutive probe${t.health.fall === 1 ? '' : 's'} failed: ${result.reason}`;
    this.#emitTransition(t, changed === 'up', cause, false, lagging);
  }

  #emitTransition(t: Tracked, up: boolean, cause: string, initial: boolean, lagging = false): void {
    // Kept for the status page and the API: a down backend says why in words, not only in a log line.
    t.downCause = up ? null : { cause, at: Date.now() };
    if (up) t.log.info({ cause, initial }, 'backend healthy');
    else t.log.warn({ cause, initial }, 'backend unhealthy');
    this.emit('transition', { service: t.service, address: t.address, up, cause, initial, ...(lagging && !up ? { lagging: true as const } : {}) } satisfies TransitionEvent);
  }
}

/**
 * Whether a service with this check routes to a server of this role. A backup of a service that
 * routes to replicas may be the primary: reads fall back to it when every replica is down or lags
 * (the read service of the README's recipes). A backup of a primary service must be a primary.
 */
function isEligible(role: Role, health: HealthConfig, backup: boolean): boolean {
  const want = routedRole(health);
  return want === null || want === role || (backup && want === 'replica');
}

/** What the probe is asked: a backup of a replica service accepts either role (isEligible), still lag-checked if a replica. */
function probeSettings(health: HealthConfig, backup: boolean): HealthConfig {
  return backup && routedRole(health) === 'replica' ? { ...health, role: 'any' } : health;
}
