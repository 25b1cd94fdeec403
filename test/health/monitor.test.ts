/**
 * HealthMonitor against real TCP servers on 127.3.2.x: first probe decides, rise/fall, one probe
 * in flight, passive health, maint, reloads, stop, history, and probes that misbehave.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.ts';
import { configSchema, type Config } from '../../src/config/schema.ts';
import { sendExpectProbe } from '../../src/health/probes/send-expect.ts';
import { HealthMonitor, type ProbeEvent, type TransitionEvent } from '../../src/health/monitor.ts';
import { makeEnv } from '../balancer/env.ts';

const HOST = '127.3.2.1';

interface Srv {
  port: number;
  address: string;
  connections: number;
  open: number;
  maxOpen: number;
  listen(): Promise<void>;
  close(): Promise<void>;
}

/** A server that can go away and come back on the same port; `reply` delays the PONG. */
async function tcpServer(replyDelay = 0): Promise<Srv> {
  let server: net.Server | null = null;
  const sockets = new Set<net.Socket>();
  const s: Srv = {
    port: 0, address: '', connections: 0, open: 0, maxOpen: 0,
    listen: () => new Promise((resolve, reject) => {
      server = net.createServer((sock) => {
        s.connections++;
        s.open++;
        s.maxOpen = Math.max(s.maxOpen, s.open);
        sockets.add(sock);
        sock.on('error', () => {});
        sock.on('close', () => { s.open--; sockets.delete(sock); });
        sock.on('data', () => setTimeout(() => sock.writable && sock.write('+PONG\r\n'), replyDelay));
      });
      server.once('error', reject);
      server.listen(s.port, HOST, () => {
        s.port = (server!.address() as net.AddressInfo).port;
        s.address = `${HOST}:${s.port}`;
        resolve();
      });
    }),
    close: () => new Promise((resolve) => {
      for (const k of sockets) k.destroy();
      if (!server) return resolve();
      server.close(() => resolve());
      server = null;
    }),
  };
  await s.listen();
  return s;
}

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/**
 * The schema alone (not parseConfig's cross-checks), so one test can give a probe a timeout longer
 * than its interval: the monitor must hold "one probe in flight" even then.
 */
function config(backends: Array<{ address: string; state?: string }>, health: Record<string, unknown>, name = 'svc'): Config {
  return configSchema.parse({
    services: [{ name, listen: `${HOST}:1`, health: { interval: '100ms', timeout: '100ms', rise: 2, fall: 2, ...health }, backends }],
  });
}

function monitor(cfg: Config, opts: ConstructorParameters<typeof HealthMonitor>[1] = {}) {
  // The owner of the admin state, as in a running fulcrum: the balancer, given each config before
  // the monitor (src/control/reload.ts), and its changes routed to it (src/control/routes.ts).
  const { balancer } = makeEnv();
  balancer.apply(cfg);
  const m = new HealthMonitor(cfg, { admin: balancer, ...opts });
  balancer.on('backend-state', (ev) => m.adminStateChanged(ev.service, ev.address));
  cleanups.push(() => balancer.close());
  const transitions: TransitionEvent[] = [];
  const probes: ProbeEvent[] = [];
  m.on('transition', (t) => transitions.push(t));
  m.on('probe', (p) => probes.push(p));
  cleanups.push(() => m.stop());
  const reload = (next: Config): void => {
    balancer.apply(next);
    m.update(next);
  };
  return { m, transitions, probes, balancer, reload };
}

