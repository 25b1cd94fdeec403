/**
 * The probe thread (src/health/probe-thread.ts) with real probes over loopback (127.3.9.x): results
 * come back, aborts reach the probe, and a thread that ends mid-probe answers the probe in flight
 * with a failure and is started again for the next one.
 */
import { threadId } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configSchema, type HealthConfig } from '../../src/config/schema.ts';
import { boundedOutput, ProbeThread } from '../../src/health/probe-thread.ts';
import { createLogger, silentLogger } from '../../src/observability/log.ts';
import { startServer, waitFor, type TestServer } from '../helpers/net.ts';

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
    const accepted = silent.accepted;
    const pending = thread.probe('send_expect')(target(silent), h, controller.signal);
    await waitFor(() => silent.accepted > accepted, 2000, 'the probe to connect'); // it waits for an answer now
    controller.abort();
    const r = await pending;
    expect(r.ok).toBe(false);
    expect(r.latency_ms).toBeLessThan(2000);
  });

  it('a thread that ends mid-probe fails that probe, and the next probe runs on a new one', async () => {
    const h = health({ type: 'send_expect', interval: '10s', timeout: '5s', send_expect: { send: 'PING\\r\\n', expect: '+PONG' } });
    const accepted = silent.accepted;
    const pending = thread.probe('send_expect')(target(silent), h, new AbortController().signal);
    await waitFor(() => silent.accepted > accepted, 2000, 'the probe to connect'); // mid-probe now
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

describe('what the drivers print', () => {
  it('reaches the log (mysql2 on packets out of order), and the thread keeps probing', async () => {
    const lines: { msg: string; line?: string; stream?: string }[] = [];
    const own = new ProbeThread(createLogger('info', { write: (s: string) => void lines.push(JSON.parse(s)) }));
    // A "MySQL server" whose 200 packets carry the wrong sequence number: mysql2 prints "got
    // packets out of order" with console.error for each it reads before it gives up (two here).
    const packet = Buffer.concat([Buffer.from([4, 0, 0, 9]), Buffer.from('xxxx')]);
    const hostile = await startServer((socket) => socket.end(Buffer.concat(Array.from({ length: 200 }, () => packet))), HOST);
    try {
      const mysql = own.probe('mysql');
      const result = await mysql(target(hostile), health({ type: 'mysql', mysql: { user: 'u' } }), new AbortController().signal);
      expect(result.ok).toBe(false);
      // The thread's stderr reaches this thread asynchronously: wait for it (up to 2 s).
      const output = () => lines.filter((l) => l.msg === 'probe driver output');
      await waitFor(() => output().length > 0, 2000, 'the driver\'s output in the log');
      expect(output().every((l) => l.stream === 'stderr')).toBe(true);
      expect(output()[0].line).toMatch(/out of order/);
      // The thread still answers.
      expect(await own.probe('tcp')(target(silent), health({ type: 'tcp' }), new AbortController().signal)).toMatchObject({ ok: true });
    } finally {
      await own.close();
      await hostile.close();
    }
  });
});

describe('boundedOutput', () => {
  it('logs at most 20 lines a minute, each cut to 200 characters, and counts the rest', () => {
    const lines: { msg: string; line?: string; dropped?: number }[] = [];
    const log = createLogger('info', { write: (s: string) => void lines.push(JSON.parse(s)) });
    let clock = 0;
    const write = boundedOutput(log, () => clock);
    write('stderr', Buffer.from(`${'x'.repeat(1000)}\n\n`));
    for (let i = 0; i < 99; i++) write('stderr', Buffer.from(`line ${i}\n`));
    expect(lines).toHaveLength(20);
    expect(lines[0].line).toHaveLength(200);
    clock = 60_000;
    write('stdout', Buffer.from('next minute\n'));
    expect(lines.slice(20).map((l) => l.dropped ?? l.line)).toEqual([80, 'next minute']);
  });
});
