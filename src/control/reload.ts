/**
 * The reload: one sequence, in one place, that every change of the config in force goes through —
 * SIGHUP and POST /api/reload (reloadFile: the file re-read), the handle's reload(next) and the
 * admin API's runtime edits of backends (the config in force plus or minus one backend). Each
 * change is one diff (src/control/diff.ts) and these steps, in this order:
 *
 *   1. listen check   new addresses resolvable, bindable, not one address under two names; a
 *                     failure refuses the whole reload with nothing changed (src/config/listen.ts)
 *   2. VIP pause      on an instance not accepting, services the reload puts on a VIP are paused
 *   3. balancer       records and rings (a CapacityError refuses the reload, nothing changed);
 *                     the ha settings that apply in place (src/failover reconfigure); the new
 *                     config is in force from here; the workers' log settings
 *   4. health         probers started, stopped or retuned (health.update)
 *   5. service table  built from the config in force and the balancer's slots
 *   6. workers        sent the table; listeners that cannot bind are returned as problems
 *   7. resume         services taken off a VIP, or on it while this instance accepts
 *   8. resize         `workers` changed: new workers start with the table, retired ones drain
 *
 * Hooks (src/admin's server: a moved admin address binds before anything is applied) prepare
 * before step 1 and settle after step 8, told whether the config went in force. Changes are
 * serialized: a SIGHUP that arrives while an API reload runs waits its turn, so two applies never
 * interleave. Open connections are not touched, except those of a retired worker once
 * shutdown_grace is over.
 */
import { checkListens } from '../config/listen.ts';
import { preflightFiles } from './preflight.ts';
import { requireReloadCapabilities } from '../ops/capabilities.ts';
import { loadConfigOffThread, resolveWorkers } from '../config/load.ts';
import { formatHostPort, type Config } from '../config/schema.ts';
import { ConfigInvalidError, FulcrumError } from '../errors.ts';
import type { Balancer } from '../balancer/balancer.ts';
import type { Failover } from '../failover/index.ts';
import type { HealthMonitor } from '../health/monitor.ts';
import type { LogFormat, Logger } from '../observability/log.ts';
import type { ListenProblem } from '../proxy/messages.ts';
import type { WorkerPool } from '../proxy/pool.ts';
import { buildServiceTable, type BalancerView } from '../proxy/table.ts';
import { diffConfigs, type ConfigDiff, type LiveBackends, type ReloadReport, type VipReload } from './diff.ts';

export interface ReloadParts {
  /** weightOf and adminState (LiveBackends), when present, let the report name the runtime changes a reload reverts or keeps. */
  balancer: Pick<Balancer, 'apply'> & BalancerView & Partial<LiveBackends>;
  health: Pick<HealthMonitor, 'update'>;
  pool: Pick<WorkerPool, 'updateServices' | 'pauseService' | 'resumeService' | 'isPaused' | 'setLogging' | 'resize'>;
  failover: Pick<Failover, 'status' | 'reconfigure' | 'settings'> | null;
  logger: Logger;
  /** fulcrum's own logger follows `logging.level` and `logging.format`; absent when the caller handed in its logger. */
  setLogLevel?: (level: string, format: LogFormat) => void;
  /** The file reloadFile re-reads; without it only reload(next) and runtime edits apply. */
  configFile?: string;
  /**
   * Joins what is discovered at run time to every config applied (src/discovery: the listed
   * backends plus the discovered set), so a file reload keeps the discovered backends and a
   * discovered set goes in through these same steps. `prev` is the config in force.
   */
  compose?: (next: Config, prev: Config) => Config;
}

/** Where a change comes from: the file (SIGHUP, the API's reload) or an edit of the config in force. */
export type ReloadSource = 'file' | 'edit';

/**
 * Prepares a part for `next` before anything is applied (throwing refuses the change); the
 * function it resolves with runs once the sequence is over, told whether `next` went in force.
 */
export type ReloadHook = (diff: ConfigDiff, next: Config, source: ReloadSource) => Promise<(inForce: boolean) => void | Promise<void>>;

export interface ReloadRecord {
  at: string;
  trigger: string;
  ok: boolean;
  changes?: string[];
  restart_required?: string[];
  problems?: { path: string; message: string }[];
  error?: string;
}

/** Listeners that could not bind after the rest was applied: how an edit or a file reload reports them. */
export function listenProblemsError(problems: ListenProblem[]): FulcrumError {
  return new FulcrumError('FULCRUM_ERR_LISTEN', `applied, but ${problems.length} listener${problems.length === 1 ? '' : 's'} could not bind: ${problems.map((p) => `${p.service} ${p.address}: ${p.message}`).join('; ')}`);
}

