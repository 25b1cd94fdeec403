/**
 * The routes table (src/control/routes.ts) between a real Balancer and the events of the pool and
 * the health monitor: what each event becomes, and that removing the table removes every route.
 * The pool and the health monitor are emitters that record what the routes asked of them.
 */
import { EventEmitter } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config/schema.ts';
import { countBackendsUp, failoverRoutes, installRoutes } from '../../src/control/routes.ts';
import type { BackendStateEvent, ConnectFailedEvent, FulcrumEvents, HealthEvents, PoolEvents, ProbeEvent, TransitionEvent } from '../../src/events.ts';
import { silentLogger } from '../../src/observability/log.ts';
import { closeEnvs, config as balancerConfig, makeEnv } from '../balancer/env.ts';

afterEach(() => closeEnvs());

const A = '127.0.0.1:7001';
const B = '127.0.0.1:7002';

function setup(cfg: Config) {
  const { balancer } = makeEnv();
  balancer.apply(cfg);
  const asked: string[] = [];
  const pool = Object.assign(new EventEmitter<PoolEvents>(), {
    killBackend: async (backend: number) => {
      asked.push(`pool.killBackend ${backend}`);
      return 1;
    },
    pauseService: async (name: string) => void asked.push(`pool.pause ${name}`),
    resumeService: async (name: string) => void asked.push(`pool.resume ${name}`),
  });
  const health = Object.assign(new EventEmitter<HealthEvents>(), {
    observeConnectFailure: (service: string, address: string) => {
      asked.push(`health.observeConnectFailure ${service} ${address}`);
      return false;
    },
    adminStateChanged: (service: string, address: string) => void asked.push(`health.adminStateChanged ${service} ${address} (balancer says ${balancer.adminState(service, address)})`),
  });
  const events = new EventEmitter<FulcrumEvents>();
  const published: string[] = [];
  for (const name of ['backend-state', 'connect-failed', 'health-probe', 'health-transition'] as const) events.on(name, () => published.push(name));
  const uninstall = installRoutes({ balancer, health, pool, events, config: () => cfg, logger: silentLogger });
  return { balancer, pool, health, events, asked, published, uninstall };
}

const downEvent = (address: string): TransitionEvent => ({ service: 's0', address, up: false, cause: 'test', initial: false });

describe('the routes table', () => {
  it('pool connect-failed ─▶ passive health, and onto the bus', () => {
    const r = setup(balancerConfig({ backends: [{ address: A }] }));
    const ev: ConnectFailedEvent = { service: 's0', backend: 0, address: A, error: 'ECONNREFUSED' };
    r.pool.emit('connect-failed', ev);
    expect(r.asked).toEqual([`health.observeConnectFailure s0 ${A}`]);
    expect(r.published).toEqual(['connect-failed']);
  });

  it('health transition ─▶ balancer.setHealth; down with shutdown_sessions ─▶ pool.killBackend', () => {
    const cfg = balancerConfig({ backends: [{ address: A }, { address: B }] });
    cfg.services[0] = { ...cfg.services[0], on_marked_down: 'shutdown_sessions' };
    const r = setup(cfg);
    const states: BackendStateEvent[] = [];
    r.balancer.on('backend-state', (e) => states.push(e));
    r.health.emit('transition', downEvent(A));
    expect(states).toMatchObject([{ service: 's0', address: A, from: 'up', to: 'down', cause: 'health: test' }]);
    expect(r.asked).toEqual([`pool.killBackend ${r.balancer.backendIndex('s0', A)}`]);
    expect(r.published).toEqual(['backend-state', 'health-transition']);
  });

  it('without shutdown_sessions a backend marked down keeps its sessions', () => {
    const r = setup(balancerConfig({ backends: [{ address: A }] }));
    r.health.emit('transition', downEvent(A));
    expect(r.balancer.describe()[0].backends[0].state).toBe('down');
    expect(r.asked).toEqual([]);
  });

  it('a transition for a backend a reload removed is published and changes nothing', () => {
    const r = setup(balancerConfig({ backends: [{ address: A }] }));
    r.health.emit('transition', downEvent(B));
    expect(r.published).toEqual(['health-transition']);
  });

  it('the balancer owns maint: entering or leaving it tells the monitor, which asks the balancer', () => {
    const r = setup(balancerConfig({ backends: [{ address: A }] }));
    r.balancer.setAdminState('s0', A, 'maint', 'test');
    r.balancer.setAdminState('s0', A, 'drain', 'test');
    r.balancer.setAdminState('s0', A, 'ready', 'test');
    expect(r.asked).toEqual([`health.adminStateChanged s0 ${A} (balancer says maint)`, `health.adminStateChanged s0 ${A} (balancer says drain)`]);
  });

  it('health probes go onto the bus as health-probe', () => {
    const r = setup(balancerConfig({ backends: [{ address: A }] }));
    const probe: ProbeEvent = { service: 's0', address: A, ok: true, reason: 'connected', latency_ms: 1 };
    r.health.emit('probe', probe);
    expect(r.published).toEqual(['health-probe']);
  });

  it('removing the table removes every route', () => {
    const r = setup(balancerConfig({ backends: [{ address: A }] }));
    r.uninstall();
    for (const [emitter, name] of [[r.pool, 'connect-failed'], [r.health, 'transition'], [r.health, 'probe'], [r.balancer, 'backend-state']] as const) {
      expect((emitter as EventEmitter).listenerCount(name)).toBe(0);
    }
  });
});

describe('failover routes', () => {
  it('setAccepting resumes or pauses the services on a VIP only; backendsUp counts backends up', async () => {
    const cfg = balancerConfig({ name: 'web', listen: '127.0.0.1:8080', backends: [{ address: A }, { address: B }] }, { name: 'db', listen: '10.9.0.100:5432', backends: [{ address: A }] });
    const ha = { vip: [{ address: '10.9.0.100', prefix: 24 }] } as Config['ha'];
    const r = setup(cfg);
    const routes = failoverRoutes({ balancer: r.balancer, pool: r.pool, config: () => ({ ...cfg, ha }), logger: silentLogger });
    await routes.setAccepting(true);
    await routes.setAccepting(false);
    expect(r.asked).toEqual(['pool.resume db', 'pool.pause db']);
    expect(routes.backendsUp()).toBe(3);
    r.balancer.setHealth('web', A, false, 'test');
    expect(countBackendsUp(r.balancer)).toBe(2);
  });
});
