/**
 * The health monitor: one prober per backend of every service that has a `health` section.
 * Control plane only; it decides "up" or "down" and says so in events, and src/main.ts routes
 * them (a 'transition' becomes balancer.setHealth, which writes shared memory and rebuilds the
 * ring).
 *
 * Per backend:
 * - a probe every `interval` ± 10 % (so many backends' probes do not line up), measured from the
 *   start of the previous probe, and never two probes of one backend in flight;
 * - each probe bounded by `timeout` (an AbortSignal the probe honours, plus a safety net here so
 *   a probe that ignores it still cannot stall the monitor);
 * - results pass through a rise/fall Dampener; the first result after start, after the backend
 *   was added by a reload, or after it leaves maint decides at once (so a replica never takes
 *   a primary's traffic for fall × interval at start-up);
 * - passive health (HAProxy's `observe layer4`): `observe_failures` consecutive connect failures
 *   reported by the data plane mark the backend down at once; probes bring it back (rise);
 * - backends in maint are not probed.
 *
 * Events:
 *   'probe'      { service, address, ok, reason, latency_ms, role? }   every probe result
 *   'transition' { service, address, up, cause, initial }              a change of health
 *                (initial: true for the deciding first result, emitted even when it agrees with
 *                what the balancer assumed, so the receiver never has to guess the start state)
 */
import { EventEmitter } from 'node:events';
import { formatHostPort, HEALTH_TYPES, type Config, type HealthConfig, type HostPort } from '../config/schema.ts';
import { silentLogger, type Logger } from '../observability/log.ts';
import { Dampener, type HealthState } from './dampener.ts';
import { ProbeThread } from './probe-thread.ts';
import type { Probe, ProbeResult } from './probes/probe.ts';

export interface ProbeEvent extends ProbeResult {
  service: string;
  address: string;
}

export interface TransitionEvent {
  service: string;
  address: string;
  up: boolean;
  cause: string;
  initial: boolean;
}

export interface HistoryEntry extends ProbeResult {
  /** Epoch milliseconds when the probe finished. */
  at: number;
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
}

export interface HealthMonitorOptions {
  logger?: Logger;
  /** Probe implementations by type, run on this thread (tests may swap one); defaults to the real ones, on the probe thread. */
  probes?: Partial<Record<HealthConfig['type'], Probe>>;
  /** Results kept per backend for the status page. */
  historySize?: number;
  /** Fraction of the interval each delay may vary by, both ways. */
  jitter?: number;
}

/** How long past its timeout a probe may take before the monitor gives up on it. */
const SAFETY_MARGIN_MS = 250;

interface Tracked {
  service: string;
  address: string;
  target: HostPort;
  health: HealthConfig;
  dampener: Dampener;
  pending: boolean;
  maint: boolean;
  /** What the config last said (state: maint), as distinct from run-time admin changes. */
  configMaint: boolean;
  connectFailures: number;
  timer: NodeJS.Timeout | null;
  inFlight: AbortController | null;
  /** Bumped whenever a result must be ignored (stop, removal, maint): in-flight probes compare. */
  epoch: number;
  history: HistoryEntry[];
  log: Logger;
}

const keyOf = (service: string, address: string) => `${service}\u0000${address}`;

