/**
 * The operations side of a running fulcrum, wired in one call from src/main.ts:
 * - Stats (per-worker counters summed from shared memory) and the Prometheus registry;
 * - health 'probe' events → probe metrics; the probe history → the status page;
 * - the Balancer's 'backend-state' events → one log line per transition (from, to, cause)
 *   (failover role changes are logged by src/failover itself, with from, to and cause);
 * - the Reloader (SIGHUP and POST /api/reload) over main's apply hook;
 * - the admin server, when the config has an `admin` section.
 *
 * Runtime adds and removals of backends go through the same apply hook as a reload, with the
 * config in force plus or minus that backend: the balancer, the workers' service table and the
 * health monitor then always agree, and there is one code path to trust. Like HAProxy's runtime
 * API, such changes last until the next reload replaces them with what the file says.
 */
import type { Config } from '../config/schema.ts';
import { FulcrumError } from '../errors.ts';
import { formatHostPort, type AdminConfig, type BackendConfig, type HostPort } from '../config/schema.ts';
import type { Logger } from '../observability/log.ts';
import { Metrics, type ProbeObservation, type RoleObservation } from '../observability/prom.ts';
import { Stats } from '../observability/stats.ts';
import { Reloader } from './reload.ts';
import { AdminServer, type AdminBalancer, type AdminState, type DescribedService, type ProbeRecord } from './server.ts';

export { AdminServer } from './server.ts';
export { Reloader } from './reload.ts';

/** How long the admin server a reload moved away from lets its requests in flight finish. */
export const ADMIN_MOVE_GRACE_MS = 5_000;

const sameListen = (a: HostPort | undefined, b: HostPort | undefined): boolean => a?.host === b?.host && a?.port === b?.port;

/** A backend transition as the Balancer emits it ('backend-state'). */
export interface BackendStateEvent {
  service: string;
  address: string;
  backend?: number;
  from: string;
  to: string;
  cause: string;
}

interface Emitter {
  on(event: string, listener: (...args: any[]) => void): unknown;
  off(event: string, listener: (...args: any[]) => void): unknown;
}

export interface OperationsBalancer extends Emitter {
  describe(): readonly DescribedService[];
  setAdminState(service: string, address: string, state: AdminState, cause: string): unknown;
  setWeight(service: string, address: string, weight: number): unknown;
  addBackend(service: string, backend: BackendConfig): unknown;
  removeBackend(service: string, address: string, options: { force: boolean }): unknown;
}

export interface OperationsHealth extends Emitter {
  history(service: string, address: string): readonly ProbeRecord[];
  /** Every probed backend; `role` once a database check reported one (src/health/monitor.ts). */
  describe?(): readonly { service: string; address: string; role?: Omit<RoleObservation, 'service' | 'address'> }[];
}

export interface OperationsFailover {
  /** FailoverStatus (src/failover/index.ts): role, peer, failovers, transitions…, shown as it is. */
  status(): { role: string; transitions: number };
}

export interface OperationsOptions {
  memory: WebAssembly.Memory;
  balancer: OperationsBalancer;
  logger: Logger;
  /** The config in force now (main keeps it; `apply` replaces it). */
  config: () => Config;
  /** The file reloads read; without it there is no reload. */
  configFile?: string;
  /**
   * main's reload hook: applies a validated config as a difference (balancer.apply, the workers'
   * service table, health.update) and makes it the config in force.
   */
  apply?: (next: Config) => void | Promise<void>;
  /** Closes the open sessions of a backend (a forced removal); resolves with how many. */
  killSessions?: (service: string, address: string) => number | Promise<number>;
  health?: OperationsHealth;
  failover?: OperationsFailover;
  /** Reload on SIGHUP (default true when configFile is given). */
  signals?: boolean;
  /** More fields for /api/status. */
  status?: () => Record<string, unknown>;
}

export interface Operations {
  stats: Stats;
  metrics: Metrics;
  reloader: Reloader | undefined;
  /** The admin server in force (a reload can move, add or remove it). */
  readonly admin: AdminServer | undefined;
  /** Re-reads the config file (what SIGHUP does); rejects with the problems when it is invalid. */
  reload(trigger?: string): Promise<unknown>;
  close(): Promise<void>;
}

