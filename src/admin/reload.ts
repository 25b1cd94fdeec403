/**
 * Live reload: SIGHUP or POST /api/reload re-reads the config file. An invalid file is refused
 * with every problem (the API returns them, SIGHUP logs them) and the running config keeps
 * serving untouched. A valid one is handed to the `apply` hook of src/main.ts, which applies it as
 * a difference (balancer.apply, the workers' service table, health.update; src/admin/index.ts
 * moves the admin server when its section changed, the pool starts or retires workers when
 * `workers` changed); open connections are not touched by a reload, except those of a retired
 * worker once shutdown_grace is over. An added or removed `ha` section and the pair's identity
 * (HA_RESTART_ONLY) are reported under restart_required; the other ha settings apply
 * (src/failover reconfigure).
 *
 * Reloads are serialized: a SIGHUP that arrives while an API reload runs waits its turn, so two
 * applies never interleave.
 */
import { loadConfigOffThread } from '../config/load.ts';
import { formatHostPort, HA_RESTART_ONLY, type Config, type HaConfig, type ServiceConfig } from '../config/schema.ts';
import { ConfigInvalidError, ConfigUnreadableError } from '../errors.ts';
import type { Logger } from '../observability/log.ts';
import type { ReloadResult } from './server.ts';

export interface ReloaderOptions {
  file: string;
  /** The config in force now. */
  current: () => Config;
  /** Applies a validated config as a difference (src/main.ts's reload hook). */
  apply: (next: Config) => void | Promise<void>;
  logger: Logger;
}

export interface ReloadRecord {
  at: string;
  trigger: string;
  ok: boolean;
  changes?: string[];
  restart_required?: string[];
  problems?: { path: string; message: string }[];
  error?: string;
}

export class Reloader {
  readonly file: string;
  readonly #options: ReloaderOptions;
  readonly #log: Logger;
  #queue: Promise<unknown> = Promise.resolve();
  applied = 0;
  refused = 0;
  last: ReloadRecord | undefined;

  constructor(options: ReloaderOptions) {
    this.file = options.file;
    this.#options = options;
    this.#log = options.logger.child({ component: 'reload' });
  }

  /**
   * Re-reads and applies the file. Resolves with what changed; rejects with ConfigInvalidError or
   * ConfigUnreadableError (nothing applied) or with the apply hook's error.
   */
  reload(trigger: string): Promise<ReloadResult> {
    const run = this.#queue.then(() => this.#reloadNow(trigger));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #reloadNow(trigger: string): Promise<ReloadResult> {
    const at = new Date().toISOString();
    let next: Config;
    try {
      next = await loadConfigOffThread(this.file);
    } catch (err) {
      this.refused++;
      const problems = err instanceof ConfigInvalidError ? err.problems : undefined;
      this.last = { at, trigger, ok: false, ...(problems ? { problems } : {}), error: (err as Error).message };
      if (err instanceof ConfigInvalidError || err instanceof ConfigUnreadableError) {
        this.#log.error({ trigger, file: this.file, problems, code: err.code }, `reload refused, the running config keeps serving: ${err.message}`);
      } else {
        this.#log.error({ trigger, file: this.file, err }, 'reload refused, the running config keeps serving');
      }
      throw err;
    }
    const diff = diffConfigs(this.#options.current(), next);
    try {
      await this.#options.apply(next);
    } catch (err) {
      // A refusal found while applying (two services on one address under two names, a listen
      // address in use) keeps its problems, as one found while loading does.
      this.refused++;
      const problems = err instanceof ConfigInvalidError ? err.problems : undefined;
      this.last = { at, trigger, ok: false, ...(problems ? { problems } : {}), error: (err as Error).message };
      this.#log.error({ trigger, err, ...(problems ? { problems } : {}) }, 'reload failed while applying');
      throw err;
    }
    this.applied++;
    this.last = { at, trigger, ok: true, ...diff };
    this.#log.info({ trigger, file: this.file, changes: diff.changes, restart_required: diff.restart_required }, `reload applied: ${diff.changes.length} change${diff.changes.length === 1 ? '' : 's'}`);
    return diff;
  }

  /** Reloads on SIGHUP (errors are logged, never thrown). Returns the function that removes the handler. */
  installSignalHandler(): () => void {
    const onHup = (): void => {
      this.reload('SIGHUP').catch(() => undefined);
    };
    process.on('SIGHUP', onHup);
    return () => process.off('SIGHUP', onHup);
  }

  /** For /api/status. */
  summary(): Record<string, unknown> {
    return { config_file: this.file, reloads: { applied: this.applied, refused: this.refused, last: this.last ?? null } };
  }
}

const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);

