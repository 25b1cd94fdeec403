/**
 * The worker pool's control: pause/resume of a listener, reload of the service table, a crashed
 * worker restarted. Addresses: 127.2.8.0/24.
 */
import { createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.ts';
import type { FulcrumHandle } from '../../src/main.ts';
import { reusePortSupport } from '../../src/proxy/pool.ts';
import { connectClient, freePort, readLine, startNamedServer, waitFor, type TestServer } from '../helpers/net.ts';
import { startProxy } from './harness.ts';

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

async function who(p: number): Promise<string> {
  const s = await connectClient(p, HOST);
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
});
