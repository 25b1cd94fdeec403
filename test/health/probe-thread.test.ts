/**
 * The probe thread (src/health/probe-thread.ts) with real probes over loopback (127.3.9.x): results
 * come back, aborts reach the probe, and a thread that ends mid-probe answers the probe in flight
 * with a failure and is started again for the next one.
 */
import { threadId } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configSchema, type HealthConfig } from '../../src/config/schema.ts';
import { ProbeThread } from '../../src/health/probe-thread.ts';
import { silentLogger } from '../../src/observability/log.ts';
import { startServer, type TestServer } from '../helpers/net.ts';

const HOST = '127.3.9.1';
let silent: TestServer; // accepts and never answers
let thread: ProbeThread;

function health(h: Record<string, unknown>): HealthConfig {
  return configSchema.parse({ services: [{ name: 's', listen: `${HOST}:1`, health: h, backends: [{ address: `${HOST}:2` }] }] }).services[0].health!;
}
const target = (s: TestServer) => ({ host: HOST, port: s.port });

beforeAll(async () => {
  silent = await startServer(() => undefined, HOST);
  thread = new ProbeThread(silentLogger);
});
afterAll(async () => {
  await thread.close();
  await silent.close();
});

describe('ProbeThread', () => {
  it('runs probes on its own thread and gives their results', async () => {
    const tcp = thread.probe('tcp');
    await thread.ready();
    expect(thread.threadId).not.toBeNull();
    expect(thread.threadId).not.toBe(threadId); // not this one
    expect(await tcp(target(silent), health({ type: 'tcp' }), new AbortController().signal)).toMatchObject({ ok: true, reason: 'connected' });
    expect(await tcp({ host: HOST, port: 1 }, health({ type: 'tcp' }), new AbortController().signal)).toMatchObject({ ok: false, reason: 'connection refused' });
  });

  it('passes an abort on to the probe', async () => {
    const controller = new AbortController();
    const h = health({ type: 'send_expect', interval: '10s', timeout: '5s', send_expect: { send: 'PING\\r\\n', expect: '+PONG' } });
    const pending = thread.probe('send_expect')(target(silent), h, controller.signal);
    setTimeout(() => controller.abort(), 100);
    const r = await pending;
    expect(r.ok).toBe(false);
    expect(r.latency_ms).toBeLessThan(2000);
  });

  it('a thread that ends mid-probe fails that probe, and the next probe runs on a new one', async () => {
    const h = health({ type: 'send_expect', interval: '10s', timeout: '5s', send_expect: { send: 'PING\\r\\n', expect: '+PONG' } });
    const pending = thread.probe('send_expect')(target(silent), h, new AbortController().signal);
    await new Promise((r) => setTimeout(r, 100));
    const first = thread.threadId;
    thread.unresponsive('test'); // as the monitor does when a probe outlives its timeout and margin
    expect(await pending).toMatchObject({ ok: false, reason: expect.stringMatching(/^probe thread ended \(code \d+\) during the probe$/) });
    expect(await thread.probe('tcp')(target(silent), health({ type: 'tcp' }), new AbortController().signal)).toMatchObject({ ok: true });
    expect(thread.threadId).not.toBe(first);
  });

  it('a probe the thread cannot run is that probe\'s failure; the thread goes on', async () => {
    const before = thread.threadId ?? (await thread.ready(), thread.threadId);
    const r = await thread.probe('no-such-type' as HealthConfig['type'])(target(silent), health({ type: 'tcp' }), new AbortController().signal);
    expect(r).toMatchObject({ ok: false, reason: expect.stringMatching(/^probe error: /) });
    expect(thread.threadId).toBe(before);
  });
});
