/**
 * Connect failures: a dead backend costs a retry, not a failed client; with every backend dead
 * the client is closed at once; with none up, no_backend; a backend marked down with
 * on_marked_down: shutdown_sessions has its sessions closed. Addresses: 127.2.5.0/24.
 */
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FulcrumHandle } from '../../src/main.ts';
import { BC_CONNECT_FAILURES, BC_KILLED, SC_RETRIES } from '../../src/shm/layout.ts';
import { connectClient, freePort, readLine, startEchoServer, startNamedServer, waitClose, waitFor, type TestServer } from '../helpers/net.ts';
import { activeCounts, backendCounter, reasons, serviceCounter, startProxy } from './harness.ts';

const HOST = '127.2.5.1';
let live: TestServer;
let echo: TestServer;
let proxy: FulcrumHandle;
const ports = { mixed: 0, dead: 0, kill: 0, early: 0 };
let dead1 = '';
let dead2 = '';
const failures: Array<{ service: string; address: string; error: string }> = [];

beforeAll(async () => {
  live = await startNamedServer('live', HOST);
  echo = await startEchoServer('127.2.5.2');
  // Addresses where nothing listens: connects are refused at once. Privileged ports, so no
  // freePort() below (an ephemeral port, maybe one just freed) can ever be the same port.
  dead1 = `${HOST}:1`;
  dead2 = `${HOST}:2`;
  ports.mixed = await freePort(HOST);
  ports.dead = await freePort(HOST);
  ports.kill = await freePort(HOST);
  ports.early = await freePort(HOST);
  proxy = await startProxy(`
workers: 2
logging: { level: silent, connections: false }
services:
  - name: mixed
    listen: ${HOST}:${ports.mixed}
    balance: roundrobin
    retries: 2
    backends:
      - address: ${dead1}
      - address: ${live.address}
      - address: ${dead2}
  - name: dead
    listen: ${HOST}:${ports.dead}
    retries: 2
    backends:
      - address: ${dead1}
      - address: ${dead2}
  - name: kill
    listen: ${HOST}:${ports.kill}
    on_marked_down: shutdown_sessions
    backends:
      - address: ${live.address}
  - name: early
    listen: ${HOST}:${ports.early}
    balance: roundrobin
    retries: 2
    max_connections: 1
    queue: { max: 20, timeout: 10s }
    backends:
      - address: ${dead1}
      - address: ${echo.address}
      - address: ${dead2}
`);
  proxy.events.on('connect-failed', (ev) => failures.push(ev));
});

afterAll(async () => {
  await proxy?.stop('test over');
  await live.close();
  await echo.close();
});

