/**
 * The handshake's last ACK to the backend rides on the first bytes when there are bytes to send
 * at once (the relay's js_connect; HAProxy's tcp-smart-connect): a PROXY header, or a request the
 * client sent before the backend connection was opened. With nothing to send (a server-first
 * protocol: the backend speaks first) the ACK goes at once — holding it would hold the backend's
 * accept, and its greeting, up to 200 ms. Seen on the wire (tcpdump on lo): per connection to the
 * backend, what followed the SYN. The relay only (Node's handles have no TCP_QUICKACK).
 * Addresses: 127.2.47.0/24.
 */
import type { Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { FulcrumHandle } from '../../src/main.ts';
import { captureLoopback, flowsTo, type Capture, type Segment } from '../helpers/capture.ts';
import { connectClient, freePort, readLine, startEchoServer, startServer, waitFor, type TestServer } from '../helpers/net.ts';
import { activeCounts, startProxy } from './harness.ts';

const HOST = '127.2.47.1';
let echo: TestServer;
let greeter: TestServer;
let proxy: FulcrumHandle;
const ports = { queued: 0, greets: 0, proxied: 0 };
let open: Socket[] = [];

beforeAll(async () => {
  echo = await startEchoServer('127.2.47.2');
  // Speaks first, reads (and drops) what comes — a PROXY header — and ends when its client ends.
  greeter = await startServer((s) => { s.write('hello\n'); s.resume(); s.on('end', () => s.end()); }, '127.2.47.3');
  for (const k of Object.keys(ports) as (keyof typeof ports)[]) ports[k] = await freePort(HOST);
  proxy = await startProxy(`
workers: 1
logging: { level: silent, connections: false }
services:
  - name: queued
    listen: ${HOST}:${ports.queued}
    max_connections: 1
    queue: { max: 20, timeout: 10s }
    backends: [{ address: ${echo.address} }]
  - name: greets
    listen: ${HOST}:${ports.greets}
    backends: [{ address: ${greeter.address} }]
  - name: proxied
    listen: ${HOST}:${ports.proxied}
    send_proxy: v1
    backends: [{ address: ${greeter.address} }]
`);
});

afterEach(() => {
  for (const s of open) s.destroy();
  open = [];
});

afterAll(async () => {
  await proxy?.stop('test over');
  await echo?.close();
  await greeter?.close();
});

async function client(port: number): Promise<Socket> {
  const s = await connectClient(port, HOST);
  open.push(s);
  return s;
}

/** What each connection to `backend` opened during the capture carried after its SYN: its second segment. */
function afterSyn(segments: Segment[], backend: TestServer): Segment[] {
  const flows = flowsTo(segments, `${backend.host}.${backend.port}`);
  return flows.filter((f) => f[0].flags === 'S' && f.length > 1).map((f) => f[1]);
}

/** The second segments of `n` connections to `backend`, once tcpdump has printed them. */
async function secondSegments(capture: Capture, backend: TestServer, n: number): Promise<Segment[]> {
  await waitFor(() => afterSyn(capture.segments(), backend).length >= n, 5000, `${n} connections to the backend on the wire`);
  return afterSyn(await capture.stop(), backend);
}

/** Five clients greeted through the service at `port` (the greeter's): what followed each connection's SYN to it. */
async function greeted(port: number): Promise<Segment[]> {
  const capture = await captureLoopback(`tcp and host ${greeter.host} and port ${greeter.port}`);
  for (let i = 0; i < 5; i++) {
    const c = await client(port);
    expect(await readLine(c)).toBe('hello');
    c.destroy();
  }
  const second = await secondSegments(capture, greeter, 5);
  expect(second).toHaveLength(5);
  return second;
}

const isPureAck = (s: Segment) => s.flags === '.' && s.length === 0;

describe.skipIf(process.env.FULCRUM_RELAY === 'off')('the handshake ACK to the backend', () => {
  it('rides on a request the client sent before its backend connection was opened', async () => {
    // One connection holds the service's only slot; ten more are queued, each having sent its
    // request, so their requests are waiting when their backend connections open.
    const holder = await client(ports.queued);
    holder.write('hold\n');
    expect(await readLine(holder)).toBe('hold');
    const capture = await captureLoopback(`tcp and host ${echo.host} and port ${echo.port}`);
    const waiting: Socket[] = [];
    for (let i = 0; i < 10; i++) {
      const c = await client(ports.queued);
      await new Promise<void>((resolve, reject) => c.write(`request ${i}\n`, (err) => (err ? reject(err) : resolve())));
      waiting.push(c);
    }
    await waitFor(() => activeCounts(proxy, 'queued', [echo.address]).queued === 10, 5000, 'ten queued');
    holder.destroy();
    for (let i = 0; i < 10; i++) {
      expect(await readLine(waiting[i])).toBe(`request ${i}`);
      waiting[i].destroy();
    }
    await waitFor(() => activeCounts(proxy, 'queued', [echo.address]).active === 0, 5000, 'all released');
    const second = await secondSegments(capture, echo, 10);
    expect(second).toHaveLength(10);
    for (const s of second) {
      expect(s.flags).toBe('P.');
      expect(s.length).toBe(`request 0\n`.length);
    }
  });

  it('rides on the PROXY header', async () => {
    const second = await greeted(ports.proxied);
    for (const s of second) {
      expect(s.flags).toBe('P.');
      expect(s.length).toBeGreaterThan('PROXY TCP4 '.length); // the v1 line, whose client port varies
    }
  });

  it('is sent at once when there is nothing to send (the backend speaks first)', async () => {
    for (const s of await greeted(ports.greets)) expect(isPureAck(s)).toBe(true);
  });
});
