/**
 * Replication lag, Redis 7 (Debian's redis-server) on 127.3.22.x: a replica's lag is how stale
 * its data may be (src/health/probes/lag.ts): 0 while its link to the primary is up; with the
 * link down, the time since it went down — under max_lag it still serves, past it it is lagging.
 * Fed INFO texts, the reader says what it cannot tell.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthSchema } from '../../src/config/schema.ts';
import { redisLag } from '../../src/health/probes/lag.ts';
import { redisProbe } from '../../src/health/probes/redis.ts';
import { startRedis, type RedisServer } from '../helpers/redis.ts';
import { waitFor } from '../helpers/net.ts';

const MAX_LAG = 1000;
let primary: RedisServer;
let replica: RedisServer;

beforeAll(async () => {
  primary = await startRedis({ host: '127.3.22.1' });
  replica = await startRedis({ host: '127.3.22.2', args: ['--replicaof', primary.host, String(primary.port)] });
});
afterAll(async () => {
  await primary?.stop();
  await replica?.stop();
});

const probe = (r: RedisServer, role = 'replica') => redisProbe({ host: r.host, port: r.port },
  healthSchema.parse({ type: 'redis', role, timeout: '1s', max_lag: `${MAX_LAG}ms` }), AbortSignal.timeout(1000));

describe('the Redis lag probe', () => {
  it('link up: lag 0; the primary down: lag grows from 0 and past max_lag the replica is lagging', async () => {
    await waitFor(async () => (await probe(replica)).ok, 10_000, 'the replica linked to its primary', 50);
    expect(await probe(replica)).toMatchObject({ ok: true, role: 'replica', lag_ms: 0, reason: 'role replica, lag 0ms' });
    // With role any the primary passes, and has no lag.
    expect((await probe(primary, 'any')).lag_ms).toBeUndefined();

    await primary.stop();
    await waitFor(async () => (await probe(replica)).reason.endsWith('link to its primary down'), 5000, 'the replica to see its link down', 50);
    await waitFor(async () => (await probe(replica)).lagging === true, 5000, 'the replica to be lagging', 100);
    const r = await probe(replica);
    expect(r).toMatchObject({ ok: false, lagging: true, reason: expect.stringMatching(/^lagging: \d+\.\ds behind its primary, link to its primary down \(max_lag 1\.0s\)$/) });
    expect(r.lag_ms).toBeGreaterThan(MAX_LAG);
  });

  it('INFO texts: a resync or a link never up is an unknown lag; no link line is a bad reply', () => {
    expect(redisLag('role:slave\r\nmaster_link_status:up\r\nmaster_sync_in_progress:0\r\n')).toEqual({ lag_ms: 0, why: '' });
    expect(redisLag('role:slave\r\nmaster_link_status:down\r\nmaster_sync_in_progress:1\r\n').lag_ms).toBeNull();
    expect(redisLag('role:slave\r\nmaster_link_status:down\r\nmaster_sync_in_progress:0\r\nmaster_link_down_since_seconds:-1\r\n').lag_ms).toBeNull();
    expect(redisLag('role:slave\r\nmaster_link_status:down\r\nmaster_link_down_since_seconds:12\r\n').lag_ms).toBe(12_000);
    expect(() => redisLag('role:slave\r\n')).toThrow('bad reply to INFO replication: no master_link_status line');
  });
});
