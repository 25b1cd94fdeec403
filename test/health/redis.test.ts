/**
 * Redis, real servers (redis-server from Debian) on 127.3.3.x: the probe reads the role with AUTH,
 * ACL users and the INFO fallback; then fulcrum with `role: primary` follows a switchover
 * (REPLICAOF NO ONE on the replica, REPLICAOF on the old primary) and closes the sessions on the
 * demoted primary (on_marked_down: shutdown_sessions).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthSchema } from '../../src/config/schema.ts';
import { redisProbe } from '../../src/health/probes/redis.ts';
import type { FulcrumHandle } from '../../src/main.ts';
import { reasons, startProxy } from '../proxy/harness.ts';
import { freePort, waitFor } from '../helpers/net.ts';
import { respSession, startRedis, tcpPortOf, type RedisServer, type RespSession } from '../helpers/redis.ts';
import { makeCerts, type TestCerts } from '../helpers/tls.ts';
import { waitUntilOnly } from './switchover.ts';

const PASSWORD = 's3cret-redis';
const INTERVAL = 100;
const FALL = 2;

let dir: string;
let pwFile: string;
let monFile: string;
let a: RedisServer; // starts as primary
let b: RedisServer; // starts as replica of a

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fulcrum-redis-test-'));
  pwFile = join(dir, 'redis.pass');
  monFile = join(dir, 'monitor.pass');
  await writeFile(pwFile, `${PASSWORD}\n`, { mode: 0o600 });
  await writeFile(monFile, 'mon-pw\n', { mode: 0o600 });
  const auth = ['--requirepass', PASSWORD, '--masterauth', PASSWORD];
  a = await startRedis({ host: '127.3.3.1', args: auth });
  b = await startRedis({ host: '127.3.3.2', args: [...auth, '--replicaof', a.host, String(a.port)] });
  // An ACL user that may AUTH and INFO but not ROLE: the probe must fall back to INFO replication.
  for (const s of [a, b]) {
    await authed(s, ['ACL', 'SETUSER', 'monitor', 'on', '>mon-pw', '-@all', '+info', '+auth']);
  }
});

afterAll(async () => {
  await a?.stop();
  await b?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Runs a command after AUTH on one connection (the helper's command() is unauthenticated). */
async function authed(s: { host: string; port: number }, args: string[]) {
  const sess = await respSession(s.host, s.port);
  try {
    expect(await sess.command('AUTH', PASSWORD)).toBe('OK');
    return await sess.command(...args);
  } finally {
    sess.close();
  }
}

const h = (x: Record<string, unknown>) => healthSchema.parse({ type: 'redis', timeout: '500ms', ...x });
const probe = (s: RedisServer, x: Record<string, unknown>) => redisProbe({ host: s.host, port: s.port }, h(x), AbortSignal.timeout(500));

describe('redis probe against real servers', () => {
  it('reads the role with AUTH and applies the role filter', async () => {
    const auth = { redis: { password_file: pwFile } };
    expect(await probe(a, { ...auth, role: 'primary' })).toMatchObject({ ok: true, reason: 'role primary', role: 'primary' });
    expect(await probe(b, { ...auth, role: 'primary' })).toMatchObject({ ok: false, reason: 'wrong role: saw replica, want primary', role: 'replica' });
    expect(await probe(b, { ...auth, role: 'replica' })).toMatchObject({ ok: true, reason: 'role replica' });
    expect(await probe(a, { ...auth, role: 'any' })).toMatchObject({ ok: true, reason: 'role primary' });
  });

  it('says why authentication failed', async () => {
    expect(await probe(a, { role: 'primary' })).toMatchObject({ ok: false, reason: expect.stringMatching(/^auth failed: NOAUTH/) });
    const wrong = join(dir, 'wrong.pass');
    await writeFile(wrong, 'nope\n', { mode: 0o600 });
    expect(await probe(a, { role: 'primary', redis: { password_file: wrong } }))
      .toMatchObject({ ok: false, reason: expect.stringMatching(/^auth failed: (WRONGPASS|ERR invalid password)/) });
  });

  it('an ACL user without ROLE falls back to INFO replication', async () => {
    const r = await probe(b, { role: 'replica', redis: { user: 'monitor', password_file: monFile } });
    expect(r).toMatchObject({ ok: true, reason: 'role replica', role: 'replica' });
  });
});