export class ReloadSequence {
  readonly file: string | undefined;
  readonly #parts: ReloadParts;
  readonly #log: Logger;
  readonly #hooks = new Set<ReloadHook>();
  #config: Config;
  /** The file as last loaded (start, then each file reload), before runtime edits: what an upgrade compares against (./carry.ts). */
  #fileConfig: Config;
  #queue: Promise<unknown> = Promise.resolve();
  /** File reloads applied and refused, and the last one (for /api/status and the metrics). */
  applied = 0;
  refused = 0;
  last: ReloadRecord | undefined;

  /** `fileConfig`: the file's config when `initial` is more than it (an upgrade's carried runtime edits). */
  constructor(parts: ReloadParts, initial: Config, fileConfig: Config = initial) {
    this.#parts = parts;
    this.file = parts.configFile;
    this.#log = parts.logger.child({ component: 'reload' });
    this.#config = initial;
    this.#fileConfig = fileConfig;
  }

  /** The file as last loaded, without runtime edits. */
  get fileConfig(): Config {
    return this.#fileConfig;
  }

  /** The config in force (replaced by each change that got as far as the balancer). */
  get config(): Config {
    return this.#config;
  }

  /** Adds a hook (see ReloadHook); returns the function that removes it. */
  addHook(hook: ReloadHook): () => void {
    this.#hooks.add(hook);
    return () => this.#hooks.delete(hook);
  }

  /** Applies a validated config; resolves with the listeners that could not be bound. */
  apply(next: Config): Promise<ListenProblem[]> {
    return this.#serialized(async () => (await this.#applyNow(next, 'edit')).problems);
  }

