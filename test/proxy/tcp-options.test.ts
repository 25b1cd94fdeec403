/**
 * Per-service TCP options on both sockets of a session, read back from the kernel: tcp_keepalive
 * (the client's socket inherits it from its listener, the backend's gets it at connect; the
 * relay sets the probe interval and count too, Node's handles only the idle time) and
 * propagate_reset (a reset from one side resets the other; without it the other side sees a clean
 * close). Addresses: 127.2.27.0/24.
 */
import { readdirSync } from 'node:fs';
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FulcrumHandle } from '../../src/main.ts';
import { loadRelay, type RelayBinding } from '../../src/proxy/relay.ts';
import { connectClient, freePort, readLine, startEchoServer, startServer, waitFor, type TestServer } from '../helpers/net.ts';
import { startProxy } from './harness.ts';

const HOST = '127.2.27.1';
let echo: TestServer;
let resetting: TestServer;
/** The backend side of each connection `resetting` accepted, with how it ended. */
const backendSides: { socket: Socket; ended: string | null }[] = [];
let proxy: FulcrumHandle;
const ports = { ka: 0, kaProxy: 0, none: 0, rst: 0, plain: 0 };
/** getsockopt of any fd of this process (the relay's socketOptions reads, and changes nothing). */
let probe: RelayBinding;

beforeAll(async () => {
  const r = loadRelay({});
  if (typeof r === 'string') throw new Error(`the relay is needed to read socket options back: ${r}`);
  probe = r;
  echo = await startEchoServer(HOST);
  resetting = await startServer((socket) => {
    const side = { socket, ended: null as string | null };
    backendSides.push(side);
    socket.on('end', () => { side.ended ??= 'end'; socket.end(); });
    socket.on('error', (err: NodeJS.ErrnoException) => { side.ended ??= err.code ?? 'error'; });
    socket.on('close', () => { side.ended ??= 'close'; });
    socket.write('hello\n');
  }, HOST);
  for (const k of Object.keys(ports) as (keyof typeof ports)[]) ports[k] = await freePort(HOST);
  proxy = await startProxy(`
workers: 1
logging: { level: silent, connections: false }
services:
  - name: ka
    listen: ${HOST}:${ports.ka}
    tcp_keepalive: { idle: 7s, interval: 3s, count: 4 }
    backends: [{ address: ${echo.address} }]
  - name: ka_proxy
    listen: ${HOST}:${ports.kaProxy}
    accept_proxy: true
    tcp_keepalive: { idle: 9s, interval: 2s, count: 6 }
    backends: [{ address: ${echo.address} }]
  - name: none
    listen: ${HOST}:${ports.none}
    backends: [{ address: ${echo.address} }]
  - name: rst
    listen: ${HOST}:${ports.rst}
    propagate_reset: true
    backends: [{ address: ${resetting.address} }]
  - name: plain
    listen: ${HOST}:${ports.plain}
    backends: [{ address: ${resetting.address} }]
`);
});

afterAll(async () => {
  await proxy?.stop('test over');
  await echo?.close();
  await resetting?.close();
});

interface Options { keepalive: number; idle: number; interval: number; count: number; linger: number; lingerSeconds: number; local: number; peer: number }

/** Every TCP socket of this process, as the kernel has its options. */
function sockets(): Options[] {
  const out = new Int32Array(8);
  const found: Options[] = [];
  for (const name of readdirSync('/proc/self/fd')) {
    if (probe.socketOptions(Number(name), out) !== 0) continue;
    const [keepalive, idle, interval, count, linger, lingerSeconds, local, peer] = out;
    found.push({ keepalive, idle, interval, count, linger, lingerSeconds, local, peer });
  }
  return found;
}

/** fulcrum's two sockets of a session: the client's (accepted on `port`) and the backend's (to `backendPort`, from the port the backend saw). */
function sessionSockets(client: Socket, port: number, backendPort: number, backendPeer: number): { client: Options; backend: Options } {
  const all = sockets();
  const c = all.find((s) => s.local === port && s.peer === client.localPort);
  const b = all.find((s) => s.peer === backendPort && s.local === backendPeer);
  if (c === undefined || b === undefined) throw new Error(`session sockets not found: ${JSON.stringify(all)}`);
  return { client: c, backend: b };
}