export async function startOperations(options: OperationsOptions): Promise<Operations> {
  const log = options.logger.child({ component: 'operations' });
  const { balancer, health, failover } = options;
  const stats = new Stats(options.memory);
  const directory = (): readonly DescribedService[] => balancer.describe();
  // The role each backend last reported: one reading for the metrics, the API and the status page.
  const roles = (): RoleObservation[] =>
    health?.describe?.().flatMap((h) => (h.role ? [{ service: h.service, address: h.address, ...h.role }] : [])) ?? [];

  let reloader: Reloader | undefined;
  const apply = options.apply;
  if (options.configFile && apply) {
    reloader = new Reloader({
      file: options.configFile,
      current: options.config,
      logger: options.logger,
      apply: (next) => applyWithAdmin(next, apply),
    });
  }

  const metrics = new Metrics({
    stats,
    directory,
    failover: failover ? () => failover.status() : undefined,
    reloads: () => ({ applied: reloader?.applied ?? 0, refused: reloader?.refused ?? 0 }),
    roles,
  });

  // ── events ──
  const onProbe = (p: ProbeObservation): void => metrics.observeProbe(p);
  health?.on('probe', onProbe);
  // A backend created in a slot gets counters that start at 0 (the slot may have served another).
  // Transition log lines are the Balancer's own ('backend state': service, backend, from, to, cause).
  const onBackendState = (e: BackendStateEvent): void => {
    if (e.from === 'free' && e.backend !== undefined) stats.rebaseBackend(e.backend, e.service, e.address);
  };
  balancer.on('backend-state', onBackendState);

  // ── runtime membership changes through the apply hook (see the header comment) ──
  const withBackends = (service: string, edit: (backends: BackendConfig[]) => BackendConfig[]): Config => {
    const current = options.config();
    return {
      ...current,
      services: current.services.map((s) => (s.name === service ? { ...s, backends: edit([...s.backends]) } : s)),
    };
  };
  const adminBalancer: AdminBalancer = {
    describe: directory,
    // The health monitor follows maint through the Balancer's 'backend-state' events (src/health/wire.ts).
    setAdminState: (service, address, state, cause) => balancer.setAdminState(service, address, state, cause),
    setWeight: (service, address, weight) => balancer.setWeight(service, address, weight),
    addBackend: async (service, backend) => {
      if (!apply) return balancer.addBackend(service, backend);
      await apply(withBackends(service, (bs) => [...bs, backend]));
    },
    removeBackend: async (service, address, { force }) => {
      if (force && options.killSessions) await options.killSessions(service, address);
      if (apply) await apply(withBackends(service, (bs) => bs.filter((b) => formatHostPort(b.address) !== address)));
      // The Balancer's promise resolves when the drain ends: not something an HTTP request waits for.
      else void Promise.resolve(balancer.removeBackend(service, address, { force })).catch((err) => log.warn({ err, service, backend: address }, 'removal failed'));
      metrics.forgetBackend(service, address);
    },
  };

  let admin: AdminServer | undefined;
  const adminServer = (adminConfig: AdminConfig): AdminServer =>
    new AdminServer({
      admin: adminConfig,
      balancer: adminBalancer,
      stats,
      metrics,
      logger: options.logger,
      config: options.config,
      reload: reloader ? () => reloader.reload('admin API') : undefined,
      healthHistory: health ? (s, a) => health.history(s, a) : undefined,
      roles: health?.describe ? roles : undefined,
      status: () => ({
        ...(reloader ? reloader.summary() : { config_file: options.configFile ?? null }),
        ...(failover ? { failover: failover.status() } : {}),
        ...options.status?.(),
      }),
    });
  const initialAdmin = options.config().admin;
  if (initialAdmin) {
    admin = adminServer(initialAdmin);
    await admin.listen();
  }

  /**
   * A reload with the admin section: what it needs is checked before main's hook applies
   * anything (a token file that cannot be read, or a new listen address that cannot be bound,
   * refuses the reload with nothing changed), and put in force once the config is. A moved
   * admin server (listen changed, section added or removed) binds the new address first; the
   * old one then closes, letting the requests in flight — the POST /api/reload that moved it,
   * too — finish for up to ADMIN_MOVE_GRACE_MS.
   */
  async function applyWithAdmin(next: Config, applyConfig: (next: Config) => void | Promise<void>): Promise<void> {
    const before = options.config();
    const current = before.admin;
    const moved = !sameListen(current?.listen, next.admin?.listen);
    const commitSettings = !moved && next.admin ? admin?.prepareAdminConfig(next.admin) : undefined;
    const fresh = moved && next.admin ? adminServer(next.admin) : undefined;
    await fresh?.listen();
    try {
      await applyConfig(next);
    } finally {
      // main's hook can throw after it put `next` in force (a service listener that could not
      // bind): the admin server follows the config in force either way. (main puts in force a
      // copy of `next`, with the ha settings it could apply, so the test is "no longer `before`".)
      const inForce = options.config() !== before;
      if (!inForce) await fresh?.close();
      else if (!moved) commitSettings?.();
      else {
        const old = admin;
        admin = fresh;
        log.info({ from: old?.url ?? null, to: fresh?.url ?? null }, 'admin server moved by the reload');
        if (old) void old.close(ADMIN_MOVE_GRACE_MS);
      }
    }
  }

  const removeSignal = reloader && (options.signals ?? true) ? reloader.installSignalHandler() : undefined;

  return {
    stats,
    metrics,
    reloader,
    get admin() {
      return admin;
    },
    reload: (trigger = 'api') => {
      if (!reloader) return Promise.reject(new Error('reload: fulcrum was not started from a config file'));
      return reloader.reload(trigger);
    },
    async close() {
      removeSignal?.();
      health?.off('probe', onProbe);
      balancer.off('backend-state', onBackendState);
      await admin?.close();
    },
  };
}

