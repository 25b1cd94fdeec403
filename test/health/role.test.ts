/**
 * The monitor's role logic, one probe at a time: a hand-driven probe (the test answers each call
 * the monitor makes, so the order of results is exact whatever the timers do) in place of the
 * redis probe. A service with `role: primary`: backends start down until a probe reports their
 * role, and firstRound() waits for that; a wrong-role answer takes a backend out at once while
 * errors still wait for `fall`; back after `rise` right answers; a reload that changes the role
 * asks again at once and ignores the answer to the old question.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { configSchema, type Config } from '../../src/config/schema.ts';
import { HealthMonitor, type ProbeEvent, type TransitionEvent } from '../../src/health/monitor.ts';
import { roleResult, type Probe, type ProbeResult, type Role } from '../../src/health/probes/probe.ts';

const A = '127.3.9.1:6379';
const B = '127.3.9.2:6379';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function config(role: string, backends = [A, B]): Config {
  return configSchema.parse({
    services: [{
      name: 'svc', listen: '127.3.9.10:1',
      // A long timeout: the test answers every probe, the monitor's own timeout never fires.
      health: { type: 'redis', role, interval: '10ms', timeout: '5s', rise: 2, fall: 3 },
      backends: backends.map((address) => ({ address })),
    }],
  });
}

interface Call {
  address: string;
  role: string;
  resolve: (r: ProbeResult) => void;
  aborted: () => boolean;
}

/** The monitor with a probe the test answers call by call. */
function harness(cfg: Config) {
  const calls: Call[] = [];
  let wake: (() => void) | null = null;
  const probe: Probe = (target, settings, signal) => new Promise((resolve) => {
    calls.push({ address: `${target.host}:${target.port}`, role: settings.role, resolve, aborted: () => signal.aborted });
    wake?.();
  });
  const m = new HealthMonitor(cfg, { probes: { redis: probe } });
  cleanups.push(() => m.stop());
  const transitions: TransitionEvent[] = [];
  const probes: ProbeEvent[] = [];
  m.on('transition', (t) => transitions.push(t));
  m.on('probe', (p) => probes.push(p));

  /** Waits for the monitor's next probe of `address` and answers it; resolves once it is recorded. */
  async function answer(address: string, result: { role: Role } | { error: string }): Promise<void> {
    const deadline = Date.now() + 2000;
    let i: number;
    while ((i = calls.findIndex((c) => c.address === address && !c.aborted())) < 0) {
      if (Date.now() > deadline) throw new Error(`no probe of ${address} within 2s`);
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, 50);
      });
    }
    const [call] = calls.splice(i, 1);
    const seen = probes.length;
    call.resolve('role' in result
      ? { ...roleResult(result.role, call.role as 'primary' | 'replica' | 'any'), latency_ms: 1 }
      : { ok: false, reason: result.error, latency_ms: 1 });
    while (probes.length === seen) await new Promise((r) => setImmediate(r));
  }
  return { m, calls, transitions, probes, answer };
}

const last = (list: TransitionEvent[], address: string) => list.filter((t) => t.address === address).at(-1);