/** The port fulcrum's backend socket has: the echo server tells no one, so the newest peer of the echo port is it. */
function newestBackendPeer(backendPort: number): number {
  const mine = sockets().filter((s) => s.local === backendPort && s.peer !== 0);
  return mine[mine.length - 1].peer;
}

/**
 * A client of `port` (sending `first` before its line when given), echoed once: fulcrum's two
 * sockets of its session as the kernel has them, and the client's own.
 */
async function throughFulcrum(port: number, first = ''): Promise<{ client: Options; backend: Options; own: Options | undefined }> {
  const c = await connectClient(port, HOST);
  try {
    c.write(`${first}x\n`);
    expect(await readLine(c)).toBe('x');
    const echoPort = Number(echo.address.split(':')[1]);
    return { ...sessionSockets(c, port, echoPort, newestBackendPeer(echoPort)), own: sockets().find((s) => s.local === c.localPort) };
  } finally {
    c.destroy();
  }
}

describe('tcp_keepalive', () => {
  const relay = (): boolean => proxy.pool.dataPath === 'relay';

  it('is set on the client socket and the backend socket, with interval and count on the relay', async () => {
    const { client, backend, own } = await throughFulcrum(ports.ka);
    for (const s of [client, backend]) {
      expect(s).toMatchObject({ keepalive: 1, idle: 7 });
      if (relay()) expect(s).toMatchObject({ interval: 3, count: 4 });
    }
    // The test's own end has no keepalive: what was read is fulcrum's.
    expect(own).toMatchObject({ keepalive: 0 });
  });

  it('is set on an accept_proxy client (a Node listener: the relay adds interval and count at connect)', async () => {
    const { client, backend } = await throughFulcrum(ports.kaProxy, 'PROXY TCP4 10.1.2.3 10.1.2.4 1111 2222\r\n');
    for (const s of [client, backend]) {
      expect(s).toMatchObject({ keepalive: 1, idle: 9 });
      if (relay()) expect(s).toMatchObject({ interval: 2, count: 6 });
    }
  });

  it('is off without the setting', async () => {
    const { client, backend } = await throughFulcrum(ports.none);
    expect(client.keepalive).toBe(0);
    expect(backend.keepalive).toBe(0);
  });
});

describe('propagate_reset', () => {
  /** A client of `port` whose backend side has said hello: the pair, and how the client's side ends. */
  async function session(port: number): Promise<{ client: Socket; backend: { socket: Socket; ended: string | null }; clientEnded: () => string | null }> {
    const n = backendSides.length;
    const client = await connectClient(port, HOST);
    let ended: string | null = null;
    client.on('end', () => { ended ??= 'end'; });
    client.on('error', (err: NodeJS.ErrnoException) => { ended ??= err.code ?? 'error'; });
    client.on('close', () => { ended ??= 'close'; });
    expect(await readLine(client)).toBe('hello');
    await waitFor(() => backendSides.length > n, 5000, 'backend connection');
    return { client, backend: backendSides[n], clientEnded: () => ended };
  }

  it('a client reset resets the backend connection', async () => {
    const { client, backend } = await session(ports.rst);
    client.resetAndDestroy();
    await waitFor(() => backend.ended !== null, 5000, 'backend side ended');
    expect(backend.ended).toBe('ECONNRESET');
  });

  it('a backend reset resets the client connection', async () => {
    const { backend, clientEnded } = await session(ports.rst);
    backend.socket.resetAndDestroy();
    await waitFor(() => clientEnded() !== null, 5000, 'client side ended');
    expect(clientEnded()).toBe('ECONNRESET');
  });

  it('without it, either reset reaches the other side as a clean close', async () => {
    const a = await session(ports.plain);
    a.client.resetAndDestroy();
    await waitFor(() => a.backend.ended !== null, 5000, 'backend side ended');
    expect(a.backend.ended).toBe('end');
    const b = await session(ports.plain);
    b.backend.socket.resetAndDestroy();
    await waitFor(() => b.clientEnded() !== null, 5000, 'client side ended');
    expect(b.clientEnded()).toBe('end');
    b.client.destroy();
  });
});
