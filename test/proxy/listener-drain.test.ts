/**
 * Drain before close on the JavaScript path (src/proxy/transport.ts closeAfterDrain): the
 * connections the kernel queued on a Node listener that closes (a reload removing its address, a
 * pause, a stop) are accepted and served, not reset. The relay's counterpart is drain_listener
 * (relay/handoff.c, test/proxy/handoff tests).
 *
 * How connections get queued for sure: this thread's event loop is held while a client process
 * connects (the kernel completes the handshakes and queues them), and the close is asked for
 * before the loop runs again — as a worker busy with other sessions would see a reload arrive.
 * libuv takes one connection per loop turn, so the drain has to go on for as many turns.
 * The listener is alone in its SO_REUSEPORT group, so net.ipv4.tcp_migrate_req cannot move them:
 * only the drain keeps them. A plain close() in the same spot resets every one (the control).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { acceptOn, closeAfterDrain, type ListenerRef, type ServerTransport } from '../../src/proxy/transport.ts';

const HOST = '127.62.0.1';
const CLIENTS = 40;
const dir = mkdtempSync(join(tmpdir(), 'fulcrum-drain-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Blocks this thread until `file` exists (the client's signal), bounded. Not a sleep: it waits for the condition. */
function holdLoopUntil(file: string, boundMs: number): void {
  const tick = new Int32Array(new SharedArrayBuffer(4));
  const deadline = Date.now() + boundMs;
  while (!existsSync(file)) {
    if (Date.now() > deadline) throw new Error(`${file} did not appear within ${boundMs} ms`);
    Atomics.wait(tick, 0, 0, 5);
  }
}

/**
 * Connects CLIENTS sockets while this loop is held, writes `ready` once every handshake is done
 * (queued on the listener), then reports per socket what the server sent or the error code.
 */
async function queuedClients(port: number, close: (server: Server) => void, server: Server, tag: string): Promise<string[]> {
  const ready = join(dir, `${tag}.ready`);
  const child = spawn(process.execPath, ['-e', `
    const net = require('node:net');
    const results = new Array(${CLIENTS});
    let connected = 0, done = 0;
    for (let i = 0; i < ${CLIENTS}; i++) {
      const s = net.connect(${port}, '${HOST}');
      let got = '';
      s.on('connect', () => { if (++connected === ${CLIENTS}) require('node:fs').writeFileSync(${JSON.stringify(ready)}, ''); });
      s.on('data', (d) => (got += d));
      const end = (r) => { if (results[i] !== undefined) return; results[i] = r; if (++done === ${CLIENTS}) { console.log(JSON.stringify(results)); process.exit(0); } };
      s.on('error', (e) => end(e.code));
      s.on('close', () => end(got));
    }
    setTimeout(() => { console.log(JSON.stringify(results)); process.exit(0); }, 15000).unref();
  `], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  // The child has to start first: the loop is held only once it runs (spawn is asynchronous).
  await new Promise<void>((r) => child.once('spawn', () => r()));
  holdLoopUntil(ready, 15_000);
  close(server);
  await exited;
  return JSON.parse(out) as string[];
}

let accepted = 0;
function listen(): Promise<Server> {
  const server = createServer((s) => {
    accepted++;
    s.end('ok');
  });
  return new Promise((resolve) => server.listen({ host: HOST, port: 0, reusePort: true, backlog: 1024 }, () => resolve(server)));
}

describe('closing a Node listener', () => {
  it('closeAfterDrain serves every connection queued on it, then stops listening', async () => {
    const server = await listen();
    const port = (server.address() as { port: number }).port;
    let closed = false;
    const results = await queuedClients(port, (s) => void closeAfterDrain(s, () => accepted).then(() => (closed = true)), server, 'drain');
    expect(results).toEqual(new Array(CLIENTS).fill('ok'));
    expect(closed).toBe(true);
    // It listens no more: a new connection is refused.
    const refused = await new Promise<string>((resolve) => {
      const s = connect(port, HOST);
      s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
      s.on('connect', () => { s.destroy(); resolve('connected'); });
    });
    expect(refused).toBe('ECONNREFUSED');
  }, 30_000);

  it('a listener the worker wires (acceptOn) is drained by its own count: each queued client gets a clean close, none a reset', async () => {
    // The transport closes each accepted handle at once (a FIN, read as ''): what matters is that
    // closeAfterDrain's default count (acceptOn's) kept the listener open until the queue was empty.
    const server = createServer();
    const transport = { core: null, adopt: (h: { close(): void }) => h.close() } as unknown as ServerTransport;
    acceptOn(server, {} as ListenerRef, transport);
    await new Promise<void>((resolve) => server.listen({ host: HOST, port: 0, reusePort: true, backlog: 1024 }, () => resolve()));
    const port = (server.address() as { port: number }).port;
    const results = await queuedClients(port, (s) => void closeAfterDrain(s), server, 'wired');
    expect(results).toEqual(new Array(CLIENTS).fill(''));
  }, 30_000);

  it('a plain close in the same spot resets them (what the drain prevents)', async () => {
    const server = await listen();
    const port = (server.address() as { port: number }).port;
    const results = await queuedClients(port, (s) => s.close(), server, 'plain');
    expect(results.filter((r) => r === 'ok')).toEqual([]);
    expect(new Set(results)).toEqual(new Set(['ECONNRESET']));
  }, 30_000);
});