  /**
   * A runtime edit (the admin API, discovery): as apply, but a listener that could not bind
   * rejects it. Given a function, it is called with the config in force when the edit's turn
   * comes, so an edit queued behind a file reload builds on that reload rather than undoing it.
   */
  edit(next: Config | ((inForce: Config) => Config)): Promise<void> {
    return this.#serialized(async () => {
      const { problems } = await this.#applyNow(typeof next === 'function' ? next(this.#config) : next, 'edit');
      if (problems.length > 0) throw listenProblemsError(problems);
    });
  }

  /** Re-sends the workers the table of the config in force (after balancer.addBackend / removeBackend). */
  syncServices(): Promise<ListenProblem[]> {
    return this.#serialized(() => this.#syncServices());
  }

  /**
   * Re-reads the file and applies it. Resolves with what changed; rejects with ConfigInvalidError
   * or ConfigUnreadableError (nothing applied), or with what refused it while applying.
   */
  reloadFile(trigger: string): Promise<ReloadReport> {
    const file = this.file;
    if (file === undefined) return Promise.reject(new Error('reload: fulcrum was not started from a config file'));
    return this.#serialized(() => this.#reloadFileNow(trigger, file));
  }

  /**
   * Reloads the file on SIGHUP (errors are logged, never thrown). `around` is told when a reload
   * begins and when it has ended, applied or refused (systemd's RELOADING=1 … READY=1:
   * src/ops/notify.ts). Returns the function that removes the handler.
   */
  installSignalHandler(around?: { reloading(): void; ready(): void }): () => void {
    const onHup = (): void => {
      if (this.file === undefined) {
        this.#log.warn('SIGHUP: no config file to reload');
        return;
      }
      around?.reloading();
      this.reloadFile('SIGHUP').catch(() => undefined).finally(() => around?.ready());
    };
    process.on('SIGHUP', onHup);
    return () => process.off('SIGHUP', onHup);
  }

  /** For /api/status. */
  summary(): Record<string, unknown> {
    if (this.file === undefined) return { config_file: null };
    return { config_file: this.file, reloads: { applied: this.applied, refused: this.refused, last: this.last ?? null } };
  }

  #serialized<T>(job: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(job);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #reloadFileNow(trigger: string, file: string): Promise<ReloadReport> {
    const at = new Date().toISOString();
    let report: ReloadReport | undefined;
    let loaded = false;
    try {
      const next = await loadConfigOffThread(file);
      preflightFiles(next, file);
      await requireReloadCapabilities(this.#config, next);
      loaded = true;
      const applied = await this.#applyNow(next, 'file');
      this.#fileConfig = next;
      report = applied.diff.report;
      if (applied.problems.length > 0) throw listenProblemsError(applied.problems);
    } catch (err) {
      // A refusal found while applying (two services on one address under two names, a listen
      // address in use) keeps its problems, as one found while loading does.
      this.refused++;
      const problems = err instanceof ConfigInvalidError ? err.problems : undefined;
      this.last = { at, trigger, ok: false, ...(problems ? { problems } : {}), error: (err as Error).message };
      if (!loaded) {
        this.#log.error({ trigger, file, problems, code: (err as FulcrumError).code }, `reload refused, the running config keeps serving: ${(err as Error).message}`);
      } else {
        this.#log.error({ trigger, file, err, ...(problems ? { problems } : {}) }, 'reload failed while applying');
      }
      throw err;
    }
    this.applied++;
    this.last = { at, trigger, ok: true, ...report };
    this.#log.info({ trigger, file, changes: report.changes, restart_required: report.restart_required, ...(report.kept ? { kept: report.kept } : {}) },
      `reload applied: ${report.changes.length} change${report.changes.length === 1 ? '' : 's'}${report.kept ? `, ${report.kept.length} runtime change${report.kept.length === 1 ? '' : 's'} kept` : ''}`);
    return report;
  }

  async #applyNow(next: Config, source: ReloadSource): Promise<{ diff: ConfigDiff; problems: ListenProblem[] }> {
    const { balancer, health, pool, failover } = this.#parts;
    const prev = this.#config;
    if (this.#parts.compose) next = this.#parts.compose(next, prev);
    const live = balancer.weightOf && balancer.adminState ? (balancer as LiveBackends) : undefined;
    const diff = diffConfigs(prev, next, live);
    const settle: Array<(inForce: boolean) => void | Promise<void>> = [];
    try {
      for (const hook of this.#hooks) settle.push(await hook(diff, next, source));
      // 1. A new listen address is checked before anything is applied: one in use refuses the
      // whole reload and the old listener keeps serving (a VIP's address may not be on this
      // host: not bound). With no new address nothing is awaited here, so runtime changes apply
      // in the order they were asked for.
      if (diff.newListens.length > 0) {
        await checkListens(prev, next, { file: this.file, skipBind: (name) => pool.isPaused(name) || diff.vip.bound.has(name) });
      }
      // 2.
      await pauseMovedOnto(diff.vip, failover, pool);
      // 3. ha: what can change in place is applied; the pair's identity (HA_RESTART_ONLY), and
      // adding or removing the section, wait for a restart (the report says so), so the config
      // in force keeps the running values.
      balancer.apply(next);
      // 4. health follows the balancer with nothing awaited between them: a probe still asking a
      // service's old role must not decide for the new one in the gap.
      health.update(next);
      if (failover && next.ha) failover.reconfigure(next.ha);
      this.#config = { ...next, ha: failover ? failover.settings : undefined, bgp: prev.bgp };
      if (diff.logging) {
        this.#parts.setLogLevel?.(next.logging.level, next.logging.format);
        await pool.setLogging({ level: next.logging.level, connections: next.logging.connections });
      }
      // 5, 6.
      const problems = await this.#syncServices();
      // 7. The role is read now: a role change while the reload ran acted on the services before it.
      for (const name of await followRoleAfterReload(diff.vip, failover, pool)) {
        const listen = formatHostPort(this.#config.services.find((s) => s.name === name)!.listen);
        await pool.resumeService(name).catch((err: Error) => problems.push({ service: name, address: listen, message: err.message }));
      }
      // 8.
      if (diff.workers) problems.push(...await pool.resize(resolveWorkers(next), next.shutdown_grace));
      return { diff, problems };
    } finally {
      const inForce = this.#config !== prev;
      for (const done of settle) await done(inForce);
    }
  }

  async #syncServices(): Promise<ListenProblem[]> {
    const problems = await this.#parts.pool.updateServices(buildServiceTable(this.#config, this.#parts.balancer));
    for (const p of problems) this.#log.error(p, `reload: service ${p.service} cannot listen on ${p.address}: ${p.message}`);
    return problems;
  }
}

/**
 * Step 2: on an instance not accepting (backup, fault) a service the reload puts on a VIP is
 * paused before the workers get the table, as at start-up (its address is not on this host).
 */
export async function pauseMovedOnto(plan: VipReload, failover: Pick<Failover, 'status'> | null, pool: Pick<WorkerPool, 'pauseService'>): Promise<void> {
  if (!failover || failover.status().accepting) return;
  for (const name of plan.onto) await pool.pauseService(name);
}

/**
 * Step 7: the services to resume — those taken off a VIP (they listen where the reload says),
 * and those on it while accepting; those on it while not accepting are paused. The role is read
 * now: a role change while the reload ran acted on the services before it.
 */
export async function followRoleAfterReload(plan: VipReload, failover: Pick<Failover, 'status'> | null, pool: Pick<WorkerPool, 'pauseService' | 'isPaused'>): Promise<string[]> {
  const resume = plan.off.filter((name) => pool.isPaused(name));
  if (!failover) return resume;
  const accepting = failover.status().accepting;
  for (const name of plan.bound) {
    if (accepting && pool.isPaused(name)) resume.push(name);
    else if (!accepting && !pool.isPaused(name)) await pool.pauseService(name);
  }
  return resume;
}