/** A started fulcrum (src/main.ts's handle), with the health monitor and failover when wired. */
export interface FulcrumLike {
  readonly config: Config;
  readonly memory: WebAssembly.Memory;
  readonly balancer: OperationsBalancer & { backendIndex(service: string, address: string): number };
  readonly pool: { killBackend(backend: number): Promise<number>; readonly size?: number };
  readonly logger: Logger;
  reload(next: Config): Promise<unknown>;
  readonly stopped: Promise<void>;
  readonly health?: OperationsHealth;
  readonly failover?: OperationsFailover | null;
}

/**
 * startOperations for a handle of startFulcrum: reloads and runtime membership changes go through
 * `handle.reload`, forced removals close sessions through the pool, and everything closes when
 * the handle stops.
 */
export async function startOperationsFor(
  handle: FulcrumLike,
  options: { configFile?: string; signals?: boolean; health?: OperationsHealth; failover?: OperationsFailover; status?: () => Record<string, unknown> } = {},
): Promise<Operations> {
  const ops = await startOperations({
    memory: handle.memory,
    balancer: handle.balancer,
    logger: handle.logger,
    config: () => handle.config,
    configFile: options.configFile,
    apply: async (next) => {
      const problems = await handle.reload(next);
      if (Array.isArray(problems) && problems.length > 0) {
        throw new FulcrumError('FULCRUM_ERR_LISTEN', `applied, but ${problems.length} listener${problems.length === 1 ? '' : 's'} could not bind: ${problems.map((p) => `${p.service} ${p.address}: ${p.message}`).join('; ')}`);
      }
    },
    killSessions: async (service, address) => {
      const index = handle.balancer.backendIndex(service, address);
      return index >= 0 ? handle.pool.killBackend(index) : 0;
    },
    health: options.health ?? handle.health,
    failover: options.failover ?? handle.failover ?? undefined,
    signals: options.signals ?? false,
    status: options.status,
  });
  void handle.stopped.then(() => ops.close());
  return ops;
}
