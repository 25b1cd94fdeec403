/**
 * Builds a running fulcrum from a validated config, installs the routes between its parts, and
 * handles the signals of `fulcrum run`. Nothing else: the parts never reach for each other (they
 * emit typed events, src/events.ts, or take narrow functions), src/control/routes.ts is the one
 * table that connects them, and src/control/reload.ts is the one reload sequence that SIGHUP, the
 * admin API and runtime edits all go through.
 *
 *   shared memory ─▶ engine (control-plane instance) ─▶ Balancer (records, rings; admin state)
 *                                   └─▶ WorkerPool (data-plane threads, same memory)
 *   HealthMonitor (asks the Balancer for admin state)   Failover (when config.ha is set)
 *   routes (src/control/routes.ts): pool ─▶ health (passive), health ─▶ balancer,
 *     balancer ─▶ pool (shutdown_sessions), balancer ─▶ health (maint), failover ↔ pool (VIP),
 *     balancer ─▶ bgp (announce what can be served, when config.bgp is set),
 *     discovery ─▶ the reload sequence's edit (a discovered set joins every config it applies),
 *     and everything observers read onto handle.events
 *   reload (src/control/reload.ts): listen check → VIP pause → balancer → health → service
 *     table → workers → resume → resize
 *   operations (src/admin): metrics, the admin server when config.admin is set; they trigger the
 *     reload, they do not own it.
 *   upgrade (src/control/upgrade.ts, SIGUSR2 and POST /api/upgrade): the next process gets the
 *     listening sockets and the carried state (src/control/carry.ts), with bgp the announcements
 *     and gobgpd itself (adopted, its liveness pipe handed over), then the failover (this one
 *     abandons it, the next continues it in the same role); this one then stops with `handover`
 *     and drains.
 */
import { EventEmitter } from 'node:events';
import { Balancer, type BackendStateEvent } from './balancer/balancer.ts';
import { instantiateEngine, loadEngineModule } from './balancer/engine.ts';
import { resolveWorkers } from './config/load.ts';
import type { Config } from './config/schema.ts';
import { vipBoundServices } from './control/diff.ts';
import { preflight } from './control/preflight.ts';
import { ReloadSequence } from './control/reload.ts';
import { carryState, seedFromCarried, withCarriedMembership } from './control/carry.ts';
import { startUpgrade, UpgradeError, type Handover } from './control/upgrade.ts';
import { bgpServicesOn, discoveryRoutes, failoverRoutes, installBgpRoutes, installRoutes } from './control/routes.ts';
import { Bgp } from './bgp/index.ts';
import { Discovery } from './discovery/index.ts';
import type { FulcrumEvents } from './events.ts';
import { FailoverThread } from './failover/thread.ts';
import { HealthMonitor } from './health/monitor.ts';
import { createLogger, setLogFormat, type Logger } from './observability/log.ts';
import { raiseOpenFilesLimit } from './open-files.ts';
import type { ListenProblem } from './proxy/messages.ts';
import { WorkerPool } from './proxy/pool.ts';
import { buildServiceTable } from './proxy/table.ts';
import { createSharedMemory } from './shm/layout.ts';
import { ADMIN_MOVE_GRACE_MS, startOperationsFor, type Operations } from './admin/index.ts';
import { systemdNotifier, type Notifier } from './ops/notify.ts';

export type { FulcrumEvents } from './events.ts';

export interface StartOptions {
  /** Defaults to a pino logger at config.logging.level on stdout, in config.logging.format. */
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
  /**
   * Under systemd ($NOTIFY_SOCKET, src/ops/notify.ts): READY=1 once every listener is bound and
   * the first health round is done, RELOADING=1/READY=1 around SIGHUP, STOPPING=1, the watchdog
   * fed. `fulcrum run` sets it.
   */
  notify?: boolean;
  /**
   * Started by `fulcrum upgrade` (src/control/upgrade.ts): the old process's listening sockets,
   * adopted by the workers, and its carried state (src/control/carry.ts), applied before they open.
   */
  handover?: Handover;
}

