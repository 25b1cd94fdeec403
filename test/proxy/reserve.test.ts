/**
 * The descriptor reserve (src/proxy/descriptors.ts): a fulcrum under `prlimit --nofile=400:400`
 * (a child process: fixtures/fulcrum-child.ts) gets more idle clients than its descriptors allow.
 * It stops accepting at the reserve's mark — once, said in the log and the metrics — before any
 * EMFILE; the admin API answers and the health probes go on meanwhile (no backend is marked down);
 * once clients leave it accepts again, and the clients that waited are served. On the relay the
 * waiting clients sit in the listen backlog; on the JavaScript path the listener is closed for the
 * pause (Node cannot stop accepting otherwise), so new clients are refused then.
 * Addresses: 127.2.28.0/24.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { get } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startEchoServer, waitFor, type TestServer } from '../helpers/net.ts';

const HOST = '127.2.28.1';
const LIMIT = 400;
const CLIENTS = 320;
let echo: TestServer;
let child: ChildProcess;
let port = 0;
let adminPort = 0;
let out = '';

/** GET on the child's admin API: status and body. */
function admin(path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    get({ host: HOST, port: adminPort, path, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject).on('timeout', function (this: { destroy(e: Error): void }) { this.destroy(new Error(`GET ${path}: timeout`)); });
  });
}

