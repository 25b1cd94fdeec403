/**
 * Maglev through the proxy: each client address always reaches the same backend, and the
 * addresses spread over all backends. Addresses: 127.2.2.0/24.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FulcrumHandle } from '../../src/main.ts';
import { connectClient, freePort, readLine, startNamedServer, type TestServer } from '../helpers/net.ts';
import { startProxy } from './harness.ts';

const HOST = '127.2.2.1';
let backends: TestServer[] = [];
let proxy: FulcrumHandle;
let port = 0;

beforeAll(async () => {
  backends = await Promise.all(['a', 'b', 'c'].map((n) => startNamedServer(n, HOST)));
  port = await freePort(HOST);
  proxy = await startProxy(`
workers: 2
logging: { level: silent, connections: false }
services:
  - name: sticky
    listen: ${HOST}:${port}
    balance: maglev
    table_size: 65537
    backends:
${backends.map((b) => `      - address: ${b.address}`).join('\n')}
`);
});

afterAll(async () => {
  await proxy?.stop('test over');
  await Promise.all(backends.map((b) => b.close()));
});

async function whoServes(localAddress: string): Promise<string> {
  const s = await connectClient(port, HOST, localAddress);
  try {
    return await readLine(s);
  } finally {
    s.destroy();
  }
}

describe('maglev through the proxy', () => {
  it('sends each client address to the same backend every time, spread over all backends', async () => {
    const addresses = Array.from({ length: 60 }, (_, i) => `127.2.2.${10 + i}`);
    const owner = new Map<string, string>();
    for (let round = 0; round < 5; round++) {
      const got = await Promise.all(addresses.map((a) => whoServes(a)));
      got.forEach((name, i) => {
        const a = addresses[i];
        if (round === 0) owner.set(a, name);
        else expect(name, `client ${a} in round ${round}`).toBe(owner.get(a));
      });
    }
    const counts = { a: 0, b: 0, c: 0 } as Record<string, number>;
    for (const n of owner.values()) counts[n]++;
    // 60 keys over 3 equal backends: each should own a fair share (20 expected; 8 is far outside chance).
    for (const n of ['a', 'b', 'c']) expect(counts[n], JSON.stringify(counts)).toBeGreaterThanOrEqual(8);
  });
});
