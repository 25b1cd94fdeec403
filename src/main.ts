/**
 * The wiring: one function that builds a running fulcrum from a validated config, and the
 * signal handling of `fulcrum run`. Components never reach for each other; they emit events and
 * this file routes them (keep it a readable list of routes).
 *
 *   shared memory ─▶ engine (control-plane instance) ─▶ Balancer (records, rings)
 *                                   └─▶ WorkerPool (data-plane threads, same memory)
 *   events: pool 'connect-failed' ─▶ handle.events ─▶ (health: passive checks)
 *           balancer 'backend-state' ─▶ handle.events; down + shutdown_sessions ─▶ pool.killBackend
 *   operations (src/admin): metrics, the admin server when config.admin is set, and the one
 *   reload path (SIGHUP, POST /api/reload, fulcrum ctl reload).
 */
import { EventEmitter } from 'node:events';
import { Balancer } from './balancer/balancer.ts';
import { instantiateEngine, loadEngineModule } from './balancer/engine.ts';
import { checkListens, sameListens } from './config/listen.ts';
import { resolveWorkers } from './config/load.ts';
import { formatHostPort, type Config } from './config/schema.ts';
import { createLogger, type Logger } from './observability/log.ts';
import { raiseOpenFilesLimit } from './open-files.ts';
import type { ListenProblem } from './proxy/messages.ts';
import { WorkerPool } from './proxy/pool.ts';
import { buildServiceTable } from './proxy/table.ts';
import { createSharedMemory } from './shm/layout.ts';
import type { Failover } from './failover/index.ts';
import { followRoleAfterReload, pauseMovedOnto, vipBoundServices, vipReload, wireFailover } from './failover/wire.ts';
import type { HealthMonitor } from './health/monitor.ts';
import { wireHealth } from './health/wire.ts';
import { startOperationsFor, type Operations } from './admin/index.ts';

export interface StartOptions {
  /** Defaults to a pino logger at config.logging.level on stdout. */
  logger?: Logger;
  /** The file the config came from: what a reload (SIGHUP) re-reads. */
  configFile?: string;
  /** Services that start with no listener (bound to a VIP this node does not hold yet); see pool.resumeService. */
  pausedServices?: string[];
  /**
   * SIGTERM/SIGINT stop gracefully (a second one exits at once) and SIGHUP reloads the config
   * file; installed the moment the listeners are bound. `fulcrum run` and the demo set it.
   */
  signals?: boolean;
  /** false: do not start src/admin's operations (tests that start them with stand-ins). */
  operations?: boolean;
}

/**
 * Events routed through the handle: 'connect-failed', 'backend-state', 'stopping', 'stopped', and
 * from the wiring of health and failover, 'health-probe', 'health-transition', 'failover-role'.
 */
export type FulcrumEvents = EventEmitter;

export interface FulcrumHandle {
  /** The config in force (replaced by each successful reload). */
  readonly config: Config;
  readonly memory: WebAssembly.Memory;
  readonly balancer: Balancer;
  readonly pool: WorkerPool;
  readonly events: FulcrumEvents;
  /** Health probes and passive health: health.describe(), health.history(service, address). */
  readonly health: HealthMonitor;
  /** Present when config.ha is set: role, peer, counters via failover.status(). */
  readonly failover: Failover | null;
  readonly logger: Logger;
  /** Metrics, the admin server and the config-file Reloader; null with `operations: false`. */
  readonly ops: Operations | null;
  /** Applies a validated config as a difference; resolves with listeners that could not be bound. */
  reload(next: Config): Promise<ListenProblem[]>;
  /** Re-sends the service table to the workers: call after balancer.addBackend / removeBackend. */
  syncServices(): Promise<ListenProblem[]>;
  /** Graceful stop: stop accepting, let sessions finish up to shutdown_grace, close the rest. */
  stop(reason?: string): Promise<void>;
  /** Resolves once stopped, whoever asked. */
  readonly stopped: Promise<void>;
}

