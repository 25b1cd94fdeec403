/**
 * Service limits and the queue: connection N+1 waits and gets a backend when one closes; a
 * short queue.timeout closes it at the timeout; a full queue closes at once; a client that
 * leaves the queue leaks nothing. Addresses: 127.2.4.0/24.
 */
import type { Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { FulcrumHandle } from '../../src/main.ts';
import { SC_QUEUED, SC_QUEUE_TIMEOUTS } from '../../src/shm/layout.ts';
import { connectClient, freePort, readLine, startNamedServer, staysFalse, waitClose, waitFor, type TestServer } from '../helpers/net.ts';
import { activeCounts, reasons, serviceCounter, startProxy } from './harness.ts';

const HOST = '127.2.4.1';
let backends: TestServer[] = [];
let proxy: FulcrumHandle;
const ports = { waits: 0, short: 0, full: 0 };
let open: Socket[] = [];

beforeAll(async () => {
  backends = await Promise.all(['x', 'y'].map((n) => startNamedServer(n, HOST)));
  ports.waits = await freePort(HOST);
  ports.short = await freePort(HOST);
  ports.full = await freePort(HOST);
  const list = backends.map((b) => `      - address: ${b.address}`).join('\n');
  proxy = await startProxy(`
workers: 2
logging: { level: silent, connections: false }
services:
  - name: waits
    listen: ${HOST}:${ports.waits}
    max_connections: 2
    queue: { max: 10, timeout: 10s }
    backends:
${list}
  - name: short
    listen: ${HOST}:${ports.short}
    max_connections: 1
    queue: { max: 10, timeout: 300ms }
    backends:
${list}
  - name: full
    listen: ${HOST}:${ports.full}
    max_connections: 1
    queue: { max: 1, timeout: 10s }
    backends:
${list}
`);
});

afterEach(() => {
  for (const s of open) s.destroy();
  open = [];
});

afterAll(async () => {
  await proxy?.stop('test over');
  await Promise.all(backends.map((b) => b.close()));
});

async function client(port: number): Promise<Socket> {
  const s = await connectClient(port, HOST);
  open.push(s);
  return s;
}

const addresses = (): string[] => backends.map((b) => b.address);

describe('limits and queue', () => {
  it('connection N+1 waits in the queue and gets a backend when one closes', async () => {
    const a = await client(ports.waits);
    const b = await client(ports.waits);
    await readLine(a);
    await readLine(b);
    const c = await client(ports.waits);
    const greeting = readLine(c, 8000);
    let greeted = false;
    void greeting.then(() => (greeted = true), () => {});
    await waitFor(() => activeCounts(proxy, 'waits', addresses()).queued === 1, 3000, 'one queued');
    // A bounded look in real time (the queue is the workers', whose clock the test does not hold):
    // a client wrongly served would be greeted within a millisecond or two, not 300.
    await staysFalse(() => greeted, 300, 'the queued client was greeted');
    expect(activeCounts(proxy, 'waits', addresses()).active).toBe(2);
    const t0 = Date.now();
    a.destroy();
    expect(['x', 'y']).toContain(await greeting);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(activeCounts(proxy, 'waits', addresses()).queued).toBe(0);
    expect(serviceCounter(proxy, 'waits', SC_QUEUED)).toBe(1);
    b.destroy();
    c.destroy();
    await waitFor(() => activeCounts(proxy, 'waits', addresses()).active === 0, 3000, 'all released');
  });

  it('closes a queued connection at queue.timeout', async () => {
    const a = await client(ports.short);
    await readLine(a);
    const c = await client(ports.short);
    const t0 = Date.now();
    await waitClose(c, 3000);
    const waited = Date.now() - t0;
    expect(waited).toBeGreaterThanOrEqual(250);
    expect(waited).toBeLessThan(2000);
    expect(serviceCounter(proxy, 'short', SC_QUEUE_TIMEOUTS)).toBe(1);
    await waitFor(() => reasons(proxy, 'short').queue_timeout === 1, 2000, 'queue_timeout counted');
    expect(activeCounts(proxy, 'short', addresses())).toMatchObject({ active: 1, queued: 0 });
  });

  it('closes at once when queue.max is reached', async () => {
    const a = await client(ports.full);
    await readLine(a);
    const queued = await client(ports.full);
    await waitFor(() => activeCounts(proxy, 'full', addresses()).queued === 1, 3000, 'one queued');
    const extra = await client(ports.full);
    const t0 = Date.now();
    await waitClose(extra, 3000);
    expect(Date.now() - t0).toBeLessThan(500);
    expect(activeCounts(proxy, 'full', addresses()).queued).toBe(1);
    expect(queued.closed).toBe(false);
    await waitFor(() => reasons(proxy, 'full').queue_full === 1, 2000, 'refusal counted as queue_full');
    expect(reasons(proxy, 'full').queue_timeout).toBe(0);
    expect(serviceCounter(proxy, 'full', SC_QUEUE_TIMEOUTS)).toBe(0);
  });

  it('a client that leaves the queue leaks nothing', async () => {
    // The 'full' service still has one active and one queued from the previous test (closed by afterEach).
    await waitFor(() => activeCounts(proxy, 'full', addresses()).active === 0, 3000, 'previous released');
    const a = await client(ports.full);
    await readLine(a);
    const q = await client(ports.full);
    await waitFor(() => activeCounts(proxy, 'full', addresses()).queued === 1, 3000, 'one queued');
    q.destroy();
    await waitFor(() => activeCounts(proxy, 'full', addresses()).queued === 0, 3000, 'queue empty');
    a.destroy();
    await waitFor(() => activeCounts(proxy, 'full', addresses()).active === 0, 3000, 'active back to 0');
    expect(activeCounts(proxy, 'full', addresses()).backends).toEqual([0, 0]);
  });
});
