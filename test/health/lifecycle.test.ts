/**
 * The backend lifecycle through a real fulcrum (workers, shared memory, engine) on 127.3.6.x:
 * passive health on a backend killed mid-traffic, slow start, drain, maint, backup, and clients
 * closed at once with the reason recorded when nothing is up.
 */
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FulcrumHandle } from '../../src/main.ts';
import { connectClient, freePort, readLine, startNamedServer, staysFalse, waitClose, waitFor, type TestServer } from '../helpers/net.ts';
import { BC_CONNECT_FAILURES } from '../../src/shm/layout.ts';
import { backendCounter, reasons, startProxy } from '../proxy/harness.ts';

const L = '127.3.6.10';
let fulcrum: FulcrumHandle;
const servers = new Map<string, TestServer>();
const ports: Record<string, number> = {};
const addr = (name: string) => `127.3.6.${name.charCodeAt(0) - 96}:${ports[name]}`; // a → .1, b → .2 …
const hostOf = (name: string) => `127.3.6.${name.charCodeAt(0) - 96}`;

async function up(name: string): Promise<TestServer> {
  const s = await startNamedServer(name, hostOf(name), ports[name] ?? 0);
  ports[name] = s.port;
  servers.set(name, s);
  return s;
}
async function down(name: string): Promise<void> {
  await servers.get(name)?.close();
  servers.delete(name);
}

/** One client through fulcrum: the name of the backend that greeted it. */
async function who(service: string): Promise<string> {
  const c = await connectClient(ports[`listen:${service}`], L);
  try {
    return await readLine(c, 2000);
  } finally {
    c.destroy();
  }
}

async function tally(service: string, n: number): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const name = await who(service);
    out[name] = (out[name] ?? 0) + 1;
  }
  return out;
}

const backendOf = (service: string, name: string) =>
  fulcrum.balancer.describe().find((s) => s.name === service)!.backends.find((b) => b.address === addr(name))!;

beforeAll(async () => {
  for (const n of ['a', 'b', 'c', 'd', 'e', 'f', 'g']) await up(n);
  for (const s of ['passive', 'life', 'backup', 'none']) ports[`listen:${s}`] = await freePort(L);
  fulcrum = await startProxy(`
workers: 2
logging: { level: warn }
services:
  - name: passive
    listen: ${L}:${ports['listen:passive']}
    balance: roundrobin
    retries: 2
    health: { type: tcp, interval: 1s, timeout: 900ms, rise: 1, fall: 3, observe_failures: 1 }
    backends:
      - address: ${addr('a')}
      - address: ${addr('b')}
  - name: life
    listen: ${L}:${ports['listen:life']}
    balance: roundrobin
    slow_start: 1600ms
    health: { type: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }
    backends:
      - address: ${addr('c')}
      - address: ${addr('d')}
  - name: backup
    listen: ${L}:${ports['listen:backup']}
    balance: roundrobin
    health: { type: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }
    backends:
      - address: ${addr('e')}
      - address: ${addr('f')}
        backup: true
  - name: none
    listen: ${L}:${ports['listen:none']}
    health: { type: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }
    backends:
      - address: ${addr('g')}
`);
  // Every backend decided by its first probe.
  await waitFor(() => fulcrum.health.describe().every((b) => !b.pending), 3000, 'first probes');
});

afterAll(async () => {
  await fulcrum?.stop('test done');
  for (const s of servers.values()) await s.close();
});

describe('passive health', () => {
  it('a backend killed mid-traffic is marked down after one failed connect; no client fails', async () => {
    const transitions: Array<{ service: string; address: string; up: boolean; cause: string }> = [];
    fulcrum.events.on('health-transition', (t) => transitions.push(t));
    const seen: string[] = [];
    for (let i = 0; i < 60; i++) {
      if (i === 20) await down('a'); // killed: connects to it are refused from now on
      seen.push(await who('passive')); // throws (fails the test) if any client fails
    }
    expect(seen.slice(0, 20)).toContain('a');
    expect(seen.slice(30)).toEqual(Array(30).fill('b'));
    const t = transitions.filter((x) => x.service === 'passive');
    expect(t).toEqual([{ service: 'passive', address: addr('a'), up: false, cause: 'passive: 1 consecutive connect failure in the data plane', initial: false }]);
    expect(backendOf('passive', 'a').state).toBe('down');
    // One failed connect per worker at most (each may try it before the mark reaches it), then none:
    // and every one of them was retried on b, so no session ended as a connect failure.
    expect(backendCounter(fulcrum, 'passive', addr('a'), BC_CONNECT_FAILURES)).toBeGreaterThanOrEqual(1);
    expect(backendCounter(fulcrum, 'passive', addr('a'), BC_CONNECT_FAILURES)).toBeLessThanOrEqual(2);
    expect(reasons(fulcrum, 'passive').connect_failed).toBe(0);
    // Probes (interval 1s, rise 1) bring it back once the server returns.
    await up('a');
    await waitFor(() => backendOf('passive', 'a').state === 'up', 2500, 'a back up by probe');
    expect(transitions.filter((x) => x.service === 'passive').at(-1)).toMatchObject({ up: true, cause: '1 consecutive probe passed: connected' });
  });
});

