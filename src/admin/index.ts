/**
 * The operations side of a running fulcrum, wired in one call from src/main.ts:
 * - Stats (per-worker counters summed from shared memory) and the Prometheus registry;
 * - from the handle's bus (what src/control/routes.ts publishes): 'health-probe' → probe metrics,
 *   'backend-state' → a new backend's counters start at 0; the probe history → the status page;
 * - the admin server, when the config has an `admin` section, and its reload hook (a moved admin
 *   address is bound before a reload applies anything);
 * - POST /api/reload and SIGHUP (when asked) trigger src/control/reload.ts's sequence; they do
 *   not own it.
 *
 * Runtime adds and removals of backends are edits of the config in force (plus or minus that
 * backend) applied by the same reload sequence: the balancer, the workers' service table and the
 * health monitor then always agree, and there is one code path to trust. Like HAProxy's runtime
 * API, such changes last until the next reload replaces them with what the file says.
 */
import type { Config } from '../config/schema.ts';
import { formatHostPort, type AdminConfig, type BackendConfig } from '../config/schema.ts';
import type { ReloadSequence } from '../control/reload.ts';
import type { BackendStateEvent, FulcrumEvents, ProbeEvent } from '../events.ts';
import type { Logger } from '../observability/log.ts';
import { Metrics, type BgpStatusView, type ProbeObservation, type RoleObservation } from '../observability/prom.ts';
import { Stats } from '../observability/stats.ts';
import { ADMIN_ERRORS, AdminHttpError } from './errors.ts';
import { AdminServer, type AdminBalancer, type AdminState, type DescribedService, type ProbeRecord } from './server.ts';

export { AdminServer } from './server.ts';

/** How long the admin server a reload moved away from lets its requests in flight finish. */
export const ADMIN_MOVE_GRACE_MS = 5_000;

export interface OperationsBalancer {
  describe(): readonly DescribedService[];
  setAdminState(service: string, address: string, state: AdminState, cause: string): unknown;
  setWeight(service: string, address: string, weight: number): unknown;
  backendIndex(service: string, address: string): number;
}

/** The handle's bus, as operations read it. */
export interface OperationsEvents {
  on<K extends keyof FulcrumEvents>(event: K, listener: (...args: FulcrumEvents[K]) => void): unknown;
  off<K extends keyof FulcrumEvents>(event: K, listener: (...args: FulcrumEvents[K]) => void): unknown;
}

export interface OperationsHealth {
  history(service: string, address: string): readonly ProbeRecord[];
  /** Every probed backend; `role` once a database check reported one (src/health/monitor.ts). */
  describe?(): readonly { service: string; address: string; role?: Omit<RoleObservation, 'service' | 'address'>; down_cause?: { cause: string; at: number } }[];
}

export interface OperationsFailover {
  /** FailoverStatus (src/failover/index.ts): role, peer, failovers, transitions…, shown as it is. */
  status(): { role: string; transitions: number };
}

export interface OperationsBgp {
  /** BgpStatus (src/bgp/index.ts): speaker, sessions, what is announced and why, counts. */
  status(): BgpStatusView & { stopping?: boolean };
  /** An operator's drain of the node: every VIP withdrawn and kept so (false: back). */
  drain(on: boolean): Promise<void>;
}

/** The reload sequence, as operations trigger it (src/control/reload.ts). */
export type OperationsControl = Pick<ReloadSequence, 'file' | 'applied' | 'refused' | 'reloadFile' | 'edit' | 'addHook' | 'installSignalHandler' | 'summary'>;

export interface OperationsOptions {
  memory: WebAssembly.Memory;
  balancer: OperationsBalancer;
  events: OperationsEvents;
  control: OperationsControl;
  logger: Logger;
  /** The config in force now (the reload sequence keeps it). */
  config: () => Config;
  /** Closes the open sessions of a backend (a forced removal); resolves with how many. */
  killSessions: (backend: number) => Promise<number>;
  health?: OperationsHealth;
  failover?: OperationsFailover;
  bgp?: OperationsBgp;
  /** Reload the config file on SIGHUP (default false: `fulcrum run` has main.ts install it). */
  signals?: boolean;
  /** More fields for /api/status. */
  status?: () => Record<string, unknown>;
  /** The data path's descriptor reserve (the pool's), for the metrics. */
  descriptors?: () => { held: number; accepting: boolean; pauses: number; stop: number };
  /** Whether the workers move bytes with the native relay (the pool's dataPath), for fulcrum_build_info. */
  dataPath?: () => 'relay' | 'javascript';
  /** POST /api/upgrade (src/control/upgrade.ts, through main.ts's handle). */
  upgrade?: () => Promise<{ old_pid: number; new_pid: number }>;
  /** The admin server's listening socket handed over by the previous process (`fulcrum upgrade`). */
  adminHandle?: object;
}

