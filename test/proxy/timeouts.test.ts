/**
 * Idle timeout and graceful stop. Addresses: 127.2.6.0/24.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FulcrumHandle } from '../../src/main.ts';
import { connectClient, freePort, listening, readLine, sleep, startEchoServer, startNamedServer, waitClose, waitFor, type TestServer } from '../helpers/net.ts';
import { reasons, startProxy } from './harness.ts';

const HOST = '127.2.6.1';
let echo: TestServer;
let named: TestServer;
const handles: FulcrumHandle[] = [];

beforeAll(async () => {
  echo = await startEchoServer(HOST);
  named = await startNamedServer('n', HOST);
});

afterAll(async () => {
  await Promise.all(handles.map((h) => h.stop('test over')));
  await echo.close();
  await named.close();
});

async function proxyFor(extra: string, serviceExtra: string, backend: string): Promise<{ h: FulcrumHandle; port: number }> {
  const port = await freePort(HOST);
  const h = await startProxy(`
workers: 2
logging: { level: silent, connections: false }
${extra}
services:
  - name: s
    listen: ${HOST}:${port}
${serviceExtra}
    backends: [{ address: ${backend} }]
`);
  handles.push(h);
  return { h, port };
}

function echoOnce(s: import('node:net').Socket, text: string): Promise<string> {
  return new Promise((resolve) => {
    s.once('data', (d) => resolve(d.toString()));
    s.write(text);
  });
}

describe('timeouts and stop', () => {
  it('idle timeout closes a silent session, and only a silent one', async () => {
    const { h, port } = await proxyFor('', '    timeouts: { idle: 400ms }', echo.address);
    const busy = await connectClient(port, HOST);
    // Traffic every 150 ms keeps a session alive well past the idle timeout. Real time on purpose:
    // the pause paces the client (it is the traffic, not a wait for a result), and the idle timer
    // being measured runs in the workers' data plane.
    for (let i = 0; i < 6; i++) {
      expect(await echoOnce(busy, `ping${i}`)).toBe(`ping${i}`);
      await sleep(150);
    }
    expect(busy.readableEnded).toBe(false);
    const t0 = Date.now();
    await waitClose(busy, 3000);
    const silent = Date.now() - t0;
    expect(silent).toBeGreaterThanOrEqual(250);
    expect(silent).toBeLessThan(2000);
    busy.destroy();
    await waitFor(() => reasons(h, 's').idle_timeout > 0, 2000, 'the session to be counted');
    expect(reasons(h, 's').idle_timeout).toBe(1);
  });

  it('graceful stop: no new connections, an open session finishes within the grace', async () => {
    const { h, port } = await proxyFor('shutdown_grace: 5s', '', echo.address);
    const s = await connectClient(port, HOST);
    expect(await echoOnce(s, 'before')).toBe('before');
    const t0 = Date.now();
    const stopped = h.stop('test');
    await waitFor(() => !listening(HOST, port), 2000, 'the listeners to close');
    await expect(connectClient(port, HOST)).rejects.toThrow(/ECONNREFUSED/);
    expect(await echoOnce(s, 'during')).toBe('during');
    s.end();
    await waitClose(s);
    await stopped;
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(reasons(h, 's').client_closed).toBe(1);
    expect(reasons(h, 's').shutdown).toBe(0);
  });

  it('graceful stop: a session still open at the end of the grace is closed (reason shutdown)', async () => {
    const { h, port } = await proxyFor('shutdown_grace: 300ms', '', named.address);
    const s = await connectClient(port, HOST);
    expect(await readLine(s)).toBe('n');
    const t0 = Date.now();
    await h.stop('test');
    await waitClose(s, 2000);
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(250);
    expect(took).toBeLessThan(3000);
    s.destroy();
    expect(reasons(h, 's').shutdown).toBe(1);
  });
});