export class HealthMonitor extends EventEmitter {
  readonly #log: Logger;
  readonly #probes: Record<HealthConfig['type'], Probe>;
  /** Where the real probes run (probe-thread.ts); types swapped in by options.probes run here. */
  readonly #thread: ProbeThread;
  readonly #onThread: Set<HealthConfig['type']>;
  readonly #historySize: number;
  readonly #jitter: number;
  readonly #tracked = new Map<string, Tracked>();
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
        const maint = b.state === 'maint';
        const t = this.#tracked.get(key);
        if (!t) {
          this.#add(svc.name, address, b.address, svc.health, maint);
          continue;
        }
        const h = svc.health;
        if (h.rise !== t.health.rise || h.fall !== t.health.fall) t.dampener = new Dampener(t.dampener.state, h.rise, h.fall);
        const typeChanged = h.type !== t.health.type || h.role !== t.health.role;
        t.health = h;
        // A new kind of check decides afresh; the old dampened state stays until it does.
        if (typeChanged) t.pending = true;
        // As the balancer does: a reload changes the admin state only when the config's `state`
        // changed, so a maint set at run time survives reloads that do not mention it.
        if (maint !== t.configMaint) {
          t.configMaint = maint;
          this.setAdminState(svc.name, address, maint ? 'maint' : 'ready');
        }
      }
    }
    for (const [key, t] of this.#tracked) {
      if (!seen.has(key)) {
        this.#halt(t);
        this.#tracked.delete(key);
        this.#thread.forget(key);
      }
    }
  }

  /** Follows a runtime admin change: maint stops probing; leaving maint probes at once, and that result decides. */
  setAdminState(service: string, address: string, state: 'ready' | 'drain' | 'maint'): void {
    const t = this.#tracked.get(keyOf(service, address));
    if (!t || this.#stopped) return;
    const maint = state === 'maint';
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

  /** Resolves once the probe thread runs (the probes wait for it themselves; tests that time them do too). */
  ready(): Promise<void> {
    return this.#thread.ready();
  }

  /** Stops every prober and aborts probes in flight. Idempotent. */
  stop(): void {
    this.#stopped = true;
    for (const t of this.#tracked.values()) this.#halt(t);
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
    };
  }

  #add(service: string, address: string, target: HostPort, health: HealthConfig, maint: boolean): void {
    const t: Tracked = {
      service, address, target, health, maint, configMaint: maint,
      // Assumed up until the first probe decides (the balancer starts backends up).
      dampener: new Dampener('up', health.rise, health.fall),
      pending: true,
      connectFailures: 0,
      timer: null,
      inFlight: null,
      epoch: 0,
      history: [],
      log: this.#log.child({ service, backend: address }),
    };
    this.#tracked.set(keyOf(service, address), t);
    // The first probe goes out almost at once, spread a little so a big config does not burst.
    if (!maint) this.#schedule(t, Math.random() * Math.min(50, health.interval / 10));
  }

  #halt(t: Tracked): void {
    t.epoch++;
    if (t.timer) clearTimeout(t.timer);
    t.timer = null;
    t.inFlight?.abort();
    t.inFlight = null;
  }

  #schedule(t: Tracked, delay: number): void {
    if (t.timer) clearTimeout(t.timer);
    // A probe in flight reschedules itself when it ends; never start a second one.
    if (t.inFlight) {
      t.timer = null;
      return;
    }
    t.timer = setTimeout(() => void this.#probe(t), delay);
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
    const started = performance.now();
    const timer = setTimeout(() => controller.abort(), health.timeout);
    let result: ProbeResult;
    let safety: NodeJS.Timeout | undefined;
    try {
      const probe = this.#probes[health.type];
      result = await Promise.race([
        probe(t.target, health, controller.signal, keyOf(t.service, t.address)),
        new Promise<ProbeResult>((resolve) => {
          safety = setTimeout(() => {
            const reason = `timeout after ${health.timeout}ms (probe did not stop when asked)`;
            if (onThread) this.#thread.unresponsive(`${t.service} ${t.address}: ${reason}`, keyOf(t.service, t.address));
            resolve({ ok: false, reason, latency_ms: performance.now() - started });
          }, health.timeout + SAFETY_MARGIN_MS);
        }),
      ]);
    } catch (err) {
      // Probes do not throw by contract; a bug here still must not take the monitor down.
      result = { ok: false, reason: `probe error: ${(err as Error)?.message ?? err}`, latency_ms: performance.now() - started };
    } finally {
      clearTimeout(timer);
      clearTimeout(safety);
      controller.abort();
    }
    if (t.inFlight === controller) t.inFlight = null;
    if (epoch !== t.epoch || this.#stopped) return;
    if (result.skipped !== undefined) this.#skip(t, result);
    else this.#record(t, result);
    const elapsed = performance.now() - started;
    this.#schedule(t, Math.max(0, this.#jittered(t.health.interval) - elapsed));
  }

  /**
   * A probe that could not be made here (ProbeResult.skipped): no history, no dampener, no
   * transition; the 'probe' event carries `skipped` (a metric counts it). Comes in bursts (every
   * probe while the open-files limit is reached): one log line a minute at most, with the count.
   */
  #skip(t: Tracked, result: ProbeResult): void {
    this.#skipped++;
    this.emit('probe', { service: t.service, address: t.address, ...result } satisfies ProbeEvent);
    const now = performance.now();
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

    if (t.pending) {
      t.pending = false;
      t.dampener.force(result.ok ? 'up' : 'down');
      this.#emitTransition(t, result.ok, `first probe: ${result.reason}`, true);
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
    this.#emitTransition(t, changed === 'up', cause, false);
  }

  #emitTransition(t: Tracked, up: boolean, cause: string, initial: boolean): void {
    if (up) t.log.info({ cause, initial }, 'backend healthy');
    else t.log.warn({ cause, initial }, 'backend unhealthy');
    this.emit('transition', { service: t.service, address: t.address, up, cause, initial } satisfies TransitionEvent);
  }
}