export async function startFulcrum(initial: Config, options: StartOptions = {}): Promise<FulcrumHandle> {
  const logger = options.logger ?? createLogger(initial.logging.level);
  // A reload changes the level of fulcrum's own logger (its children follow); a logger handed in by
  // the caller keeps the level the caller gave it.
  const ownLogger = options.logger === undefined;
  const log = logger.child({ component: 'main' });
  // Before the workers open sockets in this process's descriptor table (src/open-files.ts).
  raiseOpenFilesLimit(log);
  const events: FulcrumEvents = new EventEmitter();
  let config = initial;

  // ── the engine and the control plane ──────────────────────────────────────
  // Two services on one address under two names would share its connections (SO_REUSEPORT):
  // refused before anything starts. Binding is the workers' own check at start-up.
  await checkListens(undefined, initial, { file: options.configFile, skipBind: () => true });
  const memory = createSharedMemory();
  const module = loadEngineModule();
  // The control plane's own instance; it never calls acquire, so sharing worker 0's scratch id is safe.
  const engine = instantiateEngine(module, memory, 0);
  const balancer = new Balancer(memory, engine, logger);
  balancer.apply(config);

  // ── the data plane ────────────────────────────────────────────────────────
  const pool = new WorkerPool({
    module,
    memory,
    workers: resolveWorkers(config),
    logging: { level: config.logging.level, connections: config.logging.connections },
    logger,
    reclaim: (workerId) => engine.reclaim(workerId),
  });
  // Services bound to a VIP start paused: failover resumes them when this instance is master.
  await pool.start(buildServiceTable(config, balancer), [...(options.pausedServices ?? []), ...vipBoundServices(config)]);

  // ── routes ────────────────────────────────────────────────────────────────
  // Passive health: every failed connect in any worker (src/health/wire.ts feeds observe_failures).
  pool.on('connect-failed', (ev) => events.emit('connect-failed', ev));
  // Backend state changes (health, admin, runtime API).
  balancer.on('backend-state', (ev: { service: string; address: string; backend: number; from: string; to: string; cause: string }) => {
    events.emit('backend-state', ev);
    const svc = config.services.find((s) => s.name === ev.service);
    if (ev.to === 'down' && svc?.on_marked_down === 'shutdown_sessions') {
      pool.killBackend(ev.backend).then(
        (killed) => log.info({ service: ev.service, backend: ev.address, killed }, 'closed the sessions of a backend marked down'),
        (err) => log.error({ err }, 'closing sessions of a backend marked down failed'),
      );
    }
  });
  // Health (src/health/wire.ts): probes ─▶ balancer.setHealth; 'connect-failed' ─▶ passive health;
  //   'backend-state' maint ─▶ probes paused; re-emits 'health-probe' / 'health-transition'.
  const health = wireHealth({ balancer, events, logger }, config);
  // The probe thread is up before start-up ends: the first probes decide the backends' states,
  // and its memory is part of what a started fulcrum holds, not a growth seen later.
  if (config.services.some((s) => s.health)) await health.ready();

  // High availability: VIP, heartbeat, role → listeners on the VIP (src/failover/wire.ts).
  const failover = config.ha ? await wireFailover({ config: () => config, balancer, pool, events, logger }, config.ha) : null;

  // ── reload and stop ───────────────────────────────────────────────────────
  async function reload(next: Config): Promise<ListenProblem[]> {
    // Services on a VIP follow the role (src/failover/wire.ts), those a reload adds or moves too.
    const vip = vipReload(config, { ...next, ha: config.ha });
    // A new listen address is checked before anything is applied (src/config/listen.ts): one in
    // use refuses the whole reload and the old listener keeps serving (a VIP's address may not be
    // on this host: not bound). With no new address (most reloads, every runtime change of
    // backends) nothing is awaited, so changes apply in the order they were asked for.
    if (!sameListens(config, next)) {
      await checkListens(config, next, { file: options.configFile, skipBind: (name) => pool.isPaused(name) || vip.bound.has(name) });
    }
    const prevLogging = config.logging;
    const prevWorkers = config.workers;
    await pauseMovedOnto(vip, failover, pool);
    balancer.apply(next);
    // ha: what can change in place is applied (src/failover reconfigure); the pair's identity
    // (HA_RESTART_ONLY), and adding or removing the section, wait for a restart (the reload reports
    // them), so the config in force keeps the running values.
    if (failover && next.ha) failover.reconfigure(next.ha);
    config = { ...next, ha: failover ? failover.settings : undefined };
    if (prevLogging.level !== next.logging.level || prevLogging.connections !== next.logging.connections) {
      if (ownLogger) logger.level = next.logging.level;
      await pool.setLogging({ level: next.logging.level, connections: next.logging.connections });
    }
    health.update(next);
    const problems = await syncServices();
    const resume = await followRoleAfterReload(vip, failover, pool);
    for (const name of resume) {
      const listen = formatHostPort(config.services.find((s) => s.name === name)!.listen);
      await pool.resumeService(name).catch((err: Error) => problems.push({ service: name, address: listen, message: err.message }));
    }
    // workers: new ones start with the table just sent; retired ones drain for shutdown_grace.
    if (next.workers !== prevWorkers) problems.push(...await pool.resize(resolveWorkers(next), next.shutdown_grace));
    return problems;
  }

  /** Sends the workers the current table: after a reload, and after runtime backend changes. */
  async function syncServices(): Promise<ListenProblem[]> {
    const problems = await pool.updateServices(buildServiceTable(config, balancer));
    for (const p of problems) log.error(p, `reload: service ${p.service} cannot listen on ${p.address}: ${p.message}`);
    return problems;
  }

  let stopping: Promise<void> | null = null;
  let markStopped!: () => void;
  const stopped = new Promise<void>((resolve) => (markStopped = resolve));
  function stop(reason = 'stop requested'): Promise<void> {
    if (stopping !== null) return stopping;
    log.info({ reason, grace_ms: config.shutdown_grace }, 'stopping: no new connections, open ones get the grace period');
    events.emit('stopping', { reason });
    health.stop();
    stopping = (async () => {
      // First: a master sends priority 0 and releases the VIP, so the peer takes over while we drain.
      await failover?.stop();
      await pool.shutdown(config.shutdown_grace);
      balancer.close();
      events.emit('stopped', { reason });
      log.info('stopped');
      markStopped();
    })();
    return stopping;
  }

  const handle = {
    get config() {
      return config;
    },
    memory,
    balancer,
    pool,
    events,
    health,
    failover,
    logger,
    ops: null as Operations | null,
    reload,
    syncServices,
    stop,
    stopped,
  };
  if (options.signals) installSignalHandlers(handle);
  // Metrics, the admin server (when config.admin is set) and the Reloader of the config file.
  if (options.operations !== false) {
    handle.ops = await startOperationsFor(handle, { configFile: options.configFile });
  }
  return handle;
}

/**
 * SIGTERM/SIGINT: graceful stop (a second signal exits at once); `fulcrum run` exits once
 * handle.stopped resolves. SIGHUP: the Reloader re-reads the config file — an invalid file
 * changes nothing and its problems are logged (src/admin/reload.ts).
 */
function installSignalHandlers(handle: FulcrumHandle): void {
  let signals = 0;
  const onStop = (signal: NodeJS.Signals): void => {
    signals++;
    if (signals > 1) {
      handle.logger.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    handle.stop(signal).catch((err) => {
      handle.logger.error({ err }, 'stop failed');
      process.exit(1);
    });
  };
  process.on('SIGTERM', onStop);
  process.on('SIGINT', onStop);
  process.on('SIGHUP', () => {
    if (handle.ops?.reloader === undefined) handle.logger.warn('SIGHUP: no config file to reload');
    else void handle.ops.reload('SIGHUP').catch(() => undefined);
  });
}
