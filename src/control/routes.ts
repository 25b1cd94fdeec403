/**
 * The routes table: the one place where the control plane's parts are connected. Each part emits
 * typed events (src/events.ts) or takes a narrow function; none imports another. The routes:
 *
 *   pool     'connect-failed'       ─▶ health.observeConnectFailure (passive health)
 *   health   'transition'           ─▶ balancer.setHealth (writes the record, rebuilds the ring)
 *   balancer 'backend-state' → down ─▶ pool.killBackend, when the service says
 *                                      on_marked_down: shutdown_sessions (a replica down
 *                                      for lag: when health.lag_action says close)
 *   balancer 'backend-state' maint  ─▶ health.adminStateChanged (maint is not probed; leaving it
 *                                      probes at once; the monitor asks the balancer)
 *   failover setAccepting(on)       ─▶ pool.resumeService / pauseService of the services on a VIP
 *   failover backendsUp()           ─▶ balancer.describe() (ha.track.min_backends_up)
 *   discovery 'backends'            ─▶ the reload sequence's edit (discoveryRoutes, below)
 *   and, for observers (src/admin's metrics and stats, tests), onto the handle's bus:
 *   'backend-state', 'connect-failed', health 'probe' as 'health-probe', 'health-transition'.
 *
 * src/main.ts builds the parts and installs this table; reloads (src/control/reload.ts) apply
 * changes to the same parts in their one order.
 */
import type { EventEmitter } from 'node:events';
import type { Config } from '../config/schema.ts';
import type { BackendStateEvent, BalancerEvents, BgpEvents, ConnectFailedEvent, DiscoveredEvent, DiscoveryEvents, FulcrumEvents, HealthEvents, PoolEvents, ProbeEvent, TransitionEvent } from '../events.ts';
import type { Logger } from '../observability/log.ts';
import type { Balancer } from '../balancer/balancer.ts';
import type { FailoverOptions } from '../failover/index.ts';
import type { Bgp, BgpServiceView } from '../bgp/index.ts';
import type { HealthMonitor } from '../health/monitor.ts';
import type { WorkerPool } from '../proxy/pool.ts';
import { vipBoundServices } from './diff.ts';
import type { ReloadHook } from './reload.ts';

/** An emitter of one part's events, as the routes table needs it. */
interface Emits<Events extends Record<keyof Events, unknown[]>> {
  on<K extends keyof Events & string>(event: K, listener: (...args: Events[K]) => void): unknown;
  off<K extends keyof Events & string>(event: K, listener: (...args: Events[K]) => void): unknown;
}

export interface RouteParts {
  balancer: Emits<BalancerEvents> & Pick<Balancer, 'setHealth' | 'describe'>;
  health: Emits<HealthEvents> & Pick<HealthMonitor, 'observeConnectFailure' | 'adminStateChanged'>;
  pool: Emits<PoolEvents> & Pick<WorkerPool, 'killBackend' | 'pauseService' | 'resumeService'>;
  /** The handle's bus, for observers. */
  events: Pick<EventEmitter<FulcrumEvents>, 'emit'>;
  /** The config in force (read per event: a reload changes it). */
  config: () => Config;
  logger: Logger;
}

/** Installs the event routes; returns the function that removes them. */
export function installRoutes(parts: RouteParts): () => void {
  const { balancer, health, pool, events } = parts;
  const log = parts.logger.child({ component: 'routes' });

  const onConnectFailed = (ev: ConnectFailedEvent): void => {
    health.observeConnectFailure(ev.service, ev.address);
    events.emit('connect-failed', ev);
  };
  // The transition being applied when it marks a replica down for lag: the balancer emits its
  // 'backend-state' synchronously from setHealth, and that handler reads it.
  let lagDown: TransitionEvent | null = null;
  const onTransition = (ev: TransitionEvent): void => {
    lagDown = ev.lagging ? ev : null;
    try {
      balancer.setHealth(ev.service, ev.address, ev.up, `health: ${ev.cause}`);
    } catch (err) {
      // A backend removed by a reload while its probe was in flight: nothing left to mark.
      log.debug({ err, service: ev.service, backend: ev.address }, 'health transition for a backend no longer in the balancer');
    } finally {
      lagDown = null;
    }
    events.emit('health-transition', ev);
  };
  const onProbe = (ev: ProbeEvent): void => {
    events.emit('health-probe', ev);
  };
  const onBackendState = (ev: BackendStateEvent): void => {
    if (ev.to === 'maint' || ev.from === 'maint') health.adminStateChanged(ev.service, ev.address);
    const svc = ev.to === 'down' && !ev.awaiting_role ? parts.config().services.find((s) => s.name === ev.service) : undefined;
    // A replica down for lag: health.lag_action says (close: its sessions too; remove: no new ones).
    const forLag = lagDown !== null && lagDown.service === ev.service && lagDown.address === ev.address;
    if (svc && (forLag ? svc.health?.lag_action === 'close' : svc.on_marked_down === 'shutdown_sessions')) {
      pool.killBackend(ev.backend).then(
        (killed) => log.info({ service: ev.service, backend: ev.address, killed }, forLag ? 'closed the sessions of a lagging replica' : 'closed the sessions of a backend marked down'),
        (err) => log.error({ err }, 'closing sessions of a backend marked down failed'),
      );
    }
    events.emit('backend-state', ev);
  };

  pool.on('connect-failed', onConnectFailed);
  health.on('transition', onTransition);
  health.on('probe', onProbe);
  balancer.on('backend-state', onBackendState);
  return () => {
    pool.off('connect-failed', onConnectFailed);
    health.off('transition', onTransition);
    health.off('probe', onProbe);
    balancer.off('backend-state', onBackendState);
  };
}

