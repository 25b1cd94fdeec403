/**
 * Redis Sentinel discovery against real servers on 127.3.24.x: three redis-sentinels (Debian's
 * redis-sentinel) watching a primary and a replica (redis-server). fulcrum's write service takes
 * its backend from Sentinel (role primary), its read service the replicas (role replica).
 * One sentinel stopped first (fulcrum's subscription moves to another), then kill -9 the primary: measured from Sentinel's first +switch-master (subscribers of the test's own, one per sentinel)
 * to the first new connection through fulcrum landing on the new primary — the figure is
 * printed, and held to the 100 ms target with room for a loaded machine; no write lands on the
 * old primary after the announcement. Bad input: a master no sentinel knows, sentinels that do not
 * answer — clear errors, the running set untouched.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sentinelDiscoverySchema } from '../../src/config/schema.ts';
import { encodeCommand, parseReply } from '../../src/health/probes/resp.ts';
import { sentinelSource } from '../../src/discovery/sentinel.ts';
import type { FulcrumHandle } from '../../src/main.ts';
import { startProxy } from '../proxy/harness.ts';
import { freePort, waitFor } from '../helpers/net.ts';
import { respSession, startRedis, startSentinel, tcpPortOf, type RedisServer } from '../helpers/redis.ts';

const LISTEN = '127.3.24.10';
const MASTER = 'mymaster';
/** The target is 100 ms; a loaded CI machine (2 cores, five suites) gets twice that. */
const BOUND_MS = 200;

let primary: RedisServer;
let replica: RedisServer;
const sentinels: RedisServer[] = [];

beforeAll(async () => {
  primary = await startRedis({ host: '127.3.24.1' });
  replica = await startRedis({ host: '127.3.24.2', args: ['--replicaof', primary.host, String(primary.port), '--replica-announce-ip', '127.3.24.2'] });
  for (const h of ['127.3.24.11', '127.3.24.12', '127.3.24.13']) sentinels.push(await startSentinel({ host: h, name: MASTER, master: primary, quorum: 2 }));
  // Ready for a failover: every sentinel sees the two others and the replica, linked.
  await waitFor(async () => {
    for (const s of sentinels) {
      const others = await s.command('SENTINEL', 'sentinels', MASTER).catch(() => []);
      const reps = await s.command('SENTINEL', 'replicas', MASTER).catch(() => []);
      if (!Array.isArray(others) || others.length !== 2 || !Array.isArray(reps) || !JSON.stringify(reps).includes('"master-link-status","ok"')) return false;
    }
    return true;
  }, 30_000, 'the sentinels to find each other and the replica', 200);
}, 60_000);

afterAll(async () => {
  for (const s of [...sentinels, primary, replica]) await s?.stop();
});

const settings = (x: Record<string, unknown> = {}) => sentinelDiscoverySchema.parse({ sentinels: sentinels.map((s) => s.address), master: MASTER, timeout: '500ms', ...x });

/** A subscriber of the test's own: resolves with performance.now() at the first +switch-master for MASTER. */
function switchAnnounced(s: RedisServer): Promise<{ at: number; payload: string }> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: s.host, port: s.port });
    let buf = Buffer.alloc(0);
    sock.on('connect', () => sock.write(encodeCommand(['SUBSCRIBE', '+switch-master'])));
    sock.on('data', (d) => {
      const at = performance.now();
      buf = Buffer.concat([buf, d]);
      for (let r = parseReply(buf); r; r = parseReply(buf)) {
        buf = buf.subarray(r[1]);
        const m = r[0];
        if (Array.isArray(m) && m[0] === 'message' && typeof m[2] === 'string' && m[2].startsWith(`${MASTER} `)) {
          sock.destroy();
          return resolve({ at, payload: m[2] });
        }
      }
    });
    sock.on('error', reject);
  });
}

describe('the Sentinel source', () => {
  it('asks for the primary and the replicas; a master no sentinel knows and sentinels that do not answer are clear errors', async () => {
    const signal = new AbortController().signal;
    expect((await sentinelSource(settings()).ask(signal)).backends.map((b) => `${b.address.host}:${b.address.port}`)).toEqual([primary.address]);
    expect((await sentinelSource(settings({ role: 'replica', primary_as_backup: false })).ask(signal)).backends.map((b) => `${b.address.host}:${b.address.port}`)).toEqual([replica.address]);
    // By default the primary joins a replica service as its backup.
    expect((await sentinelSource(settings({ role: 'replica' })).ask(signal)).backends.map((b) => `${b.address.host}:${b.address.port}${b.backup ? ' backup' : ''}`))
      .toEqual([`${primary.address} backup`, replica.address]);
    await expect(sentinelSource(settings({ master: 'nosuch' })).ask(signal)).rejects.toMatchObject({
      code: 'FULCRUM_ERR_DISCOVERY', message: 'redis_sentinel nosuch: no sentinel knows a master named "nosuch"',
    });
    const dead = `127.3.24.99:${await freePort('127.3.24.99')}`;
    await expect(sentinelSource(settings({ sentinels: [dead] })).ask(signal)).rejects.toMatchObject({
      code: 'FULCRUM_ERR_DISCOVERY', message: `redis_sentinel ${MASTER}: no sentinel answered (${dead}: connect ECONNREFUSED ${dead})`,
    });
    // One sentinel down of three: the next answers.
    expect((await sentinelSource(settings({ sentinels: [dead, sentinels[1].address] })).ask(signal)).backends).toHaveLength(1);
  });
});

