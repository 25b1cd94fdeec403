/**
 * Weighted least-connections with two workers: hundreds of long-lived connections spread by
 * weight 1:1:2. Addresses: 127.2.3.0/24.
 */
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FulcrumHandle } from '../../src/main.ts';
import { SC_ACCEPTED, serviceCounterIndex } from '../../src/shm/layout.ts';
import { connectClient, freePort, readLine, startNamedServer, waitFor, type TestServer } from '../helpers/net.ts';
import { activeCounts, startProxy } from './harness.ts';

const HOST = '127.2.3.1';
let backends: TestServer[] = [];
let proxy: FulcrumHandle;
let port = 0;
const clients: Socket[] = [];

beforeAll(async () => {
  backends = await Promise.all(['one', 'two', 'four'].map((n) => startNamedServer(n, HOST)));
  port = await freePort(HOST);
  proxy = await startProxy(`
workers: 2
logging: { level: silent, connections: false }
services:
  - name: lc
    listen: ${HOST}:${port}
    balance: leastconn
    backends:
      - { address: ${backends[0].address}, weight: 1 }
      - { address: ${backends[1].address}, weight: 1 }
      - { address: ${backends[2].address}, weight: 2 }
`);
});

afterAll(async () => {
  for (const c of clients) c.destroy();
  await proxy?.stop('test over');
  await Promise.all(backends.map((b) => b.close()));
});

describe('leastconn through the proxy', () => {
  it('spreads 400 long-lived connections 1:1:2 across two workers', async () => {
    expect(proxy.pool.size).toBe(2);
    const total = 400;
    const names: string[] = [];
    for (let batch = 0; batch < total / 20; batch++) {
      const got = await Promise.all(Array.from({ length: 20 }, async (_, i) => {
        const s = await connectClient(port, HOST, `127.2.3.${10 + ((batch * 20 + i) % 200)}`);
        clients.push(s);
        return readLine(s);
      }));
      names.push(...got);
    }
    const count = (n: string): number => names.filter((x) => x === n).length;
    const share = [count('one') / total, count('two') / total, count('four') / total];
    expect(share[0]).toBeGreaterThan(0.25 - 0.03);
    expect(share[0]).toBeLessThan(0.25 + 0.03);
    expect(share[1]).toBeGreaterThan(0.25 - 0.03);
    expect(share[1]).toBeLessThan(0.25 + 0.03);
    expect(share[2]).toBeGreaterThan(0.5 - 0.03);
    expect(share[2]).toBeLessThan(0.5 + 0.03);
    expect(backends.reduce((n, b) => n + b.sockets.size, 0)).toBe(total);
    // Both workers took connections (the kernel spread the accepts): each worker's own counter slot.
    const f64 = new Float64Array(proxy.memory.buffer);
    const perWorker = [0, 1].map((w) => f64[serviceCounterIndex(w, proxy.balancer.serviceIndex('lc'), SC_ACCEPTED)]);
    expect(perWorker[0] + perWorker[1]).toBe(total);
    expect(Math.min(...perWorker), JSON.stringify(perWorker)).toBeGreaterThan(total * 0.2);
    const live = activeCounts(proxy, 'lc', backends.map((b) => b.address));
    expect(live.active).toBe(total);
    expect(live.backends).toEqual([count('one'), count('two'), count('four')]);
    for (const c of clients.splice(0)) c.destroy();
    await waitFor(() => activeCounts(proxy, 'lc', backends.map((b) => b.address)).active === 0, 5000, 'all released');
    expect(activeCounts(proxy, 'lc', backends.map((b) => b.address)).backends).toEqual([0, 0, 0]);
  });
});
