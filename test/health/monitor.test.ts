/**
 * HealthMonitor against real TCP servers on 127.3.2.x (first probe decides, rise/fall, passive
 * health, stop, history), and on a hand-driven clock with probes that answer on that clock, where
 * the timing is the point: rise and fall after exactly so many intervals, jitter, one probe in
 * flight, maint, reloads, and probes that misbehave.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.ts';
import { configSchema, formatHostPort, type Config } from '../../src/config/schema.ts';
import { sendExpectProbe } from '../../src/health/probes/send-expect.ts';
import type { Probe, ProbeResult } from '../../src/health/probes/probe.ts';
import { HealthMonitor, type ProbeEvent, type TransitionEvent } from '../../src/health/monitor.ts';
import { makeEnv } from '../balancer/env.ts';
import { TestClock } from '../helpers/clock.ts';
import { waitFor } from '../helpers/net.ts';

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

const until = (what: string, cond: () => boolean, ms = 2000): Promise<number> => waitFor(cond, ms, what, 10);

/**
 * A probe that runs on the test clock: answers `ok(address)` after `takes` ms of clock time (at
 * once when 0), or "aborted" as soon as its signal fires; records when each probe started and the
 * most that ran at once.
 */
function clockedProbe(clock: TestClock, ok: (address: string) => boolean, takes = 0) {
  const s = { started: [] as Array<{ address: string; at: number }>, maxInFlight: 0, probe: null as unknown as Probe };
  let inFlight = 0;
  s.probe = (target, _settings, signal) => {
    const address = formatHostPort(target);
    s.started.push({ address, at: clock.now() });
    s.maxInFlight = Math.max(s.maxInFlight, ++inFlight);
    const answer = (): ProbeResult => (ok(address) ? { ok: true, reason: 'connected', latency_ms: takes } : { ok: false, reason: 'connection refused', latency_ms: takes });
    return new Promise<ProbeResult>((resolve) => {
      const done = (r: ProbeResult): void => {
        inFlight--;
        resolve(r);
      };
      if (takes === 0) return done(answer());
      const onAbort = (): void => {
        clock.clearTimeout(timer);
        done({ ok: false, reason: 'aborted', latency_ms: clock.now() });
      };
      const timer = clock.setTimeout(() => {
        signal.removeEventListener('abort', onAbort);
        done(answer());
      }, takes);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  };
  return s;
}

/** Backend addresses for the clock tests: nothing listens there, nothing connects there. */
const [A, B, C] = ['127.3.2.1:1001', '127.3.2.1:1002', '127.3.2.1:1003'];

async function srv(delay = 0) {
  const s = await tcpServer(delay);
  cleanups.push(() => s.close());
  return s;
}

describe('HealthMonitor (real servers)', () => {
  it('the first probe decides at once; then fall and rise apply', async () => {
    const a = await srv();
    const b = await srv();
    await b.close(); // refused
    // A timeout generous for a loaded machine (100 ms failed a first connect once): refused and
    // connected answer at once either way, which is what this test is about.
    const { m, transitions } = monitor(config([{ address: a.address }, { address: b.address }], { type: 'tcp', timeout: '1s' }));
    await m.ready(); // the probe thread's start-up is not the backends' time to answer
    await until('both decided', () => transitions.length === 2, 3000);
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

  it('passive health: observe_failures connect failures mark down at once; probes bring it back', async () => {
    const a = await srv();
    // A probe's timeout generous enough that a loaded machine does not fail the first probe: the
    // point here is the passive count, not the probe's timing.
    const { m, transitions } = monitor(config([{ address: a.address }], { type: 'tcp', observe_failures: 2, interval: '150ms', timeout: '1s' }));
    await until('first probe', () => transitions.length === 1);
    expect(transitions[0]).toMatchObject({ up: true });
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

  it('stop() aborts probes in flight and ends probing', async () => {
    const slow = await srv(10_000);
    // The real probe, wrapped to know when the aborted one has settled.
    let settled = 0;
    const { m, probes } = monitor(config([{ address: slow.address }], {
      type: 'send_expect', interval: '50ms', timeout: '5s', send_expect: { send: 'x', expect: 'y' },
    }), {
      probes: {
        send_expect: async (target, settings, signal) => {
          try {
            return await sendExpectProbe(target, settings, signal);
          } finally {
            settled++;
          }
        },
      },
    });
    await until('probe connected', () => slow.open === 1);
    m.stop();
    await until('probe socket closed', () => slow.open === 0, 1000);
    await until('the aborted probe settled', () => settled === 1, 1000);
    await new Promise((r) => setImmediate(r)); // the monitor's handling of that result has run
    expect(probes.length).toBe(0);
    expect(slow.connections).toBe(1);
  });

  it('keeps a bounded history of results', async () => {
    const a = await srv();
    const { m, probes } = monitor(config([{ address: a.address }], { type: 'tcp', interval: '20ms' }), { historySize: 5 });
    await until('seven results', () => probes.length >= 7);
    const h = m.history('svc', a.address);
    expect(h.length).toBe(5);
    expect(h.every((e) => e.ok && e.reason === 'connected' && typeof e.at === 'number')).toBe(true);
    expect(h[4].at).toBeGreaterThanOrEqual(h[0].at);
  });
});

describe('HealthMonitor (on a test clock)', () => {
  /** A monitor on `clock` whose tcp probes are `probe`; jitter 0 unless said. */
  function clocked(clock: TestClock, cfg: Config, probe: Probe, jitter = 0) {
    return monitor(cfg, { clock, jitter, probes: { tcp: probe } });
  }

  it('fall takes exactly fall intervals, rise exactly rise intervals', async () => {
    const clock = new TestClock();
    let up = true;
    const p = clockedProbe(clock, () => up);
    const { m, transitions } = clocked(clock, config([{ address: A }], { type: 'tcp', interval: '100ms', rise: 3, fall: 2 }), p.probe);
    await clock.advance(10); // the first probe goes out within min(50 ms, interval / 10)
    expect(p.started.length).toBe(1);
    expect(transitions).toEqual([{ service: 'svc', address: A, up: true, cause: 'first probe: connected', initial: true }]);
    const t0 = p.started[0].at;

    up = false;
    await clock.advance(t0 + 199 - clock.now()); // one failure at t0 + 100: fall is 2
    expect(p.started.length).toBe(2);
    expect(transitions.length).toBe(1);
    expect(m.state('svc', A)).toMatchObject({ state: 'up', pending: false });
    await clock.advance(1); // the second, at t0 + 200
    expect(transitions[1]).toEqual({ service: 'svc', address: A, up: false, cause: '2 consecutive probes failed: connection refused', initial: false });

    up = true;
    await clock.advance(299); // passes at t0 + 300 and t0 + 400: rise is 3
    expect(transitions.length).toBe(2);
    await clock.advance(1); // the third, at t0 + 500
    expect(transitions[2]).toEqual({ service: 'svc', address: A, up: true, cause: '3 consecutive probes passed: connected', initial: false });
    // One probe per interval, measured from the start of the previous one.
    expect(p.started.map((x) => x.at - t0)).toEqual([0, 100, 200, 300, 400, 500]);
  });

  it('spreads probes with jitter around the interval', async () => {
    const clock = new TestClock();
    const p = clockedProbe(clock, () => true);
    clocked(clock, config([{ address: A }], { type: 'tcp', interval: '100ms' }), p.probe, 0.1);
    await clock.advance(1150);
    // 100 ms ± 10 %: every gap within it, and not a fixed beat.
    const gaps = p.started.slice(1).map((x, i) => x.at - p.started[i].at);
    expect(p.started.length).toBeGreaterThanOrEqual(10);
    expect(p.started.length).toBeLessThanOrEqual(13);
    expect(Math.min(...gaps)).toBeGreaterThanOrEqual(90);
    expect(Math.max(...gaps)).toBeLessThanOrEqual(110);
    expect(new Set(gaps).size).toBeGreaterThan(1);
  });

  it('never runs two probes of one backend at once, even when a probe outlasts the interval', async () => {
    const clock = new TestClock();
    const p = clockedProbe(clock, () => true, 250);
    const { probes } = monitor(config([{ address: A }], { type: 'send_expect', interval: '50ms', timeout: '1s', send_expect: { send: 'PING\\r\\n', expect: '+PONG' } }), {
      clock, jitter: 0, probes: { send_expect: p.probe },
    });
    await clock.advance(1200);
    expect(p.maxInFlight).toBe(1);
    // Each probe starts when the previous one ends (250 ms; the next timer's least delay, 1 ms,
    // after it), not at the interval (50 ms).
    expect(p.started.slice(1).map((x, i) => x.at - p.started[i].at)).toEqual([251, 251, 251, 251]);
    expect(probes.length).toBe(4);
    expect(probes.every((x) => x.ok)).toBe(true);
  });

  it('maint is not probed; leaving maint probes at once and that result decides', async () => {
    const clock = new TestClock();
    const p = clockedProbe(clock, () => false);
    const { m, transitions, balancer } = clocked(clock, config([{ address: A, state: 'maint' }], { type: 'tcp', interval: '2s', timeout: '200ms' }), p.probe);
    await clock.advance(10 * 2000); // ten intervals
    expect(p.started.length).toBe(0);
    expect(clock.pending).toBe(0); // nothing even scheduled
    expect(m.observeConnectFailure('svc', A)).toBe(false);
    balancer.setAdminState('svc', A, 'ready', 'test');
    await clock.advance(1);
    expect(p.started.length).toBe(1);
    expect(transitions).toEqual([{ service: 'svc', address: A, up: false, initial: true, cause: 'first probe: connection refused' }]);
    balancer.setAdminState('svc', A, 'maint', 'test');
    expect(clock.pending).toBe(0);
    const before = m.history('svc', A).length;
    await clock.advance(10 * 2000);
    expect(m.history('svc', A).length).toBe(before);
    expect(p.started.length).toBe(1);
  });

  it('update(): keeps the state of kept backends, starts new ones, stops removed ones', async () => {
    const clock = new TestClock();
    const p = clockedProbe(clock, (address) => address !== A); // A refuses
    const probesOf = (address: string) => p.started.filter((x) => x.address === address).length;
    const { m, transitions, reload } = clocked(clock, config([{ address: A }, { address: B }], { type: 'tcp' }), p.probe);
    await clock.advance(10);
    expect(transitions.length).toBe(2);
    reload(config([{ address: A }, { address: C }], { type: 'tcp' }));
    await clock.advance(10);
    expect(transitions[2]).toMatchObject({ address: C, up: true, initial: true });
    expect(m.state('svc', A)).toMatchObject({ state: 'down', pending: false }); // kept, no new first probe
    expect(m.state('svc', B)).toBeUndefined();
    const bProbes = probesOf(B);
    await clock.advance(10 * 100); // ten intervals
    expect(probesOf(B)).toBe(bProbes);
    expect(probesOf(C)).toBeGreaterThanOrEqual(10);
    expect(transitions.length).toBe(3);
    // A service that loses its health section stops being probed.
    reload(parseConfig(JSON.stringify({ services: [{ name: 'svc', listen: `${HOST}:1`, backends: [{ address: C }] }] })));
    expect(m.describe()).toEqual([]);
    expect(clock.pending).toBe(0);
  });

  it('update(): config maint follows the config; a run-time maint survives reloads that do not change it', async () => {
    const clock = new TestClock();
    const p = clockedProbe(clock, () => true);
    const probesOf = (address: string) => p.started.filter((x) => x.address === address).length;
    const cfg = (aState: string) => config([{ address: A, state: aState }, { address: B }], { type: 'tcp' });
    const { m, balancer, reload } = clocked(clock, cfg('maint'), p.probe);
    await clock.advance(10 * 100);
    expect(probesOf(A)).toBe(0);
    reload(cfg('ready'));
    await clock.advance(1);
    expect(probesOf(A)).toBe(1); // probed at once out of config maint
    balancer.setAdminState('svc', B, 'maint', 'test');
    reload(cfg('ready')); // same config again: B stays in maint
    expect(m.state('svc', B)).toMatchObject({ maint: true });
    const before = probesOf(B);
    await clock.advance(10 * 100);
    expect(probesOf(B)).toBe(before);
    expect(probesOf(A)).toBeGreaterThanOrEqual(10);
  });

  it('a probe that throws or never settles is a failure with a reason, and the loop goes on', async () => {
    const clock = new TestClock();
    let calls = 0;
    const startedAt: number[] = [];
    const { transitions, probes } = clocked(clock, config([{ address: A }], { type: 'tcp', interval: '50ms', timeout: '100ms', fall: 1 }), () => {
      startedAt.push(clock.now());
      if (++calls === 1) throw new Error('boom');
      return new Promise(() => {}); // ignores its signal: the safety net must fire
    });
    await clock.advance(10);
    expect(probes).toEqual([expect.objectContaining({ ok: false, reason: 'probe error: boom' })]);
    expect(transitions[0]).toMatchObject({ up: false, initial: true });
    await clock.advance(startedAt[0] + 50 - clock.now()); // the next probe, one interval later
    expect(startedAt.length).toBe(2);
    // The safety net: timeout (100 ms) plus its 250 ms margin after the probe started, not before.
    await clock.advance(349);
    expect(probes.length).toBe(1);
    await clock.advance(1);
    expect(probes[1]).toMatchObject({ ok: false, reason: 'timeout after 100ms (probe did not stop when asked)', latency_ms: 350 });
    // And the loop goes on: the next probe starts at once (the interval has long passed).
    await clock.advance(1);
    expect(startedAt.length).toBe(3);
  });
});
