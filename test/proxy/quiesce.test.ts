/**
 * The quiesce filter a BGP drain puts on a service's listeners (src/bgp/index.ts; the setsockopt
 * is the relay's `quiesce`, loaded on the JavaScript path too): a new client's SYN goes
 * unanswered — its connect stays pending, neither refused nor accepted — while an established
 * connection keeps exchanging data; with the filter off, the client's SYN retransmit is accepted
 * and the pending connect completes. On every worker, a worker added by a resize while quiesced
 * included, and on both kinds of listener: the relay's (plain) and a Node server's (accept_proxy,
 * the relay's lent clients; the JavaScript path's for both). Addresses: 127.2.43.0/24.
 */
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FulcrumHandle } from '../../src/main.ts';
import { quiesceFilter } from '../../src/proxy/relay.ts';
import { connectClient, freePort, readLine, startEchoServer, staysFalse, waitFor, type TestServer } from '../helpers/net.ts';
import { startProxy } from './harness.ts';

const HOST = '127.2.43.1';
/** Longer than the initial RTO (1 s): a client's SYN and its first retransmit both went unanswered. */
const UNANSWERED_MS = 1800;

let echo: TestServer;
let proxy: FulcrumHandle;
const ports = { plain: 0, proxied: 0 };

beforeAll(async () => {
  echo = await startEchoServer(HOST);
  ports.plain = await freePort(HOST);
  ports.proxied = await freePort(HOST);
  proxy = await startProxy(`
workers: 2
logging: { level: silent, connections: false }
services:
  - name: plain
    listen: ${HOST}:${ports.plain}
    backends: [{ address: ${echo.address} }]
  - name: proxied
    listen: ${HOST}:${ports.proxied}
    accept_proxy: true
    backends: [{ address: ${echo.address} }]
`);
});

afterAll(async () => {
  await proxy?.stop('test over');
  await echo?.close();
});

/** A connect in flight, with what became of it. */
interface Attempt { socket: Socket; state: 'pending' | 'connected' | string }

function attempt(port: number): Attempt {
  const socket = connect({ host: HOST, port });
  const a: Attempt = { socket, state: 'pending' };
  socket.once('connect', () => (a.state = 'connected'));
  socket.once('error', (err: NodeJS.ErrnoException) => (a.state = err.code ?? err.message));
  return a;
}

/** One echoed line (a PROXY v1 header first where the service reads one). */
async function echoes(s: Socket, line: string): Promise<string> {
  s.write(`${line}\n`);
  return readLine(s);
}

async function opened(service: keyof typeof ports): Promise<Socket> {
  const s = await connectClient(ports[service], HOST);
  if (service === 'proxied') s.write('PROXY TCP4 192.0.2.7 127.2.43.1 40000 80\r\n');
  expect(await echoes(s, 'first')).toBe('first');
  return s;
}

describe('quiesce: new SYNs unanswered, open connections go on', () => {
  it('the filter loads on this data path', () => {
    expect(typeof quiesceFilter()).toBe('function');
  });

  for (const service of ['plain', 'proxied'] as const) {
    it(`${service}: while quiesced a new connect stays pending and an established connection exchanges data; unquiesced, the pending connect completes`, async () => {
      const established = await opened(service);
      expect(await proxy.pool.quiesce([service])).toEqual([]);
      // Several source ports: the kernel spreads SYNs over both workers' listeners (SO_REUSEPORT).
      const pending = Array.from({ length: 8 }, () => attempt(ports[service]));
      const other = service === 'plain' ? 'proxied' : 'plain';
      const elsewhere = attempt(ports[other]); // another service's listener is untouched
      await waitFor(() => elsewhere.state === 'connected', 5000, `a connect to ${other}`);
      await staysFalse(() => pending.some((a) => a.state !== 'pending'), UNANSWERED_MS, 'a connect to the quiesced service was answered');
      expect(await echoes(established, 'still here')).toBe('still here');

      expect(await proxy.pool.quiesce([])).toEqual([]);
      // The next SYN retransmit (3 s after the first SYN) finds no filter.
      await waitFor(() => pending.every((a) => a.state === 'connected'), 10_000, 'the pending connects to complete');
      if (service === 'proxied') pending[0].socket.write('PROXY TCP4 192.0.2.8 127.2.43.1 40001 80\r\n');
      expect(await echoes(pending[0].socket, 'after')).toBe('after');
      expect(await echoes(established, 'and still')).toBe('and still');
      for (const a of [...pending, elsewhere]) a.socket.destroy();
      established.destroy();
    });
  }

  it('a worker a resize adds while quiesced is quiesced from its first bind', async () => {
    expect(await proxy.pool.quiesce(['plain'])).toEqual([]);
    expect(await proxy.pool.resize(3, 1000)).toEqual([]);
    expect(proxy.pool.size).toBe(3);
    // 24 source ports: each of the three listeners gets some (a miss of one is (2/3)^24 ≈ 6e-5).
    const pending = Array.from({ length: 24 }, () => attempt(ports.plain));
    await staysFalse(() => pending.some((a) => a.state !== 'pending'), UNANSWERED_MS, 'a connect to the quiesced service was answered');
    expect(await proxy.pool.quiesce([])).toEqual([]);
    await waitFor(() => pending.every((a) => a.state === 'connected'), 10_000, 'the pending connects to complete');
    for (const a of pending) a.socket.destroy();
  });

  it('without a relay build the filter is not there: the pool names each listener it cannot quiesce, and why', async () => {
    const missing = '/nonexistent/relay.node is not built (npm install builds it with the C compiler: apt-get install gcc libc6-dev)';
    expect(quiesceFilter({ FULCRUM_RELAY: '/nonexistent/relay.node' })).toBe(missing);
    // Workers copy the environment when they start: this proxy's run the JavaScript path without a relay.
    const saved = process.env.FULCRUM_RELAY;
    process.env.FULCRUM_RELAY = '/nonexistent/relay.node';
    const port = await freePort(HOST);
    let bare: FulcrumHandle | undefined;
    try {
      bare = await startProxy(`
workers: 1
logging: { level: silent, connections: false }
services:
  - name: bare
    listen: ${HOST}:${port}
    backends: [{ address: ${echo.address} }]
`);
    } finally {
      if (saved === undefined) delete process.env.FULCRUM_RELAY;
      else process.env.FULCRUM_RELAY = saved;
    }
    try {
      expect(bare.pool.dataPath).toBe('javascript');
      expect(await bare.pool.quiesce(['bare'])).toEqual([{
        service: 'bare', address: `${HOST}:${port}`, code: 'ENOSYS',
        message: `cannot hold new connections back: the quiesce filter is in the native relay, which cannot be loaded (${missing})`,
      }]);
      // Nothing is held back: the service still answers at once.
      const s = await connectClient(port, HOST);
      expect(await echoes(s, 'served')).toBe('served');
      s.destroy();
    } finally {
      await bare.stop('test over');
    }
  });
});