/** What a reload from `prev` to `next` changes, in words an operator reads in the log. */
export function diffConfigs(prev: Config, next: Config): ReloadResult {
  const changes: string[] = [];
  const restart: string[] = [];
  const prevServices = new Map(prev.services.map((s) => [s.name, s]));
  const nextServices = new Map(next.services.map((s) => [s.name, s]));
  for (const [name, s] of nextServices) {
    const p = prevServices.get(name);
    if (!p) {
      changes.push(`service ${name} added (listen ${formatHostPort(s.listen)}, ${s.backends.length} backends)`);
      continue;
    }
    diffService(p, s, changes);
  }
  for (const name of prevServices.keys()) if (!nextServices.has(name)) changes.push(`service ${name} removed`);

  if (prev.workers !== next.workers) changes.push(`workers: ${prev.workers} → ${next.workers}`);
  if (!same(prev.admin, next.admin)) {
    if (!prev.admin) changes.push(`admin added (listen ${formatHostPort(next.admin!.listen)})`);
    else if (!next.admin) changes.push('admin removed');
    else if (!same(prev.admin.listen, next.admin.listen)) changes.push(`admin.listen ${formatHostPort(prev.admin.listen)} → ${formatHostPort(next.admin.listen)}`);
    else changes.push('admin settings');
  }
  if (prev.ha && next.ha) {
    for (const key of Object.keys(next.ha) as (keyof HaConfig)[]) {
      if (same(prev.ha[key], next.ha[key])) continue;
      if ((HA_RESTART_ONLY as readonly string[]).includes(key)) restart.push(`ha.${key}`);
      else changes.push(`ha.${key}: ${JSON.stringify(prev.ha[key])} → ${JSON.stringify(next.ha[key])}`);
    }
  } else if (prev.ha || next.ha) {
    restart.push(prev.ha ? 'ha (removed)' : 'ha (added)');
  }
  if (!same(prev.logging, next.logging)) changes.push(`logging: ${JSON.stringify(prev.logging)} → ${JSON.stringify(next.logging)}`);
  if (prev.shutdown_grace !== next.shutdown_grace) changes.push(`shutdown_grace: ${prev.shutdown_grace}ms → ${next.shutdown_grace}ms`);
  return { changes, restart_required: restart };
}

function diffService(p: ServiceConfig, s: ServiceConfig, changes: string[]): void {
  const at = `service ${s.name}`;
  for (const key of ['listen', 'balance', 'hash_key', 'table_size', 'max_connections', 'queue', 'retries', 'timeouts', 'health', 'on_marked_down', 'slow_start'] as const) {
    if (!same(p[key], s[key])) {
      const show = (v: unknown): string => (key === 'listen' ? formatHostPort(v as ServiceConfig['listen']) : JSON.stringify(v));
      changes.push(`${at}: ${key} ${show(p[key])} → ${show(s[key])}`);
    }
  }
  const prevB = new Map(p.backends.map((b) => [formatHostPort(b.address), b]));
  const nextB = new Map(s.backends.map((b) => [formatHostPort(b.address), b]));
  for (const [addr, b] of nextB) {
    const old = prevB.get(addr);
    if (!old) {
      changes.push(`${at}: backend ${addr} added`);
      continue;
    }
    for (const key of ['weight', 'max_connections', 'backup', 'state'] as const) {
      if (old[key] !== b[key]) changes.push(`${at}: backend ${addr} ${key} ${String(old[key])} → ${String(b[key])}`);
    }
  }
  for (const addr of prevB.keys()) if (!nextB.has(addr)) changes.push(`${at}: backend ${addr} removed`);
}
