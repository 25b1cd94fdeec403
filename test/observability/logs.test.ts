/**
 * The log lines operators read, from a real `fulcrum run` process (the test reads its stdout, where
 * the main thread writes every thread's lines: observability/log.ts): one JSON line per closed
 * connection with the tcplog fields and the right termination reason, and one line per backend
 * state transition with from, to and cause.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import { connectClient, freePort, readLine, startNamedServer, startServer, waitClose, waitFor, type TestServer } from '../helpers/net.ts';
import { startUdpBackend, UdpClient, type UdpBackend } from '../helpers/udp.ts';
import { api, TOKEN } from '../admin/stack.ts';

const HOST = '127.5.4.1';
const CLIENT = '127.5.4.77';
const ROOT = new URL('../../', import.meta.url).pathname;

let dir: string;
let child: ChildProcess;
let stdout = '';
let exited: Promise<number | null>;
let admin: string;
const ports: Record<string, number> = {};
const servers: TestServer[] = [];
let named: TestServer;
let closer: TestServer;
let deadPort: number;
let lines: Record<string, any>[] = [];
let game: UdpBackend;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fulcrum-logs-'));
  named = await startNamedServer('n0', HOST);
  // A backend that says hello and hangs up: the server closes first.
  closer = await startServer((s) => s.end('bye\n'), HOST);
  servers.push(named, closer);
  game = await startUdpBackend('g', HOST);
  // Nothing listens on a privileged port here, and no freePort() (ephemeral) can return it.
  deadPort = 1;
  for (const name of ['web', 'closing', 'dead', 'idle', 'admin', 'udp']) ports[name] = await freePort(HOST);
  await writeFile(join(dir, 'token'), TOKEN, { mode: 0o600 });
  const config = `workers: 2
shutdown_grace: 500ms
logging: { level: info, connections: true }
admin: { listen: ${HOST}:${ports.admin}, token_file: ${join(dir, 'token')} }
services:
  - name: web
    listen: ${HOST}:${ports.web}
    backends: [{ address: ${named.address} }]
  - name: closing
    listen: ${HOST}:${ports.closing}
    backends: [{ address: ${closer.address} }]
  - name: dead
    listen: ${HOST}:${ports.dead}
    retries: 1
    timeouts: { connect: 500ms }
    backends: [{ address: ${HOST}:${deadPort} }]
  - name: idle
    listen: ${HOST}:${ports.idle}
    timeouts: { idle: 300ms }
    backends: [{ address: ${named.address} }]
  - name: udp
    protocol: udp
    listen: ${HOST}:${ports.udp}
    timeouts: { idle: 300ms }
    backends: [{ address: ${game.address} }]
`;
  await writeFile(join(dir, 'fulcrum.yaml'), config);
  admin = `http://${HOST}:${ports.admin}`;
  child = spawn(process.execPath, [join(ROOT, 'src/cli.ts'), 'run', '--config', join(dir, 'fulcrum.yaml')], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (d: Buffer) => { stdout += d.toString('utf8'); });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString('utf8'); });
  exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  await waitFor(async () => {
    if (child.exitCode !== null) throw new Error(`fulcrum exited ${child.exitCode}: ${stderr}`);
    return (await fetch(admin + '/api/status').then((r) => r.ok, () => false));
  }, 15_000, 'fulcrum run to answer on its admin port');
});

afterAll(async () => {
  if (child && child.exitCode === null) child.kill('SIGKILL');
  for (const s of servers) await s.close();
  await game?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function client(port: number): Promise<Socket> {
  return connectClient(port, HOST, CLIENT);
}

describe('connection and transition log lines', () => {
  const expected: Array<{ service: string; reason: string; client: string; bytes_in?: number; bytes_out?: number; backend: string | null }> = [];

  it('produces traffic that ends each way', async () => {
    // client_closed: greeting (3 bytes) + 6 echoed, 6 sent.
    const a = await client(ports.web);
    expect(await readLine(a)).toBe('n0');
    a.write('hello\n');
    expect(await readLine(a)).toBe('hello');
    const aAddr = `${CLIENT}:${a.localPort}`;
    a.destroy();
    expected.push({ service: 'web', reason: 'client_closed', client: aAddr, bytes_in: 6, bytes_out: 9, backend: named.address });
    // Lines are batched per worker and held to be written in time order, but show within a second.
    await waitFor(() => stdout.includes(`"client":"${aAddr}"`), 3000, 'the connection line while fulcrum runs');

    // server_closed
    const b = await client(ports.closing);
    const bAddr = `${CLIENT}:${b.localPort}`;
    expect(await readLine(b)).toBe('bye');
    await waitClose(b);
    b.destroy();
    expected.push({ service: 'closing', reason: 'server_closed', client: bAddr, bytes_in: 0, bytes_out: 4, backend: closer.address });

    // connect_failed: nothing listens behind "dead"
    const c = await client(ports.dead);
    const cAddr = `${CLIENT}:${c.localPort}`;
    await waitClose(c, 5000);
    c.destroy();
    expected.push({ service: 'dead', reason: 'connect_failed', client: cAddr, backend: `${HOST}:${deadPort}` });

    // idle_timeout
    const d = await client(ports.idle);
    const dAddr = `${CLIENT}:${d.localPort}`;
    expect(await readLine(d)).toBe('n0');
    await waitClose(d, 3000);
    d.destroy();
    expected.push({ service: 'idle', reason: 'idle_timeout', client: dAddr, bytes_in: 0, bytes_out: 3, backend: named.address });

    // A UDP flow: two datagrams each way, then idle. The backend answers "g|" + the datagram.
    const u = await UdpClient.open(CLIENT);
    expect(await u.ask('ping', ports.udp, HOST)).toBe('g|ping');
    expect(await u.ask('pong!', ports.udp, HOST)).toBe('g|pong!');
    const uAddr = `${CLIENT}:${u.port}`;
    await waitFor(() => stdout.includes(`"client":"${uAddr}"`), 3000, 'the flow line after its idle timeout');
    await u.close();
    expected.push({ service: 'udp', reason: 'idle_timeout', client: uAddr, bytes_in: 9, bytes_out: 13, backend: game.address });

    // A transition through the admin API: one 'backend state' line with from, to and cause.
    const r = await api(admin, 'POST', `/api/services/web/backends/${named.address}/state`, { state: 'drain' });
    expect(r.status).toBe(200);

    // no_backend: web has nothing ready now.
    const e = await client(ports.web);
    const eAddr = `${CLIENT}:${e.localPort}`;
    await waitClose(e, 3000);
    e.destroy();
    expected.push({ service: 'web', reason: 'no_backend', client: eAddr, backend: null });

    // A clean stop flushes what is still buffered.
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    lines = stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  });

  it('logs one line per closed connection with the tcplog fields and the right reason', () => {
    const conns = lines.filter((l) => l.msg === 'connection');
    expect(conns.length).toBe(expected.length);
    for (const want of expected) {
      const got = conns.filter((l) => l.client === want.client);
      expect(got, `a line for ${want.client} (${want.reason})`).toHaveLength(1);
      const line = got[0];
      expect(line).toMatchObject({ service: want.service, reason: want.reason, backend: want.backend });
      for (const field of ['connect_ms', 'queue_ms', 'duration_ms', 'bytes_in', 'bytes_out', 'retries']) expect(typeof line[field], field).toBe('number');
      if (want.bytes_in !== undefined) expect(line.bytes_in).toBe(want.bytes_in);
      if (want.bytes_out !== undefined) expect(line.bytes_out).toBe(want.bytes_out);
      expect(line.level).toBe(30);
      expect(typeof line.time).toBe('string');
    }
    const flow = conns.find((l) => l.service === 'udp')!;
    expect(flow).toMatchObject({ datagrams_in: 2, datagrams_out: 2 });
    expect(conns.find((l) => l.service === 'web')!.datagrams_in).toBeUndefined();
    const idle = conns.find((l) => l.reason === 'idle_timeout' && l.service === 'idle')!;
    expect(idle.duration_ms).toBeGreaterThanOrEqual(290);
    const failed = conns.find((l) => l.reason === 'connect_failed')!;
    expect(failed.connect_ms).toBe(-1);
    expect(failed.retries).toBe(0); // its only backend was tried: nothing to redispatch to
  });

  it('logs one line per backend transition with from, to and cause', () => {
    const transitions = lines.filter((l) => l.msg === 'backend state' && l.service === 'web' && l.to === 'drain');
    expect(transitions).toHaveLength(1);
    expect(transitions[0]).toMatchObject({ address: named.address, from: 'up', to: 'drain', cause: 'admin API' });
  });
});
