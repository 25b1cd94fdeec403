/**
 * queue.when_down: while a service has no eligible backend, a new connection waits (bounded by
 * queue.max and when_down) instead of being closed, and goes to the backend that comes up — by
 * the admin API, by a health probe, or after its own connects failed. One that waits in vain is
 * closed no_backend at the bound, and counted as a wait for a backend. Addresses: 127.2.13.0/24.
 */
import type { Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.ts';
import type { FulcrumHandle } from '../../src/main.ts';
import { BC_CONNECT_FAILURES, SC_QUEUED, SC_QUEUED_NO_BACKEND } from '../../src/shm/layout.ts';
import { connectClient, freePort, readLine, startNamedServer, staysFalse, waitClose, waitFor, type TestServer } from '../helpers/net.ts';
import { activeCounts, backendCounter, reasons, serviceCounter, startProxy } from './harness.ts';

const HOST = '127.2.13.1';
const WHEN_DOWN = 2000;
let proxy: FulcrumHandle;
let x: TestServer; // 'gated' service's only backend, in maint at start
let y: TestServer; // 'failing' service's spare, in maint at start
let z: TestServer | null = null; // 'probed' service's backend, not started until the test does
let dead: TestServer | null; // 'failing' service's first backend: stopped by its test
let deadAddress = '';
let zPort = 0;
const ports = { gated: 0, probed: 0, failing: 0, off: 0, grown: 0 };
let open: Socket[] = [];

beforeAll(async () => {
  x = await startNamedServer('x', HOST);
  y = await startNamedServer('y', HOST);
  dead = await startNamedServer('dead', HOST);
  deadAddress = dead.address;
  zPort = await freePort(HOST);
  for (const k of Object.keys(ports) as (keyof typeof ports)[]) ports[k] = await freePort(HOST);
  proxy = await startProxy(yaml(''));
});

/** The test's config; `grown` lists its backends beyond the first (a reload adds one). */
function yaml(grown: string): string {
  return `
workers: 2
logging: { level: silent, connections: false }
services:
  - name: gated
    listen: ${HOST}:${ports.gated}
    queue: { max: 2, timeout: 10s, when_down: ${WHEN_DOWN}ms }
    backends:
      - { address: ${x.address}, state: maint }
  - name: probed
    listen: ${HOST}:${ports.probed}
    queue: { when_down: 10s }
    health: { type: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }
    backends:
      - address: ${HOST}:${zPort}
  - name: failing
    listen: ${HOST}:${ports.failing}
    retries: 2
    queue: { when_down: 10s }
    health: { type: tcp, interval: 300ms, timeout: 300ms, rise: 1, fall: 100, observe_failures: 1 }
    backends:
      - address: ${deadAddress}
      - { address: ${y.address}, state: maint }
  - name: off
    listen: ${HOST}:${ports.off}
    backends:
      - { address: ${x.address}, state: maint }
  - name: grown
    listen: ${HOST}:${ports.grown}
    queue: { when_down: 10s }
    backends:
      - { address: ${x.address}, state: maint }
${grown}`;
}

afterEach(() => {
  for (const s of open) s.destroy();
  open = [];
});

afterAll(async () => {
  await proxy?.stop('test over');
  await Promise.all([x, y, z, dead].map((b) => b?.close()));
});

async function client(port: number): Promise<Socket> {
  const s = await connectClient(port, HOST);
  s.on('error', () => {});
  open.push(s);
  return s;
}

const closed = (s: Socket): boolean => s.closed || s.readableEnded;

describe('queue.when_down', () => {
  it('off (the default): no backend closes the client at once', async () => {
    const c = await client(ports.off);
    await waitClose(c, 2000);
    await waitFor(() => reasons(proxy, 'off').no_backend === 1, 2000, 'no_backend counted');
    expect(serviceCounter(proxy, 'off', SC_QUEUED)).toBe(0);
  });

  it('a client waits while no backend is up, and is served by the one that comes up (admin API)', async () => {
    const c = await client(ports.gated);
    const line = readLine(c, 10_000);
    await waitFor(() => activeCounts(proxy, 'gated', [x.address]).queued === 1, 3000, 'one waiting');
    // Counted by the worker right after it joined the queue.
    await waitFor(() => serviceCounter(proxy, 'gated', SC_QUEUED_NO_BACKEND) === 1, 3000, 'counted as waiting for a backend');
    expect(serviceCounter(proxy, 'gated', SC_QUEUED)).toBe(1);
    await staysFalse(() => closed(c), 300, 'the waiting client was closed');
    proxy.balancer.setAdminState('gated', x.address, 'ready', 'test');
    expect(await line).toBe('x');
    expect(activeCounts(proxy, 'gated', [x.address])).toMatchObject({ active: 1, queued: 0 });
    expect(reasons(proxy, 'gated')).toMatchObject({ no_backend: 0, queue_timeout: 0, queue_full: 0 });
  });

  it('waits at most when_down, then closes no_backend; queue.max bounds the waiting', async () => {
    proxy.balancer.setAdminState('gated', x.address, 'maint', 'test');
    const a = await client(ports.gated);
    const b = await client(ports.gated);
    await waitFor(() => activeCounts(proxy, 'gated', [x.address]).queued === 2, 3000, 'two waiting');
    const t0 = performance.now();
    // queue.max: 2 already wait, the third is closed at once.
    const c = await client(ports.gated);
    await waitClose(c, 2000);
    await waitFor(() => reasons(proxy, 'gated').queue_full === 1, 2000, 'queue_full counted');
    expect(closed(a) || closed(b)).toBe(false);
    await Promise.all([waitClose(a, WHEN_DOWN + 3000), waitClose(b, WHEN_DOWN + 3000)]);
    // Closed at the bound (measured from after they queued, so a little under it at most), not before.
    expect(performance.now() - t0).toBeGreaterThanOrEqual(WHEN_DOWN - 300);
    await waitFor(() => reasons(proxy, 'gated').no_backend === 2, 2000, 'no_backend counted');
    expect(reasons(proxy, 'gated').queue_timeout).toBe(0);
    expect(serviceCounter(proxy, 'gated', SC_QUEUED_NO_BACKEND)).toBe(3);
    expect(activeCounts(proxy, 'gated', [x.address]).queued).toBe(0);
  });

  it('a backend a health probe sees come up takes the waiting client', async () => {
    await waitFor(() => proxy.health.state('probed', `${HOST}:${zPort}`)?.state === 'down', 3000, 'the probed backend down');
    const c = await client(ports.probed);
    const line = readLine(c, 10_000);
    await waitFor(() => activeCounts(proxy, 'probed', [`${HOST}:${zPort}`]).queued === 1, 3000, 'one waiting');
    z = await startNamedServer('z', HOST, zPort);
    expect(await line).toBe('z');
    expect(reasons(proxy, 'probed')).toMatchObject({ no_backend: 0, connect_failed: 0 });
  });

  it('a client whose connects all failed waits for a backend instead of closing', async () => {
    // Up (a first probe that failed on a loaded machine is followed by one that passes) …
    await waitFor(() => proxy.health.state('failing', deadAddress)?.state === 'up', 3000, 'the first backend up');
    // … then gone: its probes (fall: 100) still say up for the test's length; the data plane finds out.
    await dead!.close();
    dead = null;
    const c = await client(ports.failing);
    const line = readLine(c, 10_000);
    // The failed connect marks it down (observe_failures: 1); the client waits, for nothing is up.
    await waitFor(() => proxy.health.state('failing', deadAddress)?.state === 'down', 3000, 'passive health marked it down');
    await waitFor(() => activeCounts(proxy, 'failing', [deadAddress, y.address]).queued === 1, 3000, 'the client waiting');
    expect(closed(c)).toBe(false);
    // It waits after its connect failed (not because it found the backend down already).
    expect(backendCounter(proxy, 'failing', deadAddress, BC_CONNECT_FAILURES)).toBe(1);
    proxy.balancer.setAdminState('failing', y.address, 'ready', 'test');
    expect(await line).toBe('y');
    expect(reasons(proxy, 'failing')).toMatchObject({ connect_failed: 0, no_backend: 0 });
    expect(serviceCounter(proxy, 'failing', SC_QUEUED_NO_BACKEND)).toBe(1);
  });

  it('a backend a reload adds takes the waiting client (woken by the rebuild, before the worker has its address)', async () => {
    const c = await client(ports.grown);
    const line = readLine(c, 10_000);
    await waitFor(() => activeCounts(proxy, 'grown', [x.address]).queued === 1, 3000, 'one waiting');
    expect(await proxy.reload(parseConfig(yaml(`      - address: ${y.address}`), '<test>'))).toEqual([]);
    expect(await line).toBe('y');
    expect(reasons(proxy, 'grown')).toMatchObject({ connect_failed: 0, no_backend: 0 });
  });
});