export interface FulcrumHandle {
  /** The config in force (replaced by each successful reload). */
  readonly config: Config;
  readonly memory: WebAssembly.Memory;
  readonly balancer: Balancer;
  readonly pool: WorkerPool;
  /** What the routes table publishes for observers (src/events.ts FulcrumEvents). */
  readonly events: EventEmitter<FulcrumEvents>;
  /** Health probes and passive health: health.describe(), health.history(service, address). */
  readonly health: HealthMonitor;
  /** Backends from DNS, Redis Sentinel and Patroni (services[].discover): discovery.describe() says what each source last said. */
  readonly discovery: Discovery;
  /** Present when config.ha is set: role, peer, counters via failover.status(); the failover runs on its own thread. */
  readonly failover: FailoverThread | null;
  /** Present when config.bgp is set: speaker, sessions, announcements via bgp.status(). */
  readonly bgp: Bgp | null;
  readonly logger: Logger;
  /** The one reload sequence (src/control/reload.ts): reloadFile, edits, hooks, the reload record. */
  readonly control: ReloadSequence;
  /** Metrics and the admin server; null with `operations: false`. */
  readonly ops: Operations | null;
  /** systemd's notify socket (options.notify, when $NOTIFY_SOCKET is set), else null. */
  readonly notifier: Notifier | null;
  /** Applies a validated config as a difference; resolves with listeners that could not be bound. */
  reload(next: Config): Promise<ListenProblem[]>;
  /** Re-sends the service table to the workers: call after balancer.addBackend / removeBackend. */
  syncServices(): Promise<ListenProblem[]>;
  /**
   * Graceful stop: stop accepting, let sessions finish up to shutdown_grace, close the rest.
   * `handover` (after an upgrade): the new process holds the same sockets, the failover (abandoned
   * here, continued there) and the routes (gobgpd is tied to it now), so nothing is resigned or
   * withdrawn on the way out.
   */
  stop(reason?: string, options?: { handover?: boolean }): Promise<void>;
  /**
   * `fulcrum upgrade` / SIGUSR2: starts the new fulcrum from the current install, hands over, and
   * once it serves stops this one (handover). Rejects with UpgradeError (this one keeps serving).
   */
  upgrade(trigger: string): Promise<{ old_pid: number; new_pid: number }>;
  /** Resolves once stopped, whoever asked. */
  readonly stopped: Promise<void>;
}