export interface Operations {
  stats: Stats;
  metrics: Metrics;
  /** The admin server in force (a reload can move, add or remove it). */
  readonly admin: AdminServer | undefined;
  /** Re-reads the config file (what SIGHUP does); rejects with the problems when it is invalid. */
  reload(trigger?: string): Promise<unknown>;
  close(): Promise<void>;
}

export async function startOperations(options: OperationsOptions): Promise<Operations> {
  const log = options.logger.child({ component: 'operations' });
  const { balancer, health, failover, bgp, control, events } = options;
  const stats = new Stats(options.memory);
  const directory = (): readonly DescribedService[] => balancer.describe();
  // The role each backend last reported: one reading for the metrics, the API and the status page.
  const roles = (): RoleObservation[] =>
    health?.describe?.().flatMap((h) => (h.role ? [{ service: h.service, address: h.address, ...h.role }] : [])) ?? [];

  const metrics = new Metrics({
    stats,
    directory,
    failover: failover ? () => failover.status() : undefined,
    bgp: bgp ? () => bgp.status() : undefined,
    reloads: () => ({ applied: control.applied, refused: control.refused }),
    roles,
    descriptors: options.descriptors,
    dataPath: options.dataPath,
  });

  // ── events ──
  const onProbe = (p: ProbeEvent): void => metrics.observeProbe(p);
  events.on('health-probe', onProbe);
  // A backend created in a slot gets counters that start at 0 (the slot may have served another).
  // Transition log lines are the Balancer's own ('backend state': service, backend, from, to, cause).
  const onBackendState = (e: BackendStateEvent): void => {
    if (e.from === 'free') stats.rebaseBackend(e.backend, e.service, e.address);
  };
  events.on('backend-state', onBackendState);

  // ── runtime membership changes: edits of the config in force (see the header comment) ──
  const withBackends = (service: string, edit: (backends: BackendConfig[]) => BackendConfig[]): Config => {
    const current = options.config();
    return {
      ...current,
      services: current.services.map((s) => (s.name === service ? { ...s, backends: edit([...s.backends]) } : s)),
    };
  };
  const adminBalancer: AdminBalancer = {
    describe: directory,
    // The health monitor asks the Balancer for maint when told it changed (src/control/routes.ts).
    setAdminState: (service, address, state, cause) => balancer.setAdminState(service, address, state, cause),
    setWeight: (service, address, weight) => balancer.setWeight(service, address, weight),
    addBackend: (service, backend) => control.edit(withBackends(service, (bs) => [...bs, backend])),
    removeBackend: async (service, address, { force }) => {
      if (force) {
        const index = balancer.backendIndex(service, address);
        if (index >= 0) await options.killSessions(index);
      }
      await control.edit(withBackends(service, (bs) => bs.filter((b) => formatHostPort(b.address) !== address)));
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
      reload: control.file !== undefined ? () => control.reloadFile('admin API') : undefined,
      upgrade: options.upgrade,
      healthHistory: health ? (s, a) => health.history(s, a) : undefined,
      roles: health?.describe ? roles : undefined,
      nodeDrain: bgp
        ? async (on) => {
            if (!on && bgp.status().stopping) throw new AdminHttpError(409, ADMIN_ERRORS.CONFLICT, 'state: this node is stopping; its routes stay withdrawn');
            await bgp.drain(on);
            return bgp.status();
          }
        : undefined,
      downCauses: health?.describe ? () => health.describe!().flatMap((h) => (h.down_cause ? [{ service: h.service, address: h.address, ...h.down_cause }] : [])) : undefined,
      status: () => ({
        ...control.summary(),
        ...(failover ? { failover: failover.status() } : {}),
        ...(bgp ? { bgp: bgp.status() } : {}),
        ...options.status?.(),
      }),
    });
  const initialAdmin = options.config().admin;
  if (initialAdmin) {
    admin = adminServer(initialAdmin);
    await admin.listen(options.adminHandle);
  }

  /**
   * The admin server's step in a reload: what it needs is checked before anything is applied (a
   * token file that cannot be read, or a new listen address that cannot be bound, refuses the
   * reload with nothing changed), and put in force once the config is — also when the sequence
   * fails after putting it in force (a service listener that could not bind). A moved admin
   * server (listen changed, section added or removed) binds the new address first; the old one
   * then closes, letting the requests in flight — the POST /api/reload that moved it, too —
   * finish for up to ADMIN_MOVE_GRACE_MS. A runtime edit leaves the admin section as it is.
   */
  const removeHook = control.addHook(async (diff, next, source) => {
    if (diff.admin === 'same' && source === 'edit') return () => undefined;
    const moved = diff.admin === 'moved';
    const commitSettings = !moved && next.admin ? admin?.prepareAdminConfig(next.admin) : undefined;
    const fresh = moved && next.admin ? adminServer(next.admin) : undefined;
    await fresh?.listen();
    return async (inForce) => {
      if (!inForce) await fresh?.close();
      else if (!moved) commitSettings?.();
      else {
        const old = admin;
        admin = fresh;
        log.info({ from: old?.url ?? null, to: fresh?.url ?? null }, 'admin server moved by the reload');
        if (old) void old.close(ADMIN_MOVE_GRACE_MS);
      }
    };
  });

  const removeSignal = control.file !== undefined && options.signals ? control.installSignalHandler() : undefined;

  return {
    stats,
    metrics,
    get admin() {
      return admin;
    },
    reload: (trigger = 'api') => control.reloadFile(trigger),
    async close() {
      removeSignal?.();
      removeHook();
      events.off('health-probe', onProbe);
      events.off('backend-state', onBackendState);
      await admin?.close();
    },
  };
}