describe('fulcrum follows a Redis switchover (role: primary)', () => {
  let fulcrum: FulcrumHandle;
  let listenPort: number;
  const LISTEN = '127.3.3.10';

  beforeAll(async () => {
    listenPort = await freePort(LISTEN);
    fulcrum = await startProxy(`
workers: 2
logging: { level: warn }
services:
  - name: redis
    listen: ${LISTEN}:${listenPort}
    balance: leastconn
    on_marked_down: shutdown_sessions
    health:
      type: redis
      role: primary
      interval: ${INTERVAL}ms
      timeout: ${INTERVAL}ms
      rise: 1
      fall: ${FALL}
      redis: { password_file: ${pwFile} }
    backends:
      - address: ${a.address}
      - address: ${b.address}
`);
  });
  afterAll(async () => {
    await fulcrum?.stop('test done');
  });

  /** A new connection through fulcrum: which server answered? */
  async function whoAnswers(): Promise<number> {
    const s = await respSession(LISTEN, listenPort);
    try {
      expect(await s.command('AUTH', PASSWORD)).toBe('OK');
      return tcpPortOf(await s.command('INFO', 'server'));
    } finally {
      s.close();
    }
  }


  it('routes only to the primary, then to the new primary after the switchover', async () => {
    // Replica is marked down by its first probe.
    await waitUntilOnly(whoAnswers, a.port, 2000);
    for (let i = 0; i < 10; i++) expect(await whoAnswers()).toBe(a.port);
    expect(fulcrum.health.state('redis', b.address)).toMatchObject({ state: 'down' });

    // A session on the old primary, held open across the switchover.
    const held: RespSession = await respSession(LISTEN, listenPort);
    expect(await held.command('AUTH', PASSWORD)).toBe('OK');
    expect(tcpPortOf(await held.command('INFO', 'server'))).toBe(a.port);
    let heldClosedAt = 0;
    void held.closed.then(() => (heldClosedAt = Date.now()));

    const t0 = Date.now();
    expect(await authed(b, ['REPLICAOF', 'NO', 'ONE'])).toBe('OK');
    expect(await authed(a, ['REPLICAOF', b.host, String(b.port)])).toBe('OK');

    const bound = FALL * INTERVAL + 1000;
    const reachedAt = await waitUntilOnly(whoAnswers, b.port, bound + 2000);
    expect(reachedAt - t0).toBeLessThanOrEqual(bound);
    await waitFor(() => heldClosedAt > 0, bound, 'the held session to close');
    expect(heldClosedAt - t0).toBeLessThanOrEqual(bound);
    // Closed by fulcrum because its backend was marked down, not by Redis: the held one (and any
    // poll caught mid-flight), counted by its worker a moment after it closed.
    await waitFor(() => reasons(fulcrum, 'redis').backend_down >= 1, 2000, 'the held session counted as backend_down');
    expect(fulcrum.health.state('redis', a.address)).toMatchObject({ state: 'down' });
    expect(fulcrum.health.history('redis', a.address).at(-1)?.reason).toBe('wrong role: saw replica, want primary');
    const desc = fulcrum.balancer.describe().find((s) => s.name === 'redis')!;
    expect(desc.backends.find((x) => x.address === a.address)?.state).toBe('down');
    expect(desc.backends.find((x) => x.address === b.address)?.state).toBe('up');
  });
});

describe('redis probe over TLS (health.redis.tls)', () => {
  let tlsServer: RedisServer;
  let tlsPort: number;
  let certs: TestCerts;
  beforeAll(async () => {
    certs = await makeCerts(dir, '127.3.3.3');
    tlsPort = await freePort('127.3.3.3');
    tlsServer = await startRedis({ host: '127.3.3.3', args: ['--requirepass', PASSWORD, '--tls-port', String(tlsPort),
      '--tls-cert-file', certs.certFile, '--tls-key-file', certs.keyFile, '--tls-ca-cert-file', certs.caFile, '--tls-auth-clients', 'no'] });
  });
  afterAll(async () => {
    await tlsServer?.stop();
  });

  const overTls = (x: Record<string, unknown>) =>
    redisProbe({ host: '127.3.3.3', port: tlsPort }, h({ redis: { password_file: pwFile, ...x } }), AbortSignal.timeout(2000));

  it('require and verify-full speak TLS; verify-full refuses a certificate its CA did not sign; plain text to a TLS port fails', async () => {
    expect(await overTls({ tls: 'require' })).toMatchObject({ ok: true, reason: 'role primary' });
    expect(await overTls({ tls: 'verify-full', ca_file: certs.caFile })).toMatchObject({ ok: true, reason: 'role primary' });
    expect(await overTls({ tls: 'verify-full', ca_file: certs.otherCaFile })).toMatchObject({ ok: false, reason: expect.stringMatching(/^tls: .*\(\w+\)$/) });
    expect(await overTls({ tls: 'verify-full', ca_file: join(dir, 'missing.pem') }))
      .toMatchObject({ ok: false, reason: `health.redis.ca_file ${join(dir, 'missing.pem')}: cannot read (ENOENT)` });
    expect((await overTls({})).ok).toBe(false);
  });
});