describe('HealthMonitor, a service that routes by role', () => {
  it('backends start down until a probe reports their role; firstRound() waits for every first answer', async () => {
    const { m, transitions, answer } = harness(config('primary'));
    expect(m.state('svc', A)).toMatchObject({ state: 'down', pending: true });
    expect(m.state('svc', A)?.role).toBeUndefined();
    let round = false;
    void m.firstRound().then(() => (round = true));
    await answer(A, { role: 'primary' });
    await new Promise((r) => setImmediate(r));
    expect(round).toBe(false); // B has not answered yet
    await answer(B, { role: 'replica' });
    await new Promise((r) => setImmediate(r));
    expect(round).toBe(true);
    expect(transitions).toEqual([
      { service: 'svc', address: A, up: true, cause: 'first probe: role primary', initial: true },
      { service: 'svc', address: B, up: false, cause: 'first probe: wrong role: saw replica, want primary', initial: true },
    ]);
    const b = m.state('svc', B)!;
    expect(b.role).toEqual({ reported: 'replica', at: b.last!.at, eligible: false });
    expect(m.state('svc', A)!.role).toMatchObject({ reported: 'primary', eligible: true });
  });

  it('role: any starts backends up and firstRound() does not wait for them', async () => {
    const { m } = harness(config('any'));
    expect(m.state('svc', A)).toMatchObject({ state: 'up', pending: true });
    await m.firstRound();
  });

  it('a wrong-role answer takes the backend out at once; errors wait for fall; back after rise right answers', async () => {
    const { m, transitions, answer } = harness(config('primary', [A]));
    await answer(A, { role: 'primary' });
    expect(last(transitions, A)).toMatchObject({ up: true, initial: true });

    // Errors and timeouts: fall (3) of them.
    await answer(A, { error: 'timeout after 5000ms (waiting for reply)' });
    await answer(A, { error: 'connection refused' });
    expect(transitions.length).toBe(1);
    await answer(A, { role: 'primary' }); // the streak starts over
    await answer(A, { error: 'connection refused' });
    await answer(A, { error: 'connection refused' });
    expect(transitions.length).toBe(1);
    await answer(A, { error: 'connection refused' });
    expect(transitions.length).toBe(2);
    expect(last(transitions, A)).toEqual({ service: 'svc', address: A, up: false, cause: '3 consecutive probes failed: connection refused', initial: false });
    await answer(A, { role: 'primary' });
    await answer(A, { role: 'primary' });
    expect(last(transitions, A)).toMatchObject({ up: true, cause: '2 consecutive probes passed: role primary' });

    // The wrong role: out on the first answer that says so.
    await answer(A, { role: 'replica' });
    expect(transitions.length).toBe(4);
    expect(last(transitions, A)).toEqual({ service: 'svc', address: A, up: false, cause: 'wrong role: saw replica, want primary', initial: false });
    expect(m.state('svc', A)).toMatchObject({ state: 'down', role: { reported: 'replica', eligible: false } });

    // Back after rise (2) right answers; a wrong one in between starts the count over.
    await answer(A, { role: 'primary' });
    await answer(A, { role: 'replica' });
    await answer(A, { role: 'primary' });
    expect(transitions.length).toBe(4);
    await answer(A, { role: 'primary' });
    expect(transitions.length).toBe(5);
    expect(last(transitions, A)).toMatchObject({ up: true, cause: '2 consecutive probes passed: role primary' });
    expect(m.state('svc', A)).toMatchObject({ state: 'up', role: { reported: 'primary', eligible: true } });
  });

  it('a reload that changes the role: down and pending at once, asked again at once, the old question\'s answer ignored', async () => {
    const { m, calls, transitions, probes, answer } = harness(config('primary', [A]));
    await answer(A, { role: 'primary' });
    expect(m.state('svc', A)).toMatchObject({ state: 'up', pending: false });
    // A probe of the old question is in flight when the reload comes.
    const deadline = Date.now() + 2000;
    while (!calls.some((c) => c.address === A)) {
      if (Date.now() > deadline) throw new Error('no second probe');
      await new Promise((r) => setTimeout(r, 5));
    }
    const old = calls.find((c) => c.address === A)!;
    expect(old.role).toBe('primary');
    m.update(config('replica', [A]));
    expect(m.state('svc', A)).toMatchObject({ state: 'down', pending: true });
    expect(old.aborted()).toBe(true);
    let round = false;
    void m.firstRound().then(() => (round = true));
    // The old probe's answer ("role primary": fine for the old setting) does not count.
    const seen = probes.length;
    old.resolve({ ...roleResult('primary', 'primary'), latency_ms: 1 });
    calls.splice(calls.indexOf(old), 1);
    await new Promise((r) => setTimeout(r, 20));
    expect(probes.length).toBe(seen);
    expect(transitions.length).toBe(1);
    await answer(A, { role: 'primary' }); // asked again, now with role: replica
    expect(last(transitions, A)).toEqual({ service: 'svc', address: A, up: false, cause: 'first probe: wrong role: saw primary, want replica', initial: true });
    await new Promise((r) => setImmediate(r));
    expect(round).toBe(true);
  });
});