/** A started fulcrum (src/main.ts's handle), with the health monitor and failover when wired. */
export interface FulcrumLike {
  readonly config: Config;
  readonly memory: WebAssembly.Memory;
  readonly balancer: OperationsBalancer;
  /** `status` (the data plane's workers, /api/status `data_plane`) when the pool has one. */
  readonly pool: {
    killBackend(backend: number): Promise<number>;
    status?(): object;
    descriptors?(): { held: number; accepting: boolean; pauses: number; stop: number };
    readonly dataPath?: 'relay' | 'javascript';
  };
  readonly events: OperationsEvents;
  readonly control: OperationsControl;
  readonly logger: Logger;
  readonly stopped: Promise<void>;
  readonly health?: OperationsHealth;
  readonly failover?: OperationsFailover | null;
  readonly bgp?: OperationsBgp | null;
}

/**
 * startOperations for a handle of startFulcrum: reloads and runtime membership changes go through
 * the handle's reload sequence, forced removals close sessions through the pool, and everything
 * closes when the handle stops.
 */
export async function startOperationsFor(
  handle: FulcrumLike,
  options: {
    signals?: boolean; health?: OperationsHealth; failover?: OperationsFailover; status?: () => Record<string, unknown>;
    upgrade?: OperationsOptions['upgrade']; adminHandle?: object;
  } = {},
): Promise<Operations> {
  const ops = await startOperations({
    memory: handle.memory,
    balancer: handle.balancer,
    events: handle.events,
    control: handle.control,
    logger: handle.logger,
    config: () => handle.config,
    killSessions: (backend) => handle.pool.killBackend(backend),
    health: options.health ?? handle.health,
    failover: options.failover ?? handle.failover ?? undefined,
    bgp: handle.bgp ?? undefined,
    signals: options.signals,
    descriptors: handle.pool.descriptors ? () => handle.pool.descriptors!() : undefined,
    dataPath: handle.pool.dataPath ? () => handle.pool.dataPath! : undefined,
    status: () => ({ ...(handle.pool.status ? { data_plane: handle.pool.status() } : {}), ...options.status?.() }),
    upgrade: options.upgrade,
    adminHandle: options.adminHandle,
  });
  void handle.stopped.then(() => ops.close());
  return ops;
}
