/**
 * Bytes through the proxy: many clients pushing megabytes both ways arrive intact (sha256),
 * half-close works in both directions, backpressure holds both ways, a reset on either side
 * closes the other and gives the slots back, and a backend named by host name is reached.
 * Addresses: 127.2.1.0/24 (and 127.0.0.1 for the host-name backend, `localhost`).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FulcrumHandle } from '../../src/main.ts';
import { SC_ACCEPTED, SC_BYTES_IN, SC_BYTES_OUT } from '../../src/shm/layout.ts';
import {
  connectClient, freePort, randomData, readAll, sha256, startEchoServer, startServer, waitClose, waitFor, type TestServer,
} from '../helpers/net.ts';
import { reasons, serviceCounter, startProxy, activeCounts } from './harness.ts';

const HOST = '127.2.1.1';
let backends: TestServer[] = [];
let proxy: FulcrumHandle;
let echoPort = 0;
let halfPort = 0;
let ports = { slow: 0, reset: 0, named: 0, storm: 0, burst: 0 };
// What the `burst` backend sends on each connection, with its FIN right behind.
const BURST = randomData(3 * 1024 * 1024);

beforeAll(async () => {
  backends = await Promise.all([startEchoServer(HOST), startEchoServer(HOST), startEchoServer(HOST)]);
  // A backend that reads everything, answers with its digest, then ends: the client half-closes first.
  const digester = await startServer((s) => {
    const chunks: Buffer[] = [];
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('end', () => s.end(sha256(Buffer.concat(chunks))));
  }, HOST);
  // A backend that greets, ends its side at once, then collects what the client still sends.
  const early = await startServer((s) => {
    const chunks: Buffer[] = [];
    s.end('bye early\n');
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('end', () => early.server.emit('received', sha256(Buffer.concat(chunks))));
  }, HOST);
  // A backend that reads nothing for its first 400 ms, then digests like `digester`.
  const slow = await startServer((s) => {
    const chunks: Buffer[] = [];
    s.pause();
    setTimeout(() => s.resume(), 400);
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('end', () => s.end(sha256(Buffer.concat(chunks))));
  }, HOST);
  // A backend that resets the connection as soon as the client's first bytes arrive.
  const resetter = await startServer((s) => {
    s.once('data', () => s.resetAndDestroy());
  }, HOST);
  // An echo backend that fulcrum reaches as localhost:PORT (a name to look up).
  const named = await startEchoServer('127.0.0.1');
  // A backend that sends BURST and its FIN at once, and says when the kernel has taken both.
  const burst = await startServer((s) => {
    s.end(BURST, () => burst.server.emit('written'));
  }, HOST);
  backends.push(digester, early, slow, resetter, named, burst);
  echoPort = await freePort(HOST);
  halfPort = await freePort(HOST);
  const earlyPort = await freePort(HOST);
  ports = { slow: await freePort(HOST), reset: await freePort(HOST), named: await freePort(HOST), storm: await freePort(HOST), burst: await freePort(HOST) };
  proxy = await startProxy(`
workers: 2
logging: { level: silent, connections: false }
services:
  - name: echo
    listen: ${HOST}:${echoPort}
    balance: roundrobin
    backends:
${backends.slice(0, 3).map((b) => `      - address: ${b.address}`).join('\n')}
  - name: digest
    listen: ${HOST}:${halfPort}
    backends: [{ address: ${digester.address} }]
  - name: early
    listen: ${HOST}:${earlyPort}
    backends: [{ address: ${early.address} }]
  - name: slow
    listen: ${HOST}:${ports.slow}
    backends: [{ address: ${slow.address} }]
  - name: reset
    listen: ${HOST}:${ports.reset}
    backends: [{ address: ${resetter.address} }]
  - name: named
    listen: ${HOST}:${ports.named}
    backends: [{ address: 'localhost:${named.port}' }]
  - name: burst
    listen: ${HOST}:${ports.burst}
    backends: [{ address: ${burst.address} }]
  - name: storm
    listen: ${HOST}:${ports.storm}
    balance: roundrobin
    retries: 2
    backends: [{ address: '${HOST}:1' }, { address: ${backends[0].address} }]
`);
  (globalThis as Record<string, unknown>).__earlyPort = earlyPort;
});

afterAll(async () => {
  await proxy?.stop('test over');
  await Promise.all(backends.map((b) => b.close()));
});

describe('splice', () => {
  it('runs on the data path its test project names (FULCRUM_RELAY=off: Node\'s handles; else the relay)', () => {
    expect(proxy.pool.dataPath).toBe(process.env.FULCRUM_RELAY === 'off' ? 'javascript' : 'relay');
  });

  it('carries megabytes both ways for 24 concurrent clients, byte for byte', async () => {
    const clients = 24;
    const size = 3 * 1024 * 1024 + 17;
    const results = await Promise.all(Array.from({ length: clients }, async (_, i) => {
      const data = randomData(size + i);
      const s = await connectClient(echoPort, HOST);
      const got = readAll(s, 60_000);
      // Write in uneven pieces, honouring backpressure, then half-close.
      let off = 0;
      while (off < data.length) {
        const n = Math.min(data.length - off, 1000 + ((off * 7919) % 70_000));
        if (!s.write(data.subarray(off, off + n))) await new Promise((r) => s.once('drain', r));
        off += n;
      }
      s.end();
      const back = await got;
      s.destroy();
      return { sent: sha256(data), back: sha256(back), len: back.length, want: data.length };
    }));
    for (const r of results) {
      expect(r.len).toBe(r.want);
      expect(r.back).toBe(r.sent);
    }
    const total = results.reduce((n, r) => n + r.want, 0);
    await waitFor(() => serviceCounter(proxy, 'echo', SC_BYTES_OUT) >= total, 3000, 'bytes counters');
    expect(serviceCounter(proxy, 'echo', SC_BYTES_IN)).toBe(total);
    expect(serviceCounter(proxy, 'echo', SC_BYTES_OUT)).toBe(total);
    expect(serviceCounter(proxy, 'echo', SC_ACCEPTED)).toBeGreaterThanOrEqual(clients);
    // Every session released: nothing active.
    await waitFor(() => activeCounts(proxy, 'echo', backends.slice(0, 3).map((b) => b.address)).active === 0, 3000, 'active 0');
    expect(activeCounts(proxy, 'echo', backends.slice(0, 3).map((b) => b.address)).backends).toEqual([0, 0, 0]);
  });

  it('keeps every byte when the client reads slowly (backpressure backend → client)', async () => {
    const data = randomData(24 * 1024 * 1024);
    const s = await connectClient(echoPort, HOST);
    const got = readAll(s, 60_000);
    s.pause();
    // Push everything, then leave the client unread long enough for every buffer on the way to fill.
    let off = 0;
    const writer = (async () => {
      while (off < data.length) {
        const n = Math.min(data.length - off, 256 * 1024);
        if (!s.write(data.subarray(off, off + n))) await new Promise((r) => s.once('drain', r));
        off += n;
      }
      s.end();
    })();
    await new Promise((r) => setTimeout(r, 500));
    s.resume();
    await writer;
    const back = await got;
    s.destroy();
    expect(back.length).toBe(data.length);
    expect(sha256(back)).toBe(sha256(data));
  });

  it('a burst much larger than one read, queued with its FIN behind a client that does not read, arrives whole and then ends', async () => {
    // The relay reads edge-triggered (src/proxy/relay/loop.c): while the client does not read, the
    // backend's bytes and its FIN wait in the proxy's backend socket with no further edge; once the
    // client reads, all of it (many full reads, re-armed every few) and then the EOF must follow.
    const written = new Promise((r) => backends[8].server.once('written', r));
    const s = await connectClient(ports.burst, HOST);
    s.pause();
    const got = readAll(s, 60_000);
    await written;
    s.resume();
    const back = await got;
    s.destroy();
    expect(back.length).toBe(BURST.length);
    expect(sha256(back)).toBe(sha256(BURST));
    await waitFor(() => reasons(proxy, 'burst').server_closed === 1, 3000, 'server_closed counted');
  });

  it('client half-close: the client ends, then still receives the server reply', async () => {
    const data = randomData(2 * 1024 * 1024);
    const s = await connectClient(halfPort, HOST);
    const got = readAll(s);
    s.end(data);
    const reply = (await got).toString();
    expect(reply).toBe(sha256(data));
    await waitFor(() => reasons(proxy, 'digest').client_closed === 1, 3000, 'client_closed counted');
  });

  it('server half-close: the server ends first, the client can still send', async () => {
    const port = (globalThis as Record<string, unknown>).__earlyPort as number;
    const early = backends[4];
    const received = new Promise<string>((resolve) => early.server.once('received', resolve));
    const s = await connectClient(port, HOST);
    const greeting = readAll(s);
    expect((await greeting).toString()).toBe('bye early\n');
    // Our read side has ended; the write side is still open through the proxy.
    const data = randomData(512 * 1024);
    s.end(data);
    expect(await received).toBe(sha256(data));
    await waitFor(() => reasons(proxy, 'early').server_closed === 1, 3000, 'server_closed counted');
  });

  it('keeps every byte when the backend reads slowly (backpressure client → backend)', async () => {
    const data = randomData(16 * 1024 * 1024);
    const s = await connectClient(ports.slow, HOST);
    const got = readAll(s, 60_000);
    // Written as fast as the socket takes it: with the backend not reading, every buffer on the
    // way fills and the proxy must stop reading the client until the backend catches up.
    let off = 0;
    while (off < data.length) {
      const n = Math.min(data.length - off, 256 * 1024);
      if (!s.write(data.subarray(off, off + n))) await new Promise((r) => s.once('drain', r));
      off += n;
    }
    s.end();
    expect((await got).toString()).toBe(sha256(data));
    s.destroy();
  });

  it('a backend reset closes the client and gives the slots back (reason server_closed)', async () => {
    const s = await connectClient(ports.reset, HOST);
    s.on('error', () => {}); // the close may arrive as ECONNRESET
    s.write('hello');
    await waitClose(s, 3000);
    await waitFor(() => reasons(proxy, 'reset').server_closed === 1, 3000, 'server_closed counted');
    expect(activeCounts(proxy, 'reset', [backends[6].address]).active).toBe(0);
  });

  it('a client reset closes the backend connection and gives the slots back (reason client_closed)', async () => {
    const named = backends[7];
    const s = await connectClient(ports.named, HOST);
    s.write('ping');
    await new Promise((r) => s.once('data', r));
    await waitFor(() => named.sockets.size === 1, 3000, 'backend connection open');
    s.resetAndDestroy();
    await waitFor(() => named.sockets.size === 0, 3000, 'backend connection closed');
    await waitFor(() => reasons(proxy, 'named').client_closed === 1, 3000, 'client_closed counted');
    expect(activeCounts(proxy, 'named', [`localhost:${named.port}`]).active).toBe(0);
  });

  it('clients that vanish at every step leak nothing: each session ends exactly once', async () => {
    // Half the connects go to a dead backend first (port 1: refused), so sessions are caught in
    // every state: retrying, connecting, splicing, half-closed.
    const one = async (i: number): Promise<void> => {
      const s = await connectClient(ports.storm, HOST);
      s.on('error', () => {});
      const closed = waitClose(s, 5000).catch(() => undefined);
      switch (i % 5) {
        case 0: { // a whole exchange
          const echoed = new Promise((r) => s.once('data', r));
          s.write('ping');
          await echoed;
          s.end();
          break;
        }
        case 1: s.write('ping'); s.resetAndDestroy(); break; // gone while its backend is picked
        case 2: s.resetAndDestroy(); break; // gone at once
        case 3: s.end(); break; // FIN without a byte
        case 4: s.write(randomData(256 * 1024)); setTimeout(() => s.destroy(), 5); break; // gone mid-stream
      }
      await closed;
    };
    for (let batch = 0; batch < 6; batch++) await Promise.all(Array.from({ length: 50 }, (_, k) => one(batch * 50 + k)));
    const addresses = [`${HOST}:1`, backends[0].address];
    await waitFor(() => {
      const c = activeCounts(proxy, 'storm', addresses);
      return c.active === 0 && c.queued === 0 && c.backends.every((n) => n === 0);
    }, 5000, 'every slot given back');
    const ended = Object.values(reasons(proxy, 'storm')).reduce((a, b) => a + b, 0);
    expect(ended).toBe(serviceCounter(proxy, 'storm', SC_ACCEPTED));
    expect(ended).toBe(300);
    // And the service still works.
    const s = await connectClient(ports.storm, HOST);
    const echoed = new Promise<string>((r) => s.once('data', (d) => r(d.toString())));
    s.write('after');
    expect(await echoed).toBe('after');
    s.destroy();
  });
});