const metric = (text: string, line: string): number | undefined => {
  const m = new RegExp(`^${line.replace(/[{}"=]/g, (c) => `\\${c}`)} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
};

beforeAll(async () => {
  echo = await startEchoServer('127.2.28.2');
  port = await freePort(HOST);
  adminPort = await freePort(HOST);
  const yaml = `
workers: 1
logging: { level: info, connections: false }
admin: { listen: ${HOST}:${adminPort} }
services:
  - name: svc
    listen: ${HOST}:${port}
    health: { type: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 2 }
    backends: [{ address: ${echo.address} }]
`;
  const fixture = new URL('./fixtures/fulcrum-child.ts', import.meta.url).pathname;
  child = spawn('prlimit', [`--nofile=${LIMIT}:${LIMIT}`, process.execPath, fixture, yaml], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { out += d; });
  await waitFor(() => out.includes('ready\n') || child.exitCode !== null, 30_000, 'child fulcrum ready');
  if (!out.includes('ready\n')) throw new Error(`child fulcrum did not start:\n${out}`);
});

afterAll(async () => {
  if (child && child.exitCode === null) {
    child.kill('SIGTERM');
    await waitFor(() => child.exitCode !== null, 20_000, 'child exit').catch(() => child.kill('SIGKILL'));
  }
  await echo?.close();
});

interface Client { socket: Socket; served: boolean; failed: string | null }

/** A client that sends one line and is served when it comes back. */
function client(i: number): Promise<Client> {
  return new Promise((resolve) => {
    const c: Client = { socket: connect({ host: HOST, port }), served: false, failed: null };
    c.socket.setEncoding('utf8');
    c.socket.on('data', () => { c.served = true; });
    c.socket.on('error', (err: NodeJS.ErrnoException) => { c.failed = err.code ?? 'error'; resolve(c); });
    c.socket.on('connect', () => {
      c.socket.write(`client ${i}\n`);
      resolve(c);
    });
  });
}

describe('descriptor reserve', () => {
  it('stops accepting before the open-files limit, keeps the admin API and the probes working, and serves again once clients leave', async () => {
    const status = JSON.parse((await admin('/api/status')).body) as { data_plane: { data_path: string; descriptors: { stop: number; resume: number; limit: number; accepting: boolean } } };
    const { data_path: path, descriptors: marks } = status.data_plane;
    expect(marks.limit).toBe(LIMIT);
    expect(marks.accepting).toBe(true);
    // Two descriptors a session: more clients than the mark lets in.
    expect(CLIENTS * 2).toBeGreaterThan(marks.stop);

    const clients: Client[] = [];
    for (let i = 0; i < CLIENTS; i++) clients.push(await client(i));
    const served = (): number => clients.filter((c) => c.served).length;
    await waitFor(async () => metric((await admin('/metrics')).body, 'fulcrum_accepting') === 0, 20_000, 'accepting 0');
    // Everyone let in before the mark is served; the count settles there.
    let settled = -1;
    await waitFor(() => {
      const n = served();
      const same = n === settled;
      settled = n;
      return same && n > 0;
    }, 20_000, 'served count settles', 300);
    const during = served();
    expect(during).toBeLessThan(CLIENTS);
    expect(during * 2).toBeGreaterThanOrEqual(marks.stop - 2 * 64); // the relay may have accepted a batch past the mark
    expect(during * 2).toBeLessThan(LIMIT);
    if (path === 'relay') {
      // The rest wait in the backlog: connected, neither served nor refused.
      expect(clients.filter((c) => c.failed !== null).map((c) => c.failed)).toEqual([]);
    }

    // Meanwhile the admin API answers and the health probes go on, all passing.
    const m1 = (await admin('/metrics')).body;
    const ok1 = metric(m1, `fulcrum_health_probes_total{service="svc",backend="${echo.address}",result="ok"}`) ?? 0;
    expect(metric(m1, 'fulcrum_accept_pauses_total')).toBe(1);
    await waitFor(async () => (metric((await admin('/metrics')).body, `fulcrum_health_probes_total{service="svc",backend="${echo.address}",result="ok"}`) ?? 0) >= ok1 + 3, 20_000, 'three more passing probes');
    const m2 = (await admin('/metrics')).body;
    expect(metric(m2, `fulcrum_backend_up{service="svc",backend="${echo.address}"}`)).toBe(1);
    expect(metric(m2, `fulcrum_health_probes_total{service="svc",backend="${echo.address}",result="fail"}`) ?? 0).toBe(0);
    expect(metric(m2, `fulcrum_health_probes_total{service="svc",backend="${echo.address}",result="skipped"}`) ?? 0).toBe(0);
    expect((await admin('/api/status')).status).toBe(200);

    await waitFor(() => out.includes('stopped accepting'), 5000, 'the pause in the log');

    // Clients leave: accepting again. On the relay the clients waiting in the backlog come in
    // (and fill it up to the mark again: a second episode); on the JavaScript path new ones can.
    const leaving = clients.filter((c) => c.served).slice(0, Math.floor(during / 2));
    for (const c of leaving) c.socket.destroy();
    await waitFor(() => out.includes('accepting again'), 20_000, 'accepting again (log)');
    if (path === 'relay') {
      await waitFor(() => served() >= during + leaving.length - 2, 20_000, 'waiting clients served');
    } else {
      const late = await client(CLIENTS);
      clients.push(late);
      await waitFor(() => late.served, 20_000, 'a new client served');
    }
    // All gone: accepting, and every client that came was served or (JavaScript path) refused.
    for (const c of clients) c.socket.destroy();
    await waitFor(async () => metric((await admin('/metrics')).body, 'fulcrum_accepting') === 1, 20_000, 'accepting 1');
    const fresh = await client(CLIENTS + 1);
    await waitFor(() => fresh.served, 20_000, 'a client after the pause served');
    fresh.socket.destroy();

    // One line per episode: as many as the pauses counted (the workers' log is written in batches, at least once a second).
    const pauses = metric((await admin('/metrics')).body, 'fulcrum_accept_pauses_total')!;
    const stopLines = (): number => out.split('\n').filter((l) => l.includes('stopped accepting')).length;
    await waitFor(() => stopLines() >= pauses, 5000, 'a log line per pause');
    expect(stopLines()).toBe(pauses);
    const lines = out.split('\n');
    expect(lines.filter((l) => /EMFILE|ENFILE/.test(l))).toEqual([]);
    expect(lines.filter((l) => l.includes('"up":false') || l.includes('marked down'))).toEqual([]);
  });
});