async function until(what: string, cond: () => boolean, ms = 2000): Promise<number> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > ms) throw new Error(`not within ${ms}ms: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  return Date.now() - start;
}

async function srv(delay = 0) {
  const s = await tcpServer(delay);
  cleanups.push(() => s.close());
  return s;
}

describe('HealthMonitor', () => {
  it('the first probe decides at once; then fall and rise apply', async () => {
    const a = await srv();
    const b = await srv();
    await b.close(); // refused
    const { m, transitions } = monitor(config([{ address: a.address }, { address: b.address }], { type: 'tcp' }));
    await m.ready(); // the probe thread's start-up is not the backends' time to answer
    await until('both decided', () => transitions.length === 2, 500);
    expect(transitions).toEqual(expect.arrayContaining([
      { service: 'svc', address: a.address, up: true, cause: 'first probe: connected', initial: true },
      { service: 'svc', address: b.address, up: false, cause: 'first probe: connection refused', initial: true },
    ]));

    // a goes away: down after fall (2) failed probes, not after one.
    await a.close();
    const tDown = await until('a down', () => transitions.length === 3);
    expect(transitions[2]).toEqual({ service: 'svc', address: a.address, up: false, cause: '2 consecutive probes failed: connection refused', initial: false });
    expect(tDown).toBeGreaterThan(100); // at least two probes apart
    expect(m.state('svc', a.address)).toMatchObject({ state: 'down', pending: false });

    // b comes back: up after rise (2) passes.
    await b.listen();
    await until('b up', () => transitions.some((t) => t.address === b.address && t.up));
    expect(transitions.at(-1)).toMatchObject({ address: b.address, up: true, cause: '2 consecutive probes passed: connected' });
  });

  it('never runs two probes of one backend at once, even when a probe outlasts the interval', async () => {
    const slow = await srv(250);
    // The real send_expect probe, wrapped to count probes in flight as the monitor sees them.
    let inFlight = 0;
    let maxInFlight = 0;
    const { probes } = monitor(config([{ address: slow.address }], {
      type: 'send_expect', interval: '50ms', timeout: '1s', send_expect: { send: 'PING\\r\\n', expect: '+PONG' },
    }), {
      probes: {
        send_expect: async (target, settings, signal) => {
          maxInFlight = Math.max(maxInFlight, ++inFlight);
          try {
            return await sendExpectProbe(target, settings, signal);
          } finally {
            inFlight--;
          }
        },
      },
    });
    await new Promise((r) => setTimeout(r, 1200));
    expect(maxInFlight).toBe(1);
    expect(probes.length).toBeGreaterThanOrEqual(3);
    expect(probes.length).toBeLessThanOrEqual(5);
    expect(probes.every((p) => p.ok)).toBe(true);
  });

  it('spreads probes with jitter around the interval', async () => {
    const a = await srv();
    const { m } = monitor(config([{ address: a.address }], { type: 'tcp', interval: '100ms' }));
    await m.ready();
    const at: number[] = [];
    m.on('probe', () => at.push(performance.now()));
    await new Promise((r) => setTimeout(r, 1150));
    // About 11 probes in 1.15 s at 100 ms ± 10 %: never a burst, and not a fixed beat. (Results
    // arrive from the probe thread: the gap between two is the interval give or take the
    // difference of their latencies.)
    expect(at.length).toBeGreaterThanOrEqual(8);
    expect(at.length).toBeLessThanOrEqual(13);
    const gaps = at.slice(1).map((t, i) => t - at[i]);
    expect(Math.min(...gaps)).toBeGreaterThanOrEqual(60);
    expect(Math.max(...gaps) - Math.min(...gaps)).toBeGreaterThanOrEqual(4);
  });

  it('passive health: observe_failures connect failures mark down at once; probes bring it back', async () => {
    const a = await srv();
    const { m, transitions } = monitor(config([{ address: a.address }], { type: 'tcp', observe_failures: 2, interval: '150ms' }));
    await until('first probe', () => transitions.length === 1);
    expect(m.observeConnectFailure('svc', a.address)).toBe(false);
    expect(m.observeConnectFailure('svc', a.address)).toBe(true);
    expect(transitions[1]).toEqual({ service: 'svc', address: a.address, up: false, cause: 'passive: 2 consecutive connect failures in the data plane', initial: false });
    expect(m.observeConnectFailure('svc', a.address)).toBe(false); // already down: no repeat
    expect(m.observeConnectFailure('svc', a.address)).toBe(false);
    // The server is fine: rise (2) probes bring it back.
    await until('back up', () => transitions.length === 3);
    expect(transitions[2]).toMatchObject({ up: true, cause: '2 consecutive probes passed: connected' });
    // Unknown backends and services without health are ignored.
    expect(m.observeConnectFailure('svc', '127.3.2.99:1')).toBe(false);
    expect(m.observeConnectFailure('other', a.address)).toBe(false);
  });

  it('observe_failures: 0 turns passive health off', async () => {
    const a = await srv();
    const { m, transitions } = monitor(config([{ address: a.address }], { type: 'tcp', observe_failures: 0 }));
    await until('first probe', () => transitions.length === 1);
    for (let i = 0; i < 5; i++) expect(m.observeConnectFailure('svc', a.address)).toBe(false);
    expect(transitions.length).toBe(1);
  });

  it('maint is not probed; leaving maint probes at once and that result decides', async () => {
    const a = await srv();
    const { m, transitions, balancer } = monitor(config([{ address: a.address, state: 'maint' }], { type: 'tcp', interval: '2s', timeout: '200ms' }));
    await new Promise((r) => setTimeout(r, 300));
    expect(a.connections).toBe(0);
    expect(m.observeConnectFailure('svc', a.address)).toBe(false);
    await a.close();
    balancer.setAdminState('svc', a.address, 'ready', 'test');
    await until('decided after maint', () => transitions.length === 1, 500);
    expect(transitions[0]).toMatchObject({ up: false, initial: true, cause: 'first probe: connection refused' });
    balancer.setAdminState('svc', a.address, 'maint', 'test');
    const before = m.history('svc', a.address).length;
    await new Promise((r) => setTimeout(r, 300));
    expect(m.history('svc', a.address).length).toBe(before);
  });

  it('update(): keeps the state of kept backends, starts new ones, stops removed ones', async () => {
    const a = await srv();
    const b = await srv();
    const c = await srv();
    await a.close(); // a is down
    const { m, transitions } = monitor(config([{ address: a.address }, { address: b.address }], { type: 'tcp' }));
    await until('decided', () => transitions.length === 2);
    m.update(config([{ address: a.address }, { address: c.address }], { type: 'tcp' }));
    await until('c decided', () => transitions.length === 3);
    expect(transitions[2]).toMatchObject({ address: c.address, up: true, initial: true });
    expect(m.state('svc', a.address)).toMatchObject({ state: 'down', pending: false }); // kept, no new first probe
    expect(m.state('svc', b.address)).toBeUndefined();
    const bConnections = b.connections;
    await new Promise((r) => setTimeout(r, 300));
    expect(b.connections).toBe(bConnections);
    expect(transitions.length).toBe(3);
    // A service that loses its health section stops being probed.
    m.update(parseConfig(JSON.stringify({ services: [{ name: 'svc', listen: `${HOST}:1`, backends: [{ address: c.address }] }] })));
    expect(m.describe()).toEqual([]);
  });

  it('update(): config maint follows the config; a run-time maint survives reloads that do not change it', async () => {
    const a = await srv();
    const b = await srv();
    const cfg = (aState: string) => config([{ address: a.address, state: aState }, { address: b.address }], { type: 'tcp' });
    const { m, balancer, reload } = monitor(cfg('maint'));
    await new Promise((r) => setTimeout(r, 200));
    expect(a.connections).toBe(0);
    reload(cfg('ready'));
    await until('a probed once out of config maint', () => a.connections > 0, 500);
    balancer.setAdminState('svc', b.address, 'maint', 'test');
    reload(cfg('ready')); // same config again: b stays in maint
    expect(m.state('svc', b.address)).toMatchObject({ maint: true });
    const before = b.connections;
    await new Promise((r) => setTimeout(r, 300));
    expect(b.connections).toBe(before);
  });

  it('stop() aborts probes in flight and ends probing', async () => {
    const slow = await srv(10_000);
    const { m, probes } = monitor(config([{ address: slow.address }], {
      type: 'send_expect', interval: '50ms', timeout: '5s', send_expect: { send: 'x', expect: 'y' },
    }));
    await until('probe connected', () => slow.open === 1);
    m.stop();
    await until('probe socket closed', () => slow.open === 0, 1000);
    await new Promise((r) => setTimeout(r, 200));
    expect(probes.length).toBe(0);
    expect(slow.connections).toBe(1);
  });

  it('keeps a bounded history of results', async () => {
    const a = await srv();
    const { m } = monitor(config([{ address: a.address }], { type: 'tcp', interval: '20ms' }), { historySize: 5 });
    await m.ready();
    await new Promise((r) => setTimeout(r, 400));
    const h = m.history('svc', a.address);
    expect(h.length).toBe(5);
    expect(h.every((e) => e.ok && e.reason === 'connected' && typeof e.at === 'number')).toBe(true);
    expect(h[4].at).toBeGreaterThanOrEqual(h[0].at);
  });

  it('a probe that throws or never settles is a failure with a reason, and the loop goes on', async () => {
    const a = await srv();
    let calls = 0;
    const { transitions, probes } = monitor(config([{ address: a.address }], { type: 'tcp', interval: '50ms', timeout: '100ms', fall: 1 }), {
      probes: {
        tcp: (_t, _s, _signal) => {
          calls++;
          if (calls === 1) throw new Error('boom');
          return new Promise(() => {}); // ignores its signal: the safety net must fire
        },
      },
    });
    await until('two results', () => probes.length >= 2, 2000);
    expect(probes[0]).toMatchObject({ ok: false, reason: 'probe error: boom' });
    expect(probes[1]).toMatchObject({ ok: false, reason: 'timeout after 100ms (probe did not stop when asked)' });
    expect(transitions[0]).toMatchObject({ up: false, initial: true });
  });
});