describe('fulcrum follows a Sentinel failover', () => {
  let fulcrum: FulcrumHandle;
  let port: number;

  beforeAll(async () => {
    port = await freePort(LISTEN);
    fulcrum = await startProxy(`
workers: 1
logging: { level: warn }
services:
  - name: redis-w
    listen: ${LISTEN}:${port}
    retries: 0
    discover:
      redis_sentinel: { sentinels: [${sentinels.map((s) => s.address).join(', ')}], master: ${MASTER}, role: primary, interval: 2s, hold: 30s }
    backends: []
  - name: redis-r
    listen: ${LISTEN}:${await freePort(LISTEN)}
    discover:
      redis_sentinel: { sentinels: [${sentinels.map((s) => s.address).join(', ')}], master: ${MASTER}, role: replica, interval: 2s }
    backends: []
`);
  });
  afterAll(async () => {
    await fulcrum?.stop('test done');
  });

  const live = (service: string) => fulcrum.balancer.describe().find((s) => s.name === service)!.backends.filter((b) => !b.removed).map((b) => b.address);

  it(`kill -9 the primary: new connections reach the new primary within ${BOUND_MS} ms of +switch-master, and no write lands on the old one after it`, async () => {
    await waitFor(() => live('redis-w').join() === primary.address, 5000, 'the primary from Sentinel');
    await waitFor(() => live('redis-r').join() === [primary.address, replica.address].join(), 5000, 'the replica (and the primary as backup) from Sentinel');
    expect(fulcrum.discovery.describe().find((d) => d.service === 'redis-w')).toMatchObject({ source: 'redis_sentinel', last_answer: '1 backend', errors: 0 });

    // The sentinel fulcrum subscribed to (the first) goes down: it subscribes to the next one.
    const subscribed = async (x: RedisServer) => String(await x.command('CLIENT', 'LIST')).includes(' sub=10 ');
    await waitFor(() => subscribed(sentinels[0]), 3000, 'fulcrum subscribed to the first sentinel');
    await sentinels[0].stop();
    await waitFor(async () => (await subscribed(sentinels[1])) || (await subscribed(sentinels[2])), 3000, 'fulcrum subscribed to another sentinel');
    // The earliest announcement of the two left (the leader publishes first, the other as it learns).
    const announced = Promise.race(sentinels.slice(1).map(switchAnnounced));
    // Writes through fulcrum on new connections, back to back: who took each, and when.
    const writes: Array<{ at: number; port: number }> = [];
    let done = false;
    const writer = (async () => {
      for (let i = 0; !done; i++) {
        const at = performance.now();
        try {
          const s = await respSession(LISTEN, port);
          try {
            const who = tcpPortOf(await s.command('INFO', 'server'));
            if ((await s.command('SET', `k${i}`, String(i))) === 'OK') writes.push({ at, port: who });
          } finally {
            s.close();
          }
        } catch {
          await new Promise((r) => setTimeout(r, 2)); // refused while no backend takes writes
        }
      }
    })();
    await waitFor(() => writes.some((w) => w.port === primary.port), 3000, 'writes on the primary');

    await primary.stop(); // SIGKILL
    const { at: switchedAt, payload } = await announced;
    expect(payload).toBe(`${MASTER} ${primary.host} ${primary.port} ${replica.host} ${replica.port}`);
    await waitFor(() => writes.some((w) => w.port === replica.port), 5000, 'a write on the new primary');
    done = true;
    await writer;

    const first = writes.find((w) => w.port === replica.port)!;
    const figure = first.at - switchedAt;
    console.log(`Sentinel +switch-master → first new connection on the new primary: ${figure.toFixed(1)} ms`);
    expect(figure).toBeLessThanOrEqual(BOUND_MS);
    expect(writes.filter((w) => w.at > switchedAt && w.port === primary.port)).toEqual([]);
    expect(live('redis-w')).toEqual([replica.address]);
  }, 60_000);
});
