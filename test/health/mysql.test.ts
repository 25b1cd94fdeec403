/**
 * MariaDB, real servers (Debian's mariadb-server) on 127.3.5.x: @@global.read_only decides the
 * role; the probe authenticates as a monitor user from a password_file; fulcrum with
 * `role: primary` follows a read_only flip between two servers and closes the sessions on the
 * server that became read-only (on_marked_down: shutdown_sessions).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mysql from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthSchema } from '../../src/config/schema.ts';
import { mysqlProbe } from '../../src/health/probes/mysql.ts';
import type { FulcrumHandle } from '../../src/main.ts';
import { reasons, startProxy } from '../proxy/harness.ts';
import { startMariaDb, type MariaDbServer } from '../helpers/mysql.ts';
import { makeCerts, type TestCerts } from '../helpers/tls.ts';
import { freePort, waitFor } from '../helpers/net.ts';
import { waitUntilOnly } from './switchover.ts';

const LISTEN = '127.3.5.10';
const PASSWORD = 'mon-my-Pa55';
const INTERVAL = 150;
const FALL = 2;

let m1: MariaDbServer;
let m2: MariaDbServer;
let dir: string;
let pwFile: string;
let certs: TestCerts;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fulcrum-mysql-test-'));
  pwFile = join(dir, 'my.pass');
  await writeFile(pwFile, `${PASSWORD}\n`, { mode: 0o600 });
  // m1 speaks TLS too (health.mysql.tls); m2 does not.
  certs = await makeCerts(dir, '127.3.5.1');
  const tls = [`--ssl-ca=${certs.caFile}`, `--ssl-cert=${certs.certFile}`, `--ssl-key=${certs.keyFile}`];
  [m1, m2] = await Promise.all([startMariaDb('127.3.5.1', tls), startMariaDb('127.3.5.2')]);
  for (const m of [m1, m2]) {
    await m.sql(`CREATE USER 'monitor'@'%' IDENTIFIED BY '${PASSWORD}'; GRANT SELECT ON *.* TO 'monitor'@'%'`);
  }
  await m2.sql('SET GLOBAL read_only = 1');
}, 120_000);

afterAll(async () => {
  await m1?.stop();
  await m2?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const h = (x: Record<string, unknown>) => healthSchema.parse({ type: 'mysql', timeout: '2s', ...x });
const probe = (m: MariaDbServer, x: Record<string, unknown>) => mysqlProbe({ host: m.host, port: m.port }, h(x), AbortSignal.timeout(2000));
const auth = () => ({ mysql: { user: 'monitor', password_file: pwFile } });

describe('mysql probe against real MariaDB', () => {
  it('read_only off is a primary, on is a replica', async () => {
    expect(await probe(m1, { ...auth(), role: 'primary' })).toMatchObject({ ok: true, reason: 'role primary', role: 'primary' });
    expect(await probe(m2, { ...auth(), role: 'primary' })).toMatchObject({ ok: false, reason: 'wrong role: saw replica, want primary', role: 'replica' });
    expect(await probe(m2, { ...auth(), role: 'replica' })).toMatchObject({ ok: true, reason: 'role replica' });
    expect(await probe(m2, { ...auth(), role: 'any' })).toMatchObject({ ok: true, reason: 'role replica' });
  });

  it('says why authentication failed', async () => {
    const wrong = join(dir, 'wrong.pass');
    await writeFile(wrong, 'nope\n', { mode: 0o600 });
    expect(await probe(m1, { role: 'primary', mysql: { user: 'monitor', password_file: wrong } }))
      .toMatchObject({ ok: false, reason: expect.stringMatching(/^auth failed: Access denied for user 'monitor'@'127\.0\.0\.1'/) });
    expect(await probe(m1, { role: 'primary', mysql: { user: 'nobody' } }))
      .toMatchObject({ ok: false, reason: expect.stringMatching(/^auth failed: Access denied for user 'nobody'/) });
  });
});

describe('fulcrum follows a read_only flip (role: primary)', () => {
  let fulcrum: FulcrumHandle;
  let listenPort: number;

  beforeAll(async () => {
    listenPort = await freePort(LISTEN);
    fulcrum = await startProxy(`
workers: 2
logging: { level: warn }
services:
  - name: my
    listen: ${LISTEN}:${listenPort}
    on_marked_down: shutdown_sessions
    health:
      type: mysql
      role: primary
      interval: ${INTERVAL}ms
      timeout: ${INTERVAL}ms
      rise: 1
      fall: ${FALL}
      mysql: { user: monitor, password_file: ${pwFile} }
    backends:
      - address: ${m1.address}
      - address: ${m2.address}
`);
  });
  afterAll(async () => {
    await fulcrum?.stop('test done');
  });

  const connect = () => mysql.createConnection({ host: LISTEN, port: listenPort, user: 'monitor', password: PASSWORD, connectTimeout: 2000 });

  async function whoAnswers(): Promise<number> {
    const c = await connect();
    try {
      const [rows] = await c.query('SELECT @@port AS p');
      return Number((rows as Array<{ p: number }>)[0].p);
    } finally {
      c.destroy();
    }
  }


  it('routes to the writable server and follows the flip', async () => {
    await waitUntilOnly(whoAnswers, m1.port, 3000);
    const held = await connect();
    held.on('error', () => {});
    const [rows] = await held.query('SELECT @@port AS p');
    expect(Number((rows as Array<{ p: number }>)[0].p)).toBe(m1.port);
    let heldClosed = false;
    (held as unknown as { connection: { stream: NodeJS.EventEmitter } }).connection.stream.once('close', () => (heldClosed = true));

    // Make the old primary read-only first (no moment with two writers), then the new one writable.
    await m1.sql('SET GLOBAL read_only = 1');
    await m2.sql('SET GLOBAL read_only = 0');
    const t0 = Date.now();
    const bound = FALL * INTERVAL + 1000;
    const reachedAt = await waitUntilOnly(whoAnswers, m2.port, bound + 3000);
    expect(reachedAt - t0).toBeLessThanOrEqual(bound);
    expect(heldClosed).toBe(true);
    // The held one (and any poll caught mid-flight), counted by its worker a moment after it closed.
    await waitFor(() => reasons(fulcrum, 'my').backend_down >= 1, 2000, 'the held session counted as backend_down');
    expect(fulcrum.health.history('my', m1.address).at(-1)).toMatchObject({ ok: false, reason: 'wrong role: saw replica, want primary' });
    held.destroy();
  });
});

describe('mysql probe over TLS (health.mysql.tls)', () => {
  it('require and verify-full speak TLS; verify-full refuses another CA; a server without TLS is refused', async () => {
    const tlsProbe = (m: MariaDbServer, x: Record<string, unknown>) => probe(m, { mysql: { ...auth().mysql, ...x } });
    expect(await tlsProbe(m1, { tls: 'require' })).toMatchObject({ ok: true, reason: expect.stringMatching(/^role /) });
    expect(await tlsProbe(m1, { tls: 'verify-full', ca_file: certs.caFile })).toMatchObject({ ok: true, reason: expect.stringMatching(/^role /) });
    expect(await tlsProbe(m1, { tls: 'verify-full', ca_file: certs.otherCaFile })).toMatchObject({ ok: false, reason: expect.stringMatching(/^tls: /) });
    expect(await tlsProbe(m2, { tls: 'require' })).toMatchObject({ ok: false, reason: expect.stringMatching(/secure connection|SSL|TLS/i) });
  });
});
