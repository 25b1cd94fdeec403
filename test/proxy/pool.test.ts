/**
 * The worker pool's control: pause/resume of a listener (also while its host name is being
 * resolved), reload of the service table, a crashed worker restarted, workers added and retired
 * by a reload. Addresses: 127.2.8.0/24.
 */
import { execFileSync } from 'node:child_process';
import { lookup } from 'node:dns/promises';
import { closeSync, constants as fsConstants, openSync } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.ts';
import type { FulcrumHandle } from '../../src/main.ts';
import { CRASHES_BEFORE_JAVASCRIPT, reusePortSupport } from '../../src/proxy/pool.ts';
import { buildServiceTable } from '../../src/proxy/table.ts';
import { B_ACTIVE, backendAddr, serviceAddr, SC_ACCEPTED, S_ACTIVE, S_QUEUED, tallyAddr, T_SERVICE_HELD } from '../../src/shm/layout.ts';
import { connectClient, freePort, listening, readLine, startNamedServer, staysFalse, waitFor, type TestServer } from '../helpers/net.ts';
import { reasons, serviceCounter, startProxy } from './harness.ts';

const HOST = '127.2.8.1';
let a: TestServer;
let b: TestServer;
let proxy: FulcrumHandle;
let port = 0;
let port2 = 0;

const yaml = (services: string): string => `
workers: 2
logging: { level: silent, connections: false }
services:
${services}`;
const svc = (name: string, p: number, backends: TestServer[]): string =>
  `  - name: ${name}\n    listen: ${HOST}:${p}\n    backends:\n${backends.map((x) => `      - address: ${x.address}`).join('\n')}\n`;

beforeAll(async () => {
  a = await startNamedServer('a', HOST);
  b = await startNamedServer('b', HOST);
  port = await freePort(HOST);
  port2 = await freePort(HOST);
  proxy = await startProxy(yaml(svc('p', port, [a])));
});

afterAll(async () => {
  await proxy?.stop('test over');
  await a.close();
  await b.close();
});

/**
 * Holds every thread of libuv's pool, where dns.lookup's getaddrinfo runs: each opens a FIFO that
 * no one writes to yet, which blocks. release() opens the write ends, and the pool runs again.
 */
