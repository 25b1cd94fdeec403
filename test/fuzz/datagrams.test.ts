/**
 * Fuzzing a UDP service's datagram handling (src/proxy/transport-udp.ts) over real sockets:
 * datagrams from the corpus (game-server queries, a DNS query, one that looks like a PROXY v2
 * header), mutated, spliced or random — empty and up to 4 KiB — sent from many client sockets to
 * a running fulcrum with send_proxy v2. Whatever arrives, the worker keeps running: afterwards a
 * well-formed datagram from a new client is relayed and answered, and the PROXY v2 header fulcrum
 * put before each datagram (parsed by a backend written from the spec) names the real client.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FulcrumHandle } from '../../src/main.ts';
import { freePort } from '../helpers/net.ts';
import { startUdpBackend, UdpClient, type UdpBackend } from '../helpers/udp.ts';
import { startProxy } from '../proxy/harness.ts';
import { corpus, FUZZ_RUNS, inputs, rounds } from './fuzz.ts';

const HOST = '127.5.96.1';
let backend: UdpBackend;
let proxy: FulcrumHandle;
let port: number;
const clients: UdpClient[] = [];

describe('fuzz: datagrams to a UDP service', () => {
  beforeAll(async () => {
    backend = await startUdpBackend('b', '127.5.96.2');
    port = await freePort(HOST);
    proxy = await startProxy(`
workers: 2
logging: { level: silent, connections: false }
services:
  - name: game
    protocol: udp
    listen: ${HOST}:${port}
    send_proxy: v2
    udp: { max_datagram: 2048 }
    backends: [ { address: ${backend.address} } ]
`);
    for (let i = 0; i < 8; i++) clients.push(await UdpClient.open(`127.5.97.${i + 1}`));
  });
  afterAll(async () => {
    for (const c of clients) await c.close();
    await proxy?.stop('test done');
    await backend?.close();
  });

  it('any datagram: the service keeps relaying, every header fulcrum wrote is well-formed', async () => {
    const seeds = corpus('datagram');
    let sent = 0;
    await fc.assert(fc.asyncProperty(inputs(seeds, 4096), fc.nat(clients.length - 1), async (d, who) => {
      clients[who].send(d, port, HOST);
      sent++;
      // Now and then, a pause for the datagrams in flight (a real client's pace).
      if (sent % 50 === 0) await new Promise((r) => setImmediate(r));
    }), rounds(Math.ceil(FUZZ_RUNS / 4)));
    // The worker still relays: a fresh client's datagram is answered through it.
    const fresh = await UdpClient.open('127.5.98.1');
    try {
      expect(await fresh.ask('still there?', port, HOST, 5000)).toBe('b|still there?');
    } finally {
      await fresh.close();
    }
    expect(backend.received).toBeGreaterThan(0);
    // The backend parsed a header (written from the spec, test/helpers/udp.ts) from each sender.
    expect(backend.headers.size).toBeGreaterThan(0);
    for (const h of backend.headers.values()) {
      expect(h.family).toBe(0x12); // UDP over IPv4
      expect(h.src).toMatch(/^127\.5\.9[78]\.\d+$/);
    }
  });
});
