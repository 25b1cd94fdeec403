/**
 * How failover plugs into a running fulcrum (called from src/main.ts when config.ha is set):
 *  - services whose `listen` host is one of the VIPs start paused (no listener: the address is
 *    not on this host yet) and are resumed when this instance becomes master, paused again when
 *    it steps down: "start accepting on the VIP" / "stop accepting" (pool.resumeService /
 *    pauseService). Services listening on 0.0.0.0 or a host address are left alone.
 *  - ha.track.min_backends_up is compared with the backends in state up, across every service,
 *    from balancer.describe().
 *  - role changes are re-emitted on the handle's event bus as 'failover-role' {from, to, cause}.
 *
 * Listening only while holding the VIP needs no sysctl. An operator who prefers listeners that
 * stay bound on both instances can set net.ipv4.ip_nonlocal_bind=1 and listen on the VIP
 * address: the kernel delivers the VIP's traffic only to the host that holds it.
 */
import type { EventEmitter } from 'node:events';
import type { Balancer } from '../balancer/balancer.ts';
import type { Config, HaConfig } from '../config/schema.ts';
import type { Logger } from '../observability/log.ts';
import type { WorkerPool } from '../proxy/pool.ts';
import { Failover } from './index.ts';

/** Names of the services bound to a VIP address: they start paused and follow the role. */
export function vipBoundServices(config: Config): string[] {
  const ha = config.ha;
  if (!ha) return [];
  const vips = new Set(ha.vip.map((v) => v.address));
  return config.services.filter((s) => vips.has(s.listen.host)).map((s) => s.name);
}

/**
 * What a reload changes about the services on the VIP, computed once per reload by main.ts from
 * the config in force and the new one (with the running `ha`: the VIPs are restart-only).
 * `bound`: the services on a VIP after it (their address may not be on this host: the listen
 * check skips them); `onto` / `off`: those it puts on a VIP or takes off one.
 */
export interface VipReload {
  bound: Set<string>;
  onto: string[];
  off: string[];
}

export function vipReload(prev: Config, next: Config): VipReload {
  const before = new Set(vipBoundServices(prev));
  const bound = new Set(vipBoundServices(next));
  return {
    bound,
    onto: [...bound].filter((s) => !before.has(s)),
    off: [...before].filter((s) => !bound.has(s) && next.services.some((x) => x.name === s)),
  };
}

/**
 * Before the workers get a reload's table: on an instance not accepting (backup, fault) a service
 * the reload puts on a VIP is paused, as at start-up (its address is not on this host).
 */
export async function pauseMovedOnto(plan: VipReload, failover: Pick<Failover, 'status'> | null, pool: Pick<WorkerPool, 'pauseService'>): Promise<void> {
  if (!failover || failover.status().accepting) return;
  for (const name of plan.onto) await pool.pauseService(name);
}

/**
 * After the table is out: the services to resume — those taken off a VIP (they listen where the
 * reload says), and those on it while accepting; those on it while not accepting are paused. The
 * role is read now: a role change while the reload ran acted on the services before it.
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

/** Backends in state up (not being removed), across every service. */
export function countBackendsUp(balancer: Pick<Balancer, 'describe'>): number {
  let n = 0;
  for (const s of balancer.describe()) for (const b of s.backends) if (b.state === 'up' && !b.removed) n++;
  return n;
}

export interface WireParts {
  /** Read at each role change, so a reload's services are followed. */
  config: () => Config;
  balancer: Pick<Balancer, 'describe'>;
  pool: Pick<WorkerPool, 'pauseService' | 'resumeService'>;
  events: EventEmitter;
  logger: Logger;
}

/** Builds and starts the Failover for `ha`; resolves once it runs (as backup or fault). */
export async function wireFailover(parts: WireParts, ha: HaConfig): Promise<Failover> {
  const log = parts.logger.child({ component: 'failover-wire' });
  const failover = new Failover({
    config: ha,
    logger: parts.logger,
    backendsUp: () => countBackendsUp(parts.balancer),
    setAccepting: async (on) => {
      const services = vipBoundServices(parts.config());
      const results = await Promise.allSettled(services.map((s) => (on ? parts.pool.resumeService(s) : parts.pool.pauseService(s))));
      results.forEach((r, i) => {
        if (r.status === 'rejected') log.error({ service: services[i], err: (r.reason as Error)?.message }, on ? 'cannot listen on the VIP' : 'cannot stop listening on the VIP');
        else log.info({ service: services[i] }, on ? 'accepting on the VIP' : 'stopped accepting on the VIP');
      });
    },
  });
  failover.on('role', (change) => parts.events.emit('failover-role', change));
  await failover.start();
  return failover;
}
