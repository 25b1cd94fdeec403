/**
 * One backend's trouble stays its own (src/health/probe-thread.ts): a probe thread that ends with
 * several probes in flight fails none of them (they are skipped and probed again) and moves their
 * backends to threads of their own; a hostile backend in one service never takes down a real
 * redis in another. Real servers on 127.3.10.x: a silent one, garbage streamers, redis-server.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configSchema, type HealthConfig } from '../../src/config/schema.ts';
import { HealthMonitor, type ProbeEvent, type TransitionEvent } from '../../src/health/monitor.ts';
import { ProbeThread } from '../../src/health/probe-thread.ts';
import { silentLogger } from '../../src/observability/log.ts';
import { startServer, waitFor, type TestServer } from '../helpers/net.ts';
import { startRedis, type RedisServer } from '../helpers/redis.ts';

const HOST = '127.3.10.1';
let silent: TestServer;
/** Connections the silent server has accepted: a probe is in flight once its connection is. */
let silentAccepted = 0;
let redis: RedisServer;
const hostile: TestServer[] = [];

function health(h: Record<string, unknown>): HealthConfig {
  return configSchema.parse({ services: [{ name: 's', listen: `${HOST}:1`, health: h, backends: [{ address: `${HOST}:2` }] }] }).services[0].health!;
}
const slow = () => health({ type: 'send_expect', interval: '10s', timeout: '5s', send_expect: { send: 'PING\\r\\n', expect: '+PONG' } });

/** A server that answers every connection with `reply` forever (as fast as the socket takes it). */
function streamer(reply: Buffer): Promise<TestServer> {
  return startServer((s) => {
    s.on('error', () => {});
    const pump = (): void => {
      while (!s.destroyed && s.write(reply));
      if (!s.destroyed) s.once('drain', pump);
    };
    pump();
  }, HOST);
}

beforeAll(async () => {
  silent = await startServer((s) => {
    silentAccepted++;
    s.on('error', () => {});
  }, HOST);
  redis = await startRedis({ host: HOST });
  hostile.push(await streamer(Buffer.alloc(64 * 1024, 'x'))); // not RESP at all
  hostile.push(await streamer(Buffer.from('*4096\r\n' + '*1\r\n'.repeat(2000)))); // deep arrays, never whole
  hostile.push(await streamer(Buffer.from(`$60000\r\n${'y'.repeat(60_000)}`))); // a bulk string that never ends
  hostile.push(await streamer(Buffer.from('+OK\r\n'.repeat(10_000)))); // replies nobody asked for
});
afterAll(async () => {
  await silent?.close();
  await redis?.stop();
  for (const h of hostile) await h.close();
});

describe('a probe thread that ends with several probes in flight', () => {
  it('fails none of them, moves their backends to threads of their own, and the next end touches only its own', async () => {
    const thread = new ProbeThread(silentLogger);
    try {
      const probe = thread.probe('send_expect');
      const target = { host: HOST, port: silent.port };
      const accepted = silentAccepted;
      const inFlight = ['hostile\u0000a', 'cache\u0000r', 'hostile\u0000b'].map((key) => probe(target, slow(), new AbortController().signal, key));
      await waitFor(() => silentAccepted - accepted === 3, 10_000, 'three probes in flight');
      thread.unresponsive('test: as the monitor does when a probe outlives its timeout', 'hostile\u0000a');
      for (const r of await Promise.all(inFlight)) {
        expect(r).toMatchObject({ ok: false, skipped: expect.stringMatching(/^probe thread ended/) });
        expect(r.reason).toMatch(/^not probed: probe thread ended \(code \d+\) during the probe with 2 other probes in flight/);
      }
      expect(thread.isolated).toBe(3);

      // The cache's next probe runs on its own thread: a real redis answers.
      const cache = await thread.probe('redis')({ host: HOST, port: redis.port }, health({ type: 'redis' }), new AbortController().signal, 'cache\u0000r');
      expect(cache).toMatchObject({ ok: true, reason: 'role primary' });

      // The hostile backend's thread ends again: its probe, alone there, fails; the cache's probe in flight is not touched.
      const controller = new AbortController();
      const before = silentAccepted;
      const cacheSlow = probe(target, slow(), controller.signal, 'cache\u0000r');
      const hostileSlow = probe(target, slow(), new AbortController().signal, 'hostile\u0000a');
      await waitFor(() => silentAccepted - before === 2, 10_000, 'two probes in flight');
      thread.unresponsive('test again', 'hostile\u0000a');
      expect(await hostileSlow).toMatchObject({ ok: false, reason: expect.stringMatching(/^probe thread ended \(code \d+\) during the probe$/) });
      expect((await hostileSlow).skipped).toBeUndefined();
      controller.abort();
      const r = await cacheSlow;
      expect(r.skipped).toBeUndefined();
      expect(r.reason).not.toMatch(/thread/);

      // A backend no longer probed gives its thread back.
      thread.forget('hostile\u0000b');
      expect(thread.isolated).toBe(2);
    } finally {
      await thread.close();
    }
  });
});

describe('a hostile service beside a real redis', () => {
  it('the redis is never marked down while the hostile backends are', async () => {
    const config = configSchema.parse({
      services: [
        { name: 'hostile', listen: `${HOST}:1`, health: { type: 'redis', interval: '50ms', timeout: '200ms', rise: 1, fall: 1 },
          backends: hostile.map((h) => ({ address: `${HOST}:${h.port}` })) },
        // The cache's timeout is generous: what this test looks for is a thread crash or a starved
        // thread failing its probes, not how fast a loaded machine answers.
        { name: 'cache', listen: `${HOST}:2`, health: { type: 'redis', interval: '50ms', timeout: '2s', rise: 1, fall: 1 },
          backends: [{ address: redis.address }] },
      ],
    });
    const monitor = new HealthMonitor(config);
    const transitions: TransitionEvent[] = [];
    const cacheProbes: ProbeEvent[] = [];
    monitor.on('transition', (t: TransitionEvent) => transitions.push(t));
    monitor.on('probe', (p: ProbeEvent) => { if (p.service === 'cache') cacheProbes.push(p); });
    try {
      const end = Date.now() + 20_000;
      while (cacheProbes.filter((p) => p.ok).length < 40 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
      expect(cacheProbes.filter((p) => p.ok).length).toBeGreaterThanOrEqual(40);
      expect(transitions.filter((t) => t.service === 'cache')).toEqual([expect.objectContaining({ up: true, initial: true })]);
      expect(cacheProbes.filter((p) => !p.ok && p.skipped === undefined)).toEqual([]);
      const hostileDown = new Set(transitions.filter((t) => t.service === 'hostile' && !t.up).map((t) => t.address));
      expect(hostileDown.size).toBe(hostile.length);
      for (const h of hostile) expect(monitor.state('hostile', `${HOST}:${h.port}`)?.state).toBe('down');
    } finally {
      monitor.stop();
    }
  });
});