/**
 * Discovery's routes, installed once the reload sequence exists (src/main.ts): a service's
 * discovered set changed ─▶ the reload sequence's edit of the config in force (its compose()
 * joins the set: one apply path, a diff as any reload); a config that goes in force ─▶
 * discovery.update (sources started, retuned, stopped). Returns the function that removes them.
 */
export function discoveryRoutes(parts: {
  discovery: Emits<DiscoveryEvents> & { update(config: Config): void };
  control: { readonly config: Config; edit(next: (inForce: Config) => Config): Promise<void>; addHook(hook: ReloadHook): () => void };
  events: Pick<EventEmitter<FulcrumEvents>, 'emit'>;
  logger: Logger;
}): () => void {
  const { discovery, control, events } = parts;
  const log = parts.logger.child({ component: 'routes' });
  const onBackends = (ev: DiscoveredEvent): void => {
    // The config in force when the edit's turn comes (a file reload may be ahead of it); compose() joins the set.
    control.edit((inForce) => inForce).then(
      () => events.emit('discovery-applied', ev),
      (err: Error) => {
        // The running set stays (a refusal applies nothing); the next change tries again.
        log.error({ service: ev.service, err: err.message }, 'discovered backends could not be applied');
        events.emit('discovery-applied', { ...ev, error: err.message });
      },
    );
  };
  discovery.on('backends', onBackends);
  const removeHook = control.addHook(async () => (inForce) => {
    if (inForce) discovery.update(control.config);
  });
  return () => {
    discovery.off('backends', onBackends);
    removeHook();
  };
}

/** Backends in state up (not being removed), across every service. */
export function countBackendsUp(balancer: Pick<Balancer, 'describe'>): number {
  let n = 0;
  for (const s of balancer.describe()) for (const b of s.backends) if (b.state === 'up' && !b.removed) n++;
  return n;
}

/**
 * Failover's routes, given to it as functions when it is built (src/main.ts, when config.ha is
 * set): services whose `listen` host is one of the VIPs start paused (the address is not on this
 * host yet), are resumed when this instance becomes master and paused again when it steps down;
 * services on 0.0.0.0 or a host address are left alone. ha.track.min_backends_up compares with the
 * backends up. Listening only while holding the VIP needs no sysctl; an operator who prefers
 * listeners bound on both instances can set net.ipv4.ip_nonlocal_bind=1 and listen on the VIP
 * (the kernel delivers its traffic only to the host that holds it).
 */
export function failoverRoutes(parts: Pick<RouteParts, 'balancer' | 'pool' | 'config' | 'logger'>): Required<Pick<FailoverOptions, 'backendsUp' | 'setAccepting'>> {
  const log = parts.logger.child({ component: 'routes' });
  return {
    backendsUp: () => countBackendsUp(parts.balancer),
    setAccepting: async (on) => {
      // Read at each role change, so a reload's services are followed.
      const services = vipBoundServices(parts.config());
      const results = await Promise.allSettled(services.map((s) => (on ? parts.pool.resumeService(s) : parts.pool.pauseService(s))));
      results.forEach((r, i) => {
        if (r.status === 'rejected') log.error({ service: services[i], err: (r.reason as Error)?.message }, on ? 'cannot listen on the VIP' : 'cannot stop listening on the VIP');
        else log.info({ service: services[i] }, on ? 'accepting on the VIP' : 'stopped accepting on the VIP');
      });
    },
  };
}

/**
 * BGP's routes (src/main.ts, when config.bgp is set): the services a VIP's announcement depends on
 * (those listening on its address or on 0.0.0.0) with their backends up and connections open, read
 * at each evaluation and by a drain waiting for the connections to end.
 */
export function bgpServicesOn(parts: Pick<RouteParts, 'balancer' | 'config'>): (vip: string) => BgpServiceView[] {
  return (vip) => {
    const services = parts.config().services.filter((s) => s.listen.host === vip || s.listen.host === '0.0.0.0');
    if (services.length === 0) return [];
    const seen = new Map<string, { up: number; active: number }>();
    for (const s of parts.balancer.describe()) seen.set(s.name, { up: s.backends.filter((b) => b.state === 'up' && !b.removed).length, active: s.active });
    return services.map((s) => ({ name: s.name, up: seen.get(s.name)?.up ?? 0, active: seen.get(s.name)?.active ?? 0, protocol: s.protocol }));
  };
}

/**
 * balancer ─▶ bgp: every backend-state change re-decides the announcements (a VIP whose service
 * falls under announce_when.min_backends_up is withdrawn, announced again when it is back);
 * bgp's route and session events go onto the handle's bus. Returns the function that removes them.
 */
export function installBgpRoutes(
  parts: Pick<RouteParts, 'balancer' | 'events'>,
  bgp: Emits<BgpEvents> & Pick<Bgp, 'evaluate'>,
): () => void {
  const onBackendState = (ev: BackendStateEvent): void => {
    void bgp.evaluate(`${ev.service} ${ev.address} ${ev.from} → ${ev.to}`);
  };
  const onRoute = (ev: BgpEvents['route'][0]): void => void parts.events.emit('bgp-route', ev);
  const onSession = (ev: BgpEvents['session'][0]): void => void parts.events.emit('bgp-session', ev);
  parts.balancer.on('backend-state', onBackendState);
  bgp.on('route', onRoute);
  bgp.on('session', onSession);
  return () => {
    parts.balancer.off('backend-state', onBackendState);
    bgp.off('route', onRoute);
    bgp.off('session', onSession);
  };
}