async function holdThreadPool(): Promise<{ release: () => Promise<void> }> {
  const size = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
  const dir = await mkdtemp(join(tmpdir(), 'fulcrum-pool-'));
  const fifos = Array.from({ length: size }, (_, i) => join(dir, `fifo${i}`));
  for (const f of fifos) execFileSync('mkfifo', [f]);
  const readers = fifos.map((f) => open(f, 'r'));
  return {
    async release() {
      for (const f of fifos) {
        // O_NONBLOCK: ENXIO until the pool thread has the read end open (no hang if it is late).
        for (let tries = 0; ; tries++) {
          try {
            closeSync(openSync(f, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK));
            break;
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'ENXIO' || tries > 100) throw err;
            await new Promise((r) => setTimeout(r, 10));
          }
        }
      }
      for (const r of await Promise.all(readers)) await r.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

async function who(p: number, host = HOST): Promise<string> {
  const s = await connectClient(p, host);
  try {
    return await readLine(s);
  } finally {
    s.destroy();
  }
}

describe('worker pool', () => {
  it('runs the configured number of workers where reusePort exists', () => {
    expect(reusePortSupport().ok).toBe(true);
    expect(proxy.pool.size).toBe(2);
    expect(proxy.pool.workerThreadIds()).toHaveLength(2);
  });

  it('pauses and resumes accepting on a service', async () => {
    expect(await who(port)).toBe('a');
    await proxy.pool.pauseService('p');
    await expect(connectClient(port, HOST)).rejects.toThrow(/ECONNREFUSED/);
    await proxy.pool.resumeService('p');
    expect(await who(port)).toBe('a');
  });

  it('resume fails with FULCRUM_ERR_LISTEN when the address is taken, and stays paused', async () => {
    await proxy.pool.pauseService('p');
    const squatter = createServer();
    await new Promise<void>((resolve) => squatter.listen({ host: HOST, port }, () => resolve()));
    try {
      await expect(proxy.pool.resumeService('p')).rejects.toMatchObject({ code: 'FULCRUM_ERR_LISTEN' });
      expect(proxy.pool.isPaused('p')).toBe(true);
    } finally {
      await new Promise<void>((resolve) => squatter.close(() => resolve()));
    }
    await proxy.pool.resumeService('p');
    expect(await who(port)).toBe('a');
  });

  it('reload adds a service, moves backends and removes a service', async () => {
    let problems = await proxy.reload(parseConfig(yaml(svc('p', port, [a]) + svc('q', port2, [b])), '<test>'));
    expect(problems).toEqual([]);
    expect(await who(port2)).toBe('b');
    problems = await proxy.reload(parseConfig(yaml(svc('p', port, [b])), '<test>'));
    expect(problems).toEqual([]);
    expect(await who(port)).toBe('b');
    await expect(connectClient(port2, HOST)).rejects.toThrow(/ECONNREFUSED/);
  });

  it('reload turning accept_proxy on and off moves the service to the listener that serves it', async () => {
    // With the relay, a service without accept_proxy is accepted by the relay and one with it by
    // Node (the header is read in JavaScript): the reload swaps listeners on the same address.
    const withHeader = svc('p', port, [b]).replace('    backends:', '    accept_proxy: true\n    backends:');
    expect(await proxy.reload(parseConfig(yaml(withHeader), '<test>'))).toEqual([]);
    const s = await connectClient(port, HOST);
    s.write('PROXY TCP4 198.51.100.9 192.0.2.1 40000 6380\r\n');
    expect(await readLine(s)).toBe('b');
    s.destroy();
    // Without a header the client is now closed (bad_proxy_header), not served.
    const bare = await connectClient(port, HOST);
    bare.on('error', () => undefined);
    const ended = new Promise((resolve) => bare.once('end', resolve));
    bare.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await ended;
    bare.destroy();
    expect(await proxy.reload(parseConfig(yaml(svc('p', port, [b])), '<test>'))).toEqual([]);
    expect(await who(port)).toBe('b');
  });

  it('a listener closed while its host name is being resolved does not bind when the answer comes', async () => {
    // The service listens on a host name; while every thread of libuv's pool is held (the lookup
    // waits there), it is resumed and paused again. The answer then comes for a closed listener.
    const p4 = await freePort(HOST);
    await proxy.pool.pauseService('p');
    expect(await proxy.reload(parseConfig(yaml(svc('p', p4, [b]).replace(`${HOST}:${p4}`, `localhost:${p4}`)), '<test>'))).toEqual([]);
    const { address } = await lookup('localhost');
    const pool = await holdThreadPool();
    let resumed: Promise<void> | undefined;
    try {
      // A worker handles its messages in order: the resume has started its lookup before the pause.
      resumed = proxy.pool.resumeService('p');
      await proxy.pool.pauseService('p');
    } finally {
      await pool.release();
    }
    await resumed;
    // Real time, and a bounded look: the late answer arrives on the worker from libuv's pool, with
    // nothing to wait for when it is (rightly) ignored; a listener wrongly bound would show within it.
    await staysFalse(() => listening(address, p4), 300, `a listener on ${address}:${p4}`);
    await expect(connectClient(p4, address)).rejects.toThrow(/ECONNREFUSED/);
    expect(proxy.pool.isPaused('p')).toBe(true);
    // Resumed for real, it binds the address the name resolves to.
    await proxy.pool.resumeService('p');
    const s = await connectClient(p4, address);
    expect(await readLine(s)).toBe('b');
    s.destroy();
    expect(await proxy.reload(parseConfig(yaml(svc('p', port, [b])), '<test>'))).toEqual([]);
    expect(await who(port)).toBe('b');
  });

  it('a listener that could not bind is bound by the next service table, and by a resume', async () => {
    // The workers are sent a table whose address another process holds (a reload checks first,
    // src/config/listen.ts; the table is sent here directly, as a race with that check would).
    /** The table moved to a port another process holds: refused with EADDRINUSE, then freed. */
    async function moveWhileTaken(to: number): Promise<ReturnType<typeof buildServiceTable>> {
      const squatter = createServer();
      await new Promise<void>((resolve) => squatter.listen({ host: HOST, port: to }, () => resolve()));
      const moved = buildServiceTable({ ...proxy.config, services: proxy.config.services.map((s) => ({ ...s, listen: { host: HOST, port: to } })) }, proxy.balancer);
      try {
        expect((await proxy.pool.updateServices(moved)).map((e) => e.code)).toEqual(['EADDRINUSE']);
      } finally {
        await new Promise<void>((resolve) => squatter.close(() => resolve()));
      }
      return moved;
    }
    const p6 = await freePort(HOST);
    const moved = await moveWhileTaken(p6);
    // The same table again, the address free now: bound (it used to stay unbound: same address).
    expect(await proxy.pool.updateServices(moved)).toEqual([]);
    expect(await who(p6)).toMatch(/^[ab]$/);
    // A resume binds a listener that failed too (a service added while the VIP was elsewhere).
    const p7 = await freePort(HOST);
    await moveWhileTaken(p7);
    await proxy.pool.resumeService('p');
    expect(await who(p7)).toMatch(/^[ab]$/);
    expect(await proxy.syncServices()).toEqual([]);
    expect(await who(port)).toBe('b');
  });

  it.skipIf(process.env.FULCRUM_RELAY === 'off')('spreads long-lived connections evenly over the workers, whatever the kernel\'s hash', async () => {
    // 40 connections held open from one client address: SO_REUSEPORT alone puts each on a worker
    // by a hash of its source port (a 26 / 14 split is as likely as not to be beaten); a relay
    // that holds two more than another hands the new connection over.
    const p5 = await freePort(HOST);
    expect(await proxy.reload(parseConfig(yaml(svc('p', port, [b]) + svc('spread', p5, [a])), '<test>'))).toEqual([]);
    const i32 = new Int32Array(proxy.memory.buffer);
    const svcIndex = proxy.balancer.serviceIndex('spread');
    const held = (): number[] => [0, 1].map((w) => Atomics.load(i32, (tallyAddr(w) + T_SERVICE_HELD + svcIndex * 4) >> 2));
    const clients: Socket[] = [];
    try {
      // After every connection (the hash alone would wander off as a random walk does: staying
      // within ±2 for 40 steps happens about once in a hundred).
      let widest = 0;
      for (let i = 0; i < 40; i++) {
        const c = await connectClient(p5, HOST);
        expect(await readLine(c)).toBe('a');
        clients.push(c);
        const [w0, w1] = held();
        expect(w0 + w1).toBe(i + 1);
        widest = Math.max(widest, Math.abs(w0 - w1));
      }
      expect(widest).toBeLessThanOrEqual(2);
      // Every one of them still works both ways.
      for (const [i, c] of clients.entries()) {
        c.write(`ping ${i}\n`);
        expect(await readLine(c)).toBe(`ping ${i}`);
      }
    } finally {
      for (const c of clients) c.destroy();
    }
    expect(await proxy.reload(parseConfig(yaml(svc('p', port, [b])), '<test>'))).toEqual([]);
  });

  it('restarts a crashed worker, and keeps serving meanwhile', async () => {
    const exits: number[] = [];
    proxy.pool.on('worker-exit', (e: { workerId: number }) => exits.push(e.workerId));
    const before = proxy.pool.workerThreadIds();
    await proxy.pool.crashWorker(0);
    expect(exits).toEqual([0]);
    // The other worker still accepts (the kernel stops sending to the closed listener).
    for (let i = 0; i < 5; i++) expect(await who(port)).toBe('b');
    await waitFor(() => proxy.pool.workerThreadIds().length === 2, 5000, 'worker restarted');
    const after = proxy.pool.workerThreadIds();
    expect(after).not.toEqual(before);
    for (let i = 0; i < 20; i++) expect(await who(port)).toBe('b');
  });

  it('backs off a worker that crashes in a loop, and after 5 crashes a minute runs it on the JavaScript path', async () => {
    const relay = proxy.pool.dataPath === 'relay';
    const worker1 = () => proxy.pool.status().workers.find((w) => w.id === 1)!;
    expect(worker1()).toMatchObject({ data_path: proxy.pool.dataPath, running: true, crashes_last_minute: 0 });
    const delays: number[] = [];
    const paths: string[] = [];
    for (let i = 0; i < CRASHES_BEFORE_JAVASCRIPT; i++) {
      await proxy.pool.crashWorker(1);
      // Between the crash and its restart: how long it waits, and which path it will run.
      delays.push(worker1().restart_in_ms!);
      paths.push(worker1().data_path);
      expect(worker1()).toMatchObject({ running: false, crashes_last_minute: i + 1 });
      await waitFor(() => worker1().running, 10_000, `worker 1 restarted after crash ${i + 1}`);
      // Not reset by a successful start: only a minute without crashes brings the delay back down.
    }
    expect(delays).toEqual([100, 200, 400, 800, 1600]);
    // The fifth crash within the minute moved it off the relay (on the JavaScript path it was there already).
    expect(paths).toEqual([...Array(CRASHES_BEFORE_JAVASCRIPT - 1).fill(relay ? 'relay' : 'javascript'), 'javascript']);
    expect(worker1()).toMatchObject({ data_path: 'javascript', running: true });
    expect(worker1()).not.toHaveProperty('restart_in_ms');
    expect(proxy.pool.status().workers.find((w) => w.id === 0)!.data_path).toBe(proxy.pool.dataPath);
    // Both workers serve (the kernel spreads the connections over both listeners).
    for (let i = 0; i < 20; i++) expect(await who(port)).toBe('b');
  });

  it('gives back the connection and queue slots of a crashed worker', async () => {
    // max_connections 3 and 12 clients: 3 served, 9 queued, spread by the kernel over both workers.
    const p3 = await freePort(HOST);
    await proxy.reload(parseConfig(yaml(svc('p', port, [b]) + svc('held', p3, [a]).replace('    backends:', '    max_connections: 3\n    queue: { max: 100, timeout: 60s }\n    backends:')), '<test>'));
    const clients = await Promise.all(Array.from({ length: 12 }, () => connectClient(p3, HOST)));
    const ended = new Set<number>();
    clients.forEach((c, i) => {
      c.on('error', () => undefined);
      c.once('end', () => ended.add(i));
      c.resume();
    });
    await waitFor(() => counts().active === 3 && counts().queued === 9, 5000, '3 active, 9 queued');
    await proxy.pool.crashWorker(0);
    // The crashed worker's clients see their connections close; nothing else gives their slots back.
    await waitFor(() => ended.size > 0, 3000, 'the crashed worker held some clients');
    // What is left in shared memory is exactly what the surviving clients hold (queued ones get
    // the freed slots, so the split between active and queued moves; the sum may not). The closes
    // reach this side one by one: the open count is read as they come.
    const open = (): number => clients.length - ended.size;
    await waitFor(() => counts().active === Math.min(3, open()) && counts().queued === open() - Math.min(3, open()), 3000, 'counts match the open clients');
    expect(open()).toBeLessThan(12);
    expect(counts().backend).toBe(counts().active);
    for (const c of clients) c.destroy();
    await waitFor(() => counts().active === 0 && counts().queued === 0 && counts().backend === 0, 3000, 'all released');

    function counts(): { active: number; queued: number; backend: number } {
      const i32 = new Int32Array(proxy.memory.buffer);
      const s = proxy.balancer.serviceIndex('held');
      return {
        active: Atomics.load(i32, (serviceAddr(s) + S_ACTIVE) >> 2),
        queued: Atomics.load(i32, (serviceAddr(s) + S_QUEUED) >> 2),
        backend: Atomics.load(i32, (backendAddr(proxy.balancer.backendIndex('held', a.address)) + B_ACTIVE) >> 2),
      };
    }
  });
});

describe('worker pool: a reload that changes workers', () => {
  const H = '127.2.8.2';
  let named: TestServer;
  let rp: FulcrumHandle;
  let lp = 0;
  const conf = (workers: number, grace = '60s'): string => `
workers: ${workers}
shutdown_grace: ${grace}
logging: { level: silent, connections: false }
services:
  - name: w
    listen: ${H}:${lp}
    backends:
      - address: ${named.address}
`;
  const reload = async (workers: number, grace?: string): Promise<void> => {
    expect(await rp.reload(parseConfig(conf(workers, grace), '<test>'))).toEqual([]);
  };
  /** Connections each worker id holds now (its tallies in shared memory). */
  const held = (w: number): number =>
    Atomics.load(new Int32Array(rp.memory.buffer), (tallyAddr(w) + T_SERVICE_HELD + rp.balancer.serviceIndex('w') * 4) >> 2);
  const openClients = async (n: number): Promise<Socket[]> => {
    const list: Socket[] = [];
    for (let i = 0; i < n; i++) {
      const c = await connectClient(lp, H);
      c.on('error', () => undefined);
      expect(await readLine(c)).toBe('w');
      list.push(c);
    }
    return list;
  };
  const echoes = async (clients: Socket[]): Promise<void> => {
    for (const [i, c] of clients.entries()) {
      c.write(`ping ${i}\n`);
      expect(await readLine(c)).toBe(`ping ${i}`);
    }
  };

  beforeAll(async () => {
    named = await startNamedServer('w', H);
    lp = await freePort(H);
    rp = await startProxy(conf(1));
  });
  afterAll(async () => {
    await rp?.stop('test over');
    await named.close();
  });

  it('starts workers, retires the highest id while its connections go on, and reuses no id still draining', async () => {
    const exits: { workerId: number; retired: boolean }[] = [];
    rp.pool.on('worker-exit', (e: { workerId: number; retired: boolean }) => exits.push(e));
    expect(rp.pool.size).toBe(1);
    await reload(2);
    expect(rp.pool.size).toBe(2);
    expect(rp.pool.workerThreadIds()).toHaveLength(2);
    // 20 long-lived connections: both workers get some (the relay's hand-off evens them out; the
    // kernel's hash alone leaves one worker empty once in 2^19).
    const clients = await openClients(20);
    expect(held(0) + held(1)).toBe(20);
    expect(held(1)).toBeGreaterThan(0);
    const accepted = serviceCounter(rp, 'w', SC_ACCEPTED);

    await reload(1);
    expect(rp.pool.size).toBe(1);
    // Worker 1 no longer accepts but still relays what it holds.
    expect(rp.pool.workerThreadIds()).toHaveLength(2);
    const onRetired = held(1);
    expect(onRetired).toBeGreaterThan(0);
    for (let i = 0; i < 10; i++) expect(await who(lp, H)).toBe('w');
    expect(held(1)).toBe(onRetired);
    await echoes(clients);
    expect(exits).toEqual([]);

    // Back to 2 while worker 1 drains: the new worker takes id 2, not 1.
    await reload(2);
    expect(rp.pool.size).toBe(2);
    expect(rp.pool.workerThreadIds()).toHaveLength(3);
    const late = await openClients(12);
    expect(held(1)).toBe(onRetired);
    expect(held(2)).toBeGreaterThan(0);

    // Its last connection gone, the retired worker exits for good; the counters keep its share.
    for (const c of clients) c.destroy();
    await waitFor(() => exits.length === 1, 5000, 'the retired worker exited');
    expect(exits[0]).toMatchObject({ workerId: 1, retired: true });
    expect(rp.pool.workerThreadIds()).toHaveLength(2);
    expect(rp.pool.size).toBe(2);
    expect(serviceCounter(rp, 'w', SC_ACCEPTED)).toBeGreaterThanOrEqual(accepted + 10 + 12);
    await echoes(late);
    for (const c of late) c.destroy();
    await waitFor(() => held(0) + held(2) === 0, 5000, 'all connections released');
    await reload(1);
    await waitFor(() => rp.pool.workerThreadIds().length === 1, 5000, 'worker 2 retired');
    expect(exits.map((e) => e.workerId)).toEqual([1, 2]);
  });

  it('closes a retired worker\'s connections once shutdown_grace is over; the others stay', async () => {
    await reload(2, '300ms');
    const clients = await openClients(16);
    const onRetired = held(1);
    expect(onRetired).toBeGreaterThan(0);
    const closed = new Set<Socket>();
    // (allowHalfOpen clients: the proxy's FIN is their 'end')
    for (const c of clients) c.once('end', () => closed.add(c));
    const killedBefore = reasons(rp, 'w').shutdown;
    await reload(1, '300ms');
    await waitFor(() => closed.size === onRetired, 3000, 'the retired worker closed its connections');
    await waitFor(() => rp.pool.workerThreadIds().length === 1, 3000, 'the retired worker exited');
    expect(reasons(rp, 'w').shutdown - killedBefore).toBe(onRetired);
    // The others still carry bytes both ways, and none of them was closed meanwhile.
    await echoes(clients.filter((c) => !closed.has(c)));
    expect(closed.size).toBe(onRetired);
    for (const c of clients) c.destroy();
  });
});
