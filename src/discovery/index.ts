/**
 * Discovery: backends that come from where the cluster says they are (`services[].discover`).
 * Control plane only. One watch per service with a discover section asks its source every
 * `interval`, keeps the last good set, and emits 'backends' when that set changes; it never
 * applies anything itself. src/control/routes.ts routes 'backends' to the reload sequence's
 * edit, and the sequence calls compose() on every config it applies (a file reload, an API edit,
 * a discovery edit): the service's listed backends plus its discovered set. So a discovered set
 * goes in as a diff through the one reload path — added backends probed as any added backend,
 * vanished ones drained by the balancer (their live sessions run on until they end, or
 * on_marked_down closes them) — and a file reload keeps what was discovered.
 *
 * The last good set is kept:
 * - through failures (no answer, a malformed one): for `hold` after the last good answer, logged
 *   once when the trouble starts and once when it ends, and counted (`errors`);
 * - through empty answers (NXDOMAIN, no records): "remove everything" only once the emptiness
 *   has lasted past `hold` — a zone being reloaded must not drain a whole service;
 * - past `hold`, the set is emptied (as HAProxy's `hold valid` runs out) and the service falls to
 *   its listed backends.
 * A set larger than the layout's per-service maximum (MAX_MEMBERS, with the listed backends) is
 * cut to it in address order, and the status says so.
 *
 * Events: 'backends' { service, source, backends, cause } — the set changed (src/events.ts).
 */
import { EventEmitter } from 'node:events';
import { formatHostPort, type BackendConfig, type Config, type ServiceConfig } from '../config/schema.ts';
import type { DiscoveryEvents } from '../events.ts';
import { silentLogger, type Logger } from '../observability/log.ts';
import { MAX_MEMBERS } from '../shm/layout.ts';
import { realClock, type Clock, type ClockTimer } from '../util/clock.ts';
import { dnsSource } from './dns.ts';
import { DiscoveryError } from './errors.ts';
import { patroniSource } from './patroni.ts';
import { sentinelSource } from './sentinel.ts';
import type { Source, SourceAnswer, SourceKind } from './source.ts';

export { DiscoveryError } from './errors.ts';
export type { Source, SourceAnswer } from './source.ts';

/** The Source of a service's discover section (config/load.ts makes sure it names exactly one). */
export function sourceFor(service: ServiceConfig): Source {
  const d = service.discover!;
  if (d.dns) return dnsSource(d.dns);
  if (d.redis_sentinel) return sentinelSource(d.redis_sentinel);
  return patroniSource(d.patroni!);
}

/** Where a service's backends come from, and what the source last said (/api/status, `fulcrum status`, the status page). */
export interface SourceStatus {
  service: string;
  source: SourceKind;
  /** What is asked, and whom: "SRV _pg._tcp.db.internal via 127.0.0.1:5353". */
  query: string;
  /** Epoch ms of the source's last answer (records or empty), null before the first. */
  last_answer_at: number | null;
  /** "3 backends", "empty: the name does not exist (NXDOMAIN) (ENOTFOUND)". */
  last_answer: string | null;
  /** Epoch ms and words of the last failure; null once it answers again. */
  last_error_at: number | null;
  last_error: string | null;
  /** Failures since start (answers that were not records, nor empty). */
  errors: number;
  /** Backends in the set now (before the layout's cap). */
  backends: number;
  /** Epoch ms since which the last good set is kept through failures or empty answers, null while answering. */
  holding_since: number | null;
  /** What an answer left out (targets that do not resolve, the cap). */
  notes: string[];
}

export interface DiscoveryOptions {
  logger?: Logger;
  clock?: Clock;
  /** Builds a service's source (tests may swap one); sourceFor by default. */
  source?: (service: ServiceConfig) => Source;
}

interface Watch {
  service: string;
  /** The settings it runs with, as JSON: a reload that changes them starts the watch afresh. */
  key: string;
  source: Source;
  /** Stops a source's announcements (Sentinel's pub/sub), when it has them. */
  unlisten: (() => void) | null;
  /** Announced answers applied: a query that started before one is older than it, and dropped. */
  pushed: number;
  timer: ClockTimer | null;
  inFlight: AbortController | null;
  /** The set in force: undefined before the first good answer (nothing discovered yet). */
  set: BackendConfig[] | undefined;
  /** Clock time of the last answer with records. */
  lastGood: number;
  /** Clock time the current run of failures / empty answers began. */
  troubleSince: number | null;
  status: SourceStatus;
  log: Logger;
}