describe('slow start', () => {
  it('a recovered backend takes a small share first, then its full share', async () => {
    await down('c');
    await waitFor(() => backendOf('life', 'c').state === 'down', 2000, 'c down');
    await up('c');
    await waitFor(() => backendOf('life', 'c').state === 'up', 2000, 'c up');
    const ramping = backendOf('life', 'c');
    expect(ramping.effective_weight).toBeLessThan(ramping.weight);
    const early = await tally('life', 40);
    expect(early.c ?? 0).toBeLessThan(12); // ≤ ~30 % while it ramps (equal weights would give 20)
    await waitFor(() => backendOf('life', 'c').effective_weight === backendOf('life', 'c').weight, 4000, 'ramp done');
    const late = await tally('life', 40);
    expect(late.c).toBeGreaterThanOrEqual(16);
    expect(late.c).toBeLessThanOrEqual(24);
  });
});

describe('drain and maint', () => {
  it('drain: no new connections, open ones continue', async () => {
    const held: Socket[] = [];
    for (let i = 0; i < 4; i++) {
      const c = await connectClient(ports['listen:life'], L);
      const name = await readLine(c);
      if (name === 'c') held.push(c);
      else c.destroy();
    }
    expect(held.length).toBeGreaterThan(0);
    fulcrum.balancer.setAdminState('life', addr('c'), 'drain', 'test');
    const t = await tally('life', 20);
    expect(t).toEqual({ d: 20 });
    // The held session still works (the named server echoes).
    const s = held[0];
    const echoed = new Promise<string>((resolve) => s.once('data', (d) => resolve(d.toString())));
    s.write('still here\n');
    expect(await echoed).toBe('still here\n');
    for (const h of held) h.destroy();
    fulcrum.balancer.setAdminState('life', addr('c'), 'ready', 'test');
  });

  it('maint: no new connections and no probes; back to ready decides by a probe at once', async () => {
    fulcrum.balancer.setAdminState('life', addr('c'), 'maint', 'test');
    expect(fulcrum.health.state('life', addr('c'))).toMatchObject({ maint: true });
    const t = await tally('life', 20);
    expect(t).toEqual({ d: 20 });
    // A probe already under way may still have reached the server: wait until its connection is
    // gone, then count. (The exact rule, no probe in maint, is checked on a test clock in
    // monitor.test.ts; this is the whole process, on the real clock: a bounded look.)
    await waitFor(() => servers.get('c')!.sockets.size === 0, 2000, 'no connection open on c');
    const before = servers.get('c')!.accepted;
    await staysFalse(() => servers.get('c')!.accepted !== before, 400, 'c was connected to in maint (four probe intervals)');
    fulcrum.balancer.setAdminState('life', addr('c'), 'ready', 'test');
    await waitFor(() => fulcrum.health.state('life', addr('c'))!.pending === false && servers.get('c')!.accepted > before, 1000, 'probed after maint');
  });
});

describe('backup', () => {
  it('serves only while no primary backend is up', async () => {
    expect(await tally('backup', 10)).toEqual({ e: 10 });
    await down('e');
    await waitFor(() => backendOf('backup', 'e').state === 'down', 2000, 'e down');
    expect(await tally('backup', 10)).toEqual({ f: 10 });
    await up('e');
    await waitFor(() => backendOf('backup', 'e').state === 'up', 2000, 'e up');
    expect(await tally('backup', 10)).toEqual({ e: 10 });
  });
});

describe('nothing up', () => {
  it('clients are closed at once, and the reason is recorded', async () => {
    await down('g');
    await waitFor(() => backendOf('none', 'g').state === 'down', 2000, 'g down');
    const before = reasons(fulcrum, 'none').no_backend;
    const started = Date.now();
    const c = await connectClient(ports['listen:none'], L);
    let got = '';
    c.on('data', (d) => (got += d));
    await waitClose(c, 1000);
    expect(Date.now() - started).toBeLessThan(1000);
    expect(got).toBe('');
    await waitFor(() => reasons(fulcrum, 'none').no_backend === before + 1, 1000, 'no_backend counted');
  });
});

describe('reload', () => {
  it('a backend added by a reload is probed and decided; a removed one stops being probed', async () => {
    const h = await up('h');
    const next = structuredClone(fulcrum.config);
    const svc = next.services.find((x) => x.name === 'none')!;
    svc.backends.push({ ...svc.backends[0], address: { host: hostOf('h'), port: h.port } });
    await fulcrum.reload(next);
    await waitFor(() => fulcrum.health.state('none', addr('h'))?.pending === false, 2000, 'h decided');
    expect(fulcrum.health.state('none', addr('h'))).toMatchObject({ state: 'up' });
    expect(await who('none')).toBe('h');
    const back = structuredClone(fulcrum.config);
    back.services.find((x) => x.name === 'none')!.backends.pop();
    await fulcrum.reload(back);
    expect(fulcrum.health.state('none', addr('h'))).toBeUndefined();
    await waitFor(() => h.sockets.size === 0, 2000, 'no connection open on h');
    const accepted = h.accepted;
    await staysFalse(() => h.accepted !== accepted, 300, 'h was probed after its removal (three probe intervals)');
  });
});