describe('connect failures', () => {
  it('a dead backend costs a retry, not a failed client', async () => {
    for (let i = 0; i < 20; i++) {
      const s = await connectClient(ports.mixed, HOST);
      expect(await readLine(s)).toBe('live');
      s.destroy();
    }
    expect(serviceCounter(proxy, 'mixed', SC_RETRIES)).toBeGreaterThan(0);
    expect(backendCounter(proxy, 'mixed', dead1, BC_CONNECT_FAILURES) + backendCounter(proxy, 'mixed', dead2, BC_CONNECT_FAILURES)).toBe(serviceCounter(proxy, 'mixed', SC_RETRIES));
    await waitFor(() => reasons(proxy, 'mixed').client_closed === 20, 3000, '20 closed by their clients');
    expect(reasons(proxy, 'mixed').connect_failed).toBe(0);
    // Passive health reached the control plane.
    await waitFor(() => failures.some((f) => f.service === 'mixed' && f.error === 'ECONNREFUSED'), 2000, 'connect-failed event');
  });

  it('connections retrying at the same time each avoid every backend they already tried', async () => {
    // 2 of 3 backends dead and retries: 2, so a client is served only if its second retry skips
    // BOTH dead backends — while other connections' acquires interleave with its attempts.
    const before = reasons(proxy, 'mixed');
    const clients = await Promise.all(Array.from({ length: 60 }, () => connectClient(ports.mixed, HOST)));
    const lines = await Promise.all(clients.map((s) => readLine(s).catch(() => 'closed')));
    for (const s of clients) s.destroy();
    expect(lines.filter((l) => l !== 'live')).toEqual([]);
    await waitFor(() => reasons(proxy, 'mixed').client_closed === before.client_closed + 60, 3000, '60 closed by their clients');
    expect(reasons(proxy, 'mixed').connect_failed).toBe(before.connect_failed);
  });

  it('a request the client sent before its backend connection reaches the backend a retry found, whole and once', async () => {
    // One connection holds the only slot; ten more wait in the queue, each having sent its request,
    // so their requests are there when their connects start — two of three of them refused.
    const holder = await connectClient(ports.early, HOST);
    holder.write('hold\n');
    expect(await readLine(holder)).toBe('hold');
    const waiting: Socket[] = [];
    for (let i = 0; i < 10; i++) {
      const c = await connectClient(ports.early, HOST);
      await new Promise<void>((resolve, reject) => c.write(`request ${i} ${'x'.repeat(i * 100)}\n`, (err) => (err ? reject(err) : resolve())));
      waiting.push(c);
    }
    await waitFor(() => activeCounts(proxy, 'early', [dead1, echo.address, dead2]).queued === 10, 5000, 'ten queued');
    holder.destroy();
    // Each as its echo comes (two workers: the queue is each worker's, so the order across them is not the clients').
    await Promise.all(waiting.map(async (c, i) => {
      const request = `request ${i} ${'x'.repeat(i * 100)}\n`;
      let got = '';
      c.setEncoding('utf8').on('data', (d: string) => { got += d; });
      await waitFor(() => got.length >= request.length, 10_000, `the echo of request ${i}`);
      // Then the end (a FIN while still queued would drop it from the queue): nothing more comes.
      c.end();
      await waitClose(c, 5000);
      expect(got).toBe(request);
    }));
    expect(serviceCounter(proxy, 'early', SC_RETRIES)).toBeGreaterThan(0);
    expect(reasons(proxy, 'early').connect_failed).toBe(0);
  });

  it('every backend dead: the client is closed at once, reason connect_failed', async () => {
    const s = await connectClient(ports.dead, HOST);
    const t0 = Date.now();
    await waitClose(s, 3000);
    expect(Date.now() - t0).toBeLessThan(1000);
    s.destroy();
    await waitFor(() => reasons(proxy, 'dead').connect_failed === 1, 2000, "connect_failed counted");
    expect(serviceCounter(proxy, 'dead', SC_RETRIES)).toBe(1); // two backends: one try, one retry
    expect(activeCounts(proxy, 'dead', [dead1, dead2])).toEqual({ active: 0, queued: 0, backends: [0, 0] });
  });

  it('nothing up: the client is closed at once, reason no_backend', async () => {
    proxy.balancer.setHealth('dead', dead1, false, 'test');
    proxy.balancer.setHealth('dead', dead2, false, 'test');
    const s = await connectClient(ports.dead, HOST);
    await waitClose(s, 3000);
    s.destroy();
    await waitFor(() => reasons(proxy, 'dead').no_backend === 1, 2000, 'no_backend counted');
  });

  it('on_marked_down: shutdown_sessions closes the open sessions of a backend marked down', async () => {
    const clients: Socket[] = [];
    for (let i = 0; i < 4; i++) {
      const s = await connectClient(ports.kill, HOST);
      expect(await readLine(s)).toBe('live');
      clients.push(s);
    }
    proxy.balancer.setHealth('kill', live.address, false, 'test');
    await Promise.all(clients.map((c) => waitClose(c, 3000)));
    for (const c of clients) c.destroy();
    await waitFor(() => reasons(proxy, 'kill').backend_down === 4, 3000, 'backend_down counted');
    expect(backendCounter(proxy, 'kill', live.address, BC_KILLED)).toBe(4);
    expect(activeCounts(proxy, 'kill', [live.address])).toEqual({ active: 0, queued: 0, backends: [0] });
  });
});