const keyOf = (b: BackendConfig): string => formatHostPort(b.address);

/** Two sets alike (address, weight, backup): no edit needed. */
function sameSet(a: readonly BackendConfig[] | undefined, b: readonly BackendConfig[]): boolean {
  if (a === undefined || a.length !== b.length) return false;
  return a.every((x, i) => keyOf(x) === keyOf(b[i]) && x.weight === b[i].weight && x.backup === b[i].backup);
}

export class Discovery extends EventEmitter<DiscoveryEvents> {
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #makeSource: (service: ServiceConfig) => Source;
  readonly #watches = new Map<string, Watch>();
  /** Per service, the addresses compose() put in from the discovered set (the rest were listed). */
  readonly #applied = new Map<string, Set<string>>();
  #stopped = false;

  constructor(config: Config, options: DiscoveryOptions = {}) {
    super();
    this.#log = (options.logger ?? silentLogger).child({ component: 'discovery' });
    this.#clock = options.clock ?? realClock;
    this.#makeSource = options.source ?? sourceFor;
    this.update(config);
  }

  /** Follows a config (start and each reload in force): starts, restarts or stops watches. */
  update(config: Config): void {
    if (this.#stopped) return;
    const seen = new Set<string>();
    for (const s of config.services) {
      if (!s.discover) continue;
      seen.add(s.name);
      const key = JSON.stringify(s.discover);
      const w = this.#watches.get(s.name);
      if (w?.key === key) continue;
      if (w) this.#halt(w);
      this.#start(s, key, w?.set);
    }
    for (const [name, w] of this.#watches) {
      if (seen.has(name)) continue;
      this.#halt(w);
      this.#watches.delete(name);
      this.#applied.delete(name);
    }
  }

  /**
   * The config to apply: each service with a discover section gets its listed backends plus its
   * discovered set (the listed ones win where both name an address). `prev` is the config in
   * force: an address compose() added before is known as discovered while either config holds it.
   * Called by the reload sequence (src/control/reload.ts) on every config it applies.
   */
  compose(next: Config, prev: Config): Config {
    if (!next.services.some((s) => s.discover)) return next;
    return {
      ...next,
      services: next.services.map((s) => {
        if (!s.discover) return s;
        const before = this.#applied.get(s.name) ?? new Set<string>();
        const held = new Set([...(prev.services.find((p) => p.name === s.name)?.backends ?? []), ...s.backends].map(keyOf));
        const applied = new Set([...before].filter((k) => held.has(k)));
        const listed = s.backends.filter((b) => !applied.has(keyOf(b)));
        const listedKeys = new Set(listed.map(keyOf));
        const w = this.#watches.get(s.name);
        let found = (w?.set ?? []).filter((b) => !listedKeys.has(keyOf(b)));
        const room = MAX_MEMBERS - listed.length;
        if (found.length > room) {
          const note = `${found.length} discovered backends, ${room} taken: a service holds at most ${MAX_MEMBERS} backends (with its ${listed.length} listed)`;
          if (w && !w.status.notes.includes(note)) {
            w.status.notes = [...w.status.notes, note];
            w.log.warn({ discovered: found.length, taken: room }, note);
          }
          found = found.slice(0, Math.max(0, room));
        }
        for (const b of found) applied.add(keyOf(b));
        this.#applied.set(s.name, applied);
        return { ...s, backends: [...listed, ...found] };
      }),
    };
  }

  describe(): SourceStatus[] {
    return [...this.#watches.values()].map((w) => ({ ...w.status, notes: [...w.status.notes] }));
  }

  /** Stops every watch and cancels queries in flight. Idempotent. */
  stop(): void {
    this.#stopped = true;
    for (const w of this.#watches.values()) this.#halt(w);
  }

  #start(s: ServiceConfig, key: string, set: BackendConfig[] | undefined): void {
    const source = this.#makeSource(s);
    const w: Watch = {
      service: s.name, key, source, unlisten: null, pushed: 0,
      timer: null, inFlight: null,
      // A reload that changes the source keeps the set until the new source answers.
      set, lastGood: this.#clock.now(), troubleSince: null,
      status: {
        service: s.name, source: source.kind, query: source.query,
        last_answer_at: null, last_answer: null, last_error_at: null, last_error: null, errors: 0,
        backends: set?.length ?? 0, holding_since: null, notes: [],
      },
      log: this.#log.child({ service: s.name, source: source.kind }),
    };
    this.#watches.set(s.name, w);
    this.#schedule(w, 0);
    // An announcement applies at once (an answer), or asks at once (null).
    w.unlisten = source.listen?.((answer) => {
      if (this.#stopped || this.#watches.get(w.service) !== w) return;
      if (answer !== null) {
        w.pushed++;
        this.#answered(w, answer);
      } else if (w.inFlight === null) this.#schedule(w, 0);
    }) ?? null;
  }

  #halt(w: Watch): void {
    w.unlisten?.();
    w.unlisten = null;
    this.#clock.clearTimeout(w.timer);
    w.timer = null;
    w.inFlight?.abort();
    w.inFlight = null;
  }

  #schedule(w: Watch, delay: number): void {
    this.#clock.clearTimeout(w.timer);
    w.timer = this.#clock.setTimeout(() => void this.#poll(w), delay);
    w.timer.unref();
  }

  async #poll(w: Watch): Promise<void> {
    w.timer = null;
    if (this.#stopped || this.#watches.get(w.service) !== w) return;
    const controller = new AbortController();
    w.inFlight = controller;
    const started = this.#clock.now();
    const pushed = w.pushed;
    let answer: SourceAnswer | undefined;
    let failure: unknown;
    try {
      answer = await w.source.ask(controller.signal);
    } catch (err) {
      failure = err;
    }
    if (controller.signal.aborted || this.#watches.get(w.service) !== w) return;
    w.inFlight = null;
    if (w.pushed !== pushed) {
      // An announcement arrived while asking: it is newer than this answer; ask again soon to confirm it.
    } else if (answer && answer.backends.length > 0) this.#answered(w, answer);
    else this.#troubled(w, answer ? new DiscoveryError(`${w.status.query}: no backends in the answer`, { empty: true }) : failure);
    this.#schedule(w, Math.max(0, w.source.interval - (this.#clock.now() - started)));
  }

  #answered(w: Watch, answer: SourceAnswer): void {
    const now = this.#clock.now();
    w.status.last_answer_at = Date.now();
    w.status.last_answer = `${answer.backends.length} backend${answer.backends.length === 1 ? '' : 's'}`;
    w.status.notes = answer.notes;
    if (w.troubleSince !== null) {
      w.log.info({ after_ms: Math.round(now - w.troubleSince), backends: answer.backends.length }, 'discovery answers again');
      w.troubleSince = null;
      w.status.holding_since = null;
      w.status.last_error = null;
      w.status.last_error_at = null;
    }
    w.lastGood = now;
    if (sameSet(w.set, answer.backends)) return;
    const before = w.set?.length ?? 0;
    w.set = answer.backends;
    w.status.backends = answer.backends.length;
    this.#emitChange(w, `${w.status.query}: ${answer.backends.length} backends (were ${before})`);
  }

  #troubled(w: Watch, err: unknown): void {
    const now = this.#clock.now();
    const message = (err as Error)?.message ?? String(err);
    const empty = err instanceof DiscoveryError && err.empty;
    if (empty) {
      w.status.last_answer_at = Date.now();
      w.status.last_answer = `empty: ${message}`;
    } else {
      w.status.errors++;
      w.status.last_error_at = Date.now();
      w.status.last_error = message;
    }
    if (w.troubleSince === null) {
      w.troubleSince = now;
      w.status.holding_since = Date.now();
      const kept = w.set?.length ?? 0;
      // Logged once per run of trouble: a resolver down for an hour is one line, not 720.
      w.log.warn({ err: message, kept, hold_ms: w.source.hold }, empty
        ? `discovery: an empty answer; keeping the last ${kept} backends for up to hold`
        : `discovery failed; keeping the last ${kept} backends for up to hold`);
    }
    if (w.set !== undefined && w.set.length > 0 && now - w.lastGood >= w.source.hold) {
      const n = w.set.length;
      w.set = [];
      w.status.backends = 0;
      w.log.error({ err: message, removed: n, hold_ms: w.source.hold }, `discovery: no good answer for longer than hold; removing the ${n} discovered backends`);
      this.#emitChange(w, `${w.status.query}: no good answer for ${Math.round(now - w.lastGood)}ms (hold ${w.source.hold}ms): ${message}`);
    }
  }

  #emitChange(w: Watch, cause: string): void {
    this.emit('backends', { service: w.service, source: w.source.kind, backends: w.set?.length ?? 0, cause });
  }
}