export async function startFulcrum(fileConfig: Config, options: StartOptions = {}): Promise<FulcrumHandle> {
  const handover = options.handover;
  // An upgrade keeps the backends added or removed at run time (the file stays what reloads read).
  const initial = handover ? withCarriedMembership(fileConfig, handover.state) : fileConfig;
  const logger = options.logger ?? createLogger(initial.logging.level);
  if (options.logger === undefined) setLogFormat(logger, initial.logging.format);
  const log = logger.child({ component: 'main' });
  // Before the workers open sockets in this process's descriptor table (src/open-files.ts).
  raiseOpenFilesLimit(log);
  // The watchdog is fed from here on: a start that hangs is a hung service too.
  const notifier = options.notify ? systemdNotifier(logger) : null;
  const events = new EventEmitter<FulcrumEvents>();

  // ── the engine and the balancer ───────────────────────────────────────────
  // What the config needs of this machine (one address under two names, secret files, CA
  // files): refused before anything starts, by the list `fulcrum check` reports from.
  await preflight(initial, options.configFile);
  // The old process announces by BGP and goes without withdrawing: a config without bgp would
  // leave its routes to die with it. Refused (the old one keeps serving); a restart withdraws first.
  if (handover?.state.bgp && !initial.bgp) {
    throw new UpgradeError(`the running fulcrum (pid ${handover.fromPid}) announces its VIPs by BGP and this config has no bgp section: restart fulcrum instead (its stop withdraws first)`);
  }
  const memory = createSharedMemory();
  const module = loadEngineModule();
  // The control plane's own instance; it never calls acquire, so sharing worker 0's scratch id is safe.
  const engine = instantiateEngine(module, memory, 0);
  const balancer = new Balancer(memory, engine, logger);
  balancer.apply(initial);

  // ── the data plane ────────────────────────────────────────────────────────
  const pool = new WorkerPool({
    module,
    memory,
    workers: resolveWorkers(initial),
    logging: { level: initial.logging.level, connections: initial.logging.connections },
    logger,
    reclaim: (workerId) => engine.reclaim(workerId),
  });
  // ── health, the routes, the listeners, failover, the reload sequence ───────
  const health = new HealthMonitor(initial, { logger, admin: balancer });
  // The config in force is the reload sequence's, built once failover is; until then (a probe
  // may decide while failover starts) it is the initial one.
  let control: ReloadSequence | undefined;
  const config = (): Config => control?.config ?? initial;
  installRoutes({ balancer, health, pool, events, config, logger });
  if (handover) {
    // Before any probe answers and before the listeners open: no backend starts cold.
    const seeded = seedFromCarried(handover.state, {
      config: initial,
      setWeight: (s, a, w) => balancer.setWeight(s, a, w),
      setAdminState: (s, a, st, cause) => balancer.setAdminState(s, a, st, cause),
      setHealth: (s, a, up, cause) => balancer.setHealth(s, a, up, cause),
      has: (s, a) => balancer.backendIndex(s, a) >= 0,
      seedHealth: (states) => health.seed(states),
    });
    log.info({ from_pid: handover.fromPid, ...seeded }, `upgrade: started from the state of pid ${handover.fromPid}`);
  }
  // The probe thread is up before start-up ends: the first probes decide the backends' states,
  // and its memory is part of what a started fulcrum holds, not a growth seen later.
  if (initial.services.some((s) => s.health)) await health.ready();
  // A service that routes by role has its backends down until a probe reports their role: the
  // listeners open after that first round (each probe bounded by its timeout), so the first
  // clients reach the primary instead of being refused for want of an eligible backend.
  await health.firstRound();

  // bgp: the speaker starts (a missing binary fails here, naming it) and the VIPs go on lo before
  // the listeners bind them; announced once the listeners are open (setListening below).
  // A drain quiesces the VIPs' services through the pool (new SYNs held back) before it withdraws.
  // After an upgrade it adopts what the old process announces (and its gobgpd) and asks nothing
  // of the speaker until bgp.commit() below.
  const carriedBgp = handover?.state.bgp ? { state: handover.state.bgp, handles: handover.handles, fromPid: handover.fromPid } : undefined;
  const bgp = initial.bgp ? new Bgp({ config: initial.bgp, logger, servicesOn: bgpServicesOn({ balancer, config }), quiesce: (services) => pool.quiesce(services), carried: carriedBgp }) : null;
  // Services bound to a VIP start paused: failover resumes them when this instance is master.
  try {
    if (bgp) {
      installBgpRoutes({ balancer, events }, bgp);
      await bgp.start();
    }
    // After an upgrade from a master, the listeners on the VIP are the master's (adopted, accepting):
    // the failover continues as master below.
    const onVip = initial.ha && handover?.state.ha_role === 'master' ? [] : vipBoundServices(initial);
    await pool.start(buildServiceTable(initial, balancer), [...(options.pausedServices ?? []), ...onVip], handover?.listeners);
  } catch (err) {
    health.stop(); // its probes started first: a start that fails leaves no thread or timer behind
    await bgp?.close();
    throw err;
  }
  bgp?.setListening(true);

  // On a thread of its own (src/failover/thread.ts): nothing that loads this thread delays a heartbeat.
  let failover: FailoverThread | null = null;
  if (initial.ha) {
    failover = new FailoverThread({ config: initial.ha, logger, ...failoverRoutes({ balancer, pool, config, logger }) });
    // After an upgrade from a process with a failover: its thread loads first, then takes the old
    // one's over (same role, heartbeat sequence and peer): no gap the peer would act on.
    const carried = handover?.state.ha_role !== undefined ? handover : undefined;
    await failover.start(carried ? () => carried.takeFailover() : undefined);
  }
  // Discovered backends join each config the sequence applies; the first answers arrive as edits.
  const discovery = new Discovery(initial, { logger });
  const sequence = new ReloadSequence({
    balancer, health, pool, failover, logger,
    compose: (next, prev) => discovery.compose(next, prev),
    // A reload changes the level and format of fulcrum's own logger (its children follow); a
    // logger handed in by the caller keeps the level and form the caller gave it.
    setLogLevel: options.logger === undefined ? (level, format) => {
      logger.level = level;
      setLogFormat(logger, format);
    } : undefined,
    configFile: options.configFile,
  }, { ...initial, ha: failover ? failover.settings : undefined }, { ...fileConfig, ha: failover ? failover.settings : undefined });
  control = sequence;
  discoveryRoutes({ discovery, control: sequence, events, logger });

  // ── stop ──────────────────────────────────────────────────────────────────
  let stopping: Promise<void> | null = null;
  let markStopped!: () => void;
  const stopped = new Promise<void>((resolve) => (markStopped = resolve));
  function stop(reason = 'stop requested', how: { handover?: boolean } = {}): Promise<void> {
    if (stopping !== null) return stopping;
    const grace = sequence.config.shutdown_grace;
    log.info({ reason, grace_ms: grace }, 'stopping: no new connections, open ones get the grace period');
    // Handed over (`fulcrum upgrade`): the new process is the unit's main one and feeds the
    // watchdog; this one says nothing more to systemd.
    if (how.handover) notifier?.close();
    else notifier?.stopping();
    health.stop();
    discovery.stop();
    // Handed over: admin requests go to the new process (same socket); one in flight here finishes.
    if (how.handover) void handle.ops?.admin?.close(ADMIN_MOVE_GRACE_MS);
    stopping = (async () => {
      // First: a master sends priority 0 and releases the VIP, so the peer takes over while we drain;
      // bgp withdraws and keeps accepting for bgp.drain while the router moves flows away.
      // After an upgrade the new process holds the failover (abandoned here: its stop only ends the
      // thread; one the new process did not take, its config having no `ha`, resigns as usual) and
      // the routes.
      await Promise.all([failover?.stop(), how.handover ? undefined : bgp?.stop(reason)]);
      // Handed over: gobgpd stays, tied to the new process alone from here (this one's copy of its
      // liveness pipe closes now, not after the drain), and the VIPs stay on lo; close() is then a no-op.
      if (how.handover) await bgp?.release();
      await pool.shutdown(grace);
      await bgp?.close();
      balancer.close();
      await notifier?.settled();
      log.info('stopped');
      markStopped();
    })();
    return stopping;
  }

  let upgrading: Promise<{ old_pid: number; new_pid: number }> | null = null;
  function upgrade(trigger: string): Promise<{ old_pid: number; new_pid: number }> {
    if (upgrading !== null) return Promise.reject(new UpgradeError('an upgrade is already under way'));
    if (stopping !== null) return Promise.reject(new UpgradeError('this fulcrum is stopping'));
    if (sequence.file === undefined) return Promise.reject(new UpgradeError('this fulcrum was not started from a config file'));
    // Both the failover (abandoned here, continued there) and the BGP routes (Bgp.carry) are
    // handed over (README, Upgrade).
    log.info({ trigger }, `upgrade requested (${trigger})`);
    let bgpCarried: ReturnType<Bgp['carry']> | null = null;
    upgrading = (async () => {
      try {
        const { pid } = await startUpgrade({
          listeners: () => pool.listenerFds(),
          adminHandle: () => handle.ops?.admin?.handle(),
          state: () => {
            bgpCarried = bgp?.carry() ?? null;
            return {
              ...carryState({
                fileConfig: sequence.fileConfig,
                inForce: sequence.config,
                describe: () => balancer.describe(),
                health: () => health.describe(),
                haRole: failover ? () => failover!.status().role : undefined,
              }),
              ...(bgpCarried ? { bgp: bgpCarried.state } : {}),
            };
          },
          failover: failover ?? undefined,
          // gobgpd's liveness pipe and stderr, of the same moment as the state (asked right after it).
          handles: () => bgpCarried?.handles ?? [],
          logger,
        });
        void stop(`upgraded: pid ${pid} serves`, { handover: true });
        return { old_pid: process.pid, new_pid: pid };
      } finally {
        upgrading = null;
      }
    })();
    return upgrading;
  }

  const handle = {
    get config() {
      return sequence.config;
    },
    memory,
    balancer,
    pool,
    events,
    health,
    discovery,
    failover,
    bgp,
    logger,
    control: sequence,
    ops: null as Operations | null,
    notifier,
    reload: (next: Config) => sequence.apply(next),
    syncServices: () => sequence.syncServices(),
    stop,
    upgrade,
    stopped,
  };
  if (options.signals) installSignalHandlers(handle);
  // Metrics and the admin server (when config.admin is set).
  // /api/status (and so `fulcrum status` and the status page) says where discovered backends come from.
  const discoveryStatus = (): Record<string, unknown> => {
    const d = discovery.describe();
    return d.length > 0 ? { discovery: d } : {};
  };
  if (options.operations !== false) {
    handle.ops = await startOperationsFor(handle, {
      status: discoveryStatus,
      upgrade: sequence.file !== undefined ? () => upgrade('admin API') : undefined,
      adminHandle: handover?.admin,
    });
  }
  if (handover) {
    // Ready means serving with every probed backend answered once; then the sockets no worker
    // took are closed (the old process closes its copies as it stops: with net.ipv4.tcp_migrate_req
    // their queued connections move to a listener of the same address, README).
    await health.firstRound({ every: true });
    const inUse = new Set((await pool.listenerFds()).flat().map((l) => l.fd));
    const closed = handover.closeUnused(inUse);
    if (closed > 0) log.info({ closed }, `upgrade: closed ${closed} handed-over listener${closed === 1 ? '' : 's'} no worker here took`);
    // The start went through: the announcements are this process's (it reconciles from what the
    // speaker announces; before this a failure left gobgpd and the routes to the old one).
    await bgp?.commit();
  }
  // Every listener (services, admin) is bound; READY=1 once every backend has had its first
  // probe too (each bounded by its timeout), unless a stop came first.
  if (notifier) void health.firstRound({ every: true }).then(() => stopping === null && notifier.ready());
  return handle;
}

/**
 * SIGTERM/SIGINT: graceful stop (a second signal exits at once); `fulcrum run` exits once
 * handle.stopped resolves. SIGHUP: the config file is re-read and applied — an invalid file
 * changes nothing and its problems are logged (src/control/reload.ts).
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
  handle.control.installSignalHandler(handle.notifier ?? undefined);
  // SIGUSR2 (as nginx's binary upgrade): for service managers that can send a signal but not call the API.
  process.on('SIGUSR2', () => {
    handle.upgrade('SIGUSR2').catch((err: Error) => handle.logger.error({ reason: err.message }, `SIGUSR2: upgrade not done, this fulcrum keeps serving: ${err.message}`));
  });
}
