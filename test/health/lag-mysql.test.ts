/**
 * Replication lag, MariaDB 10.11 (Debian's mariadb-server) on 127.3.21.x: a primary with a
 * binary log and a read-only replica. The probe reads Seconds_Behind_Master (SHOW REPLICA
 * STATUS): caught up passes with lag 0; `STOP SLAVE SQL_THREAD` makes it NULL, documented as
 * replication stopped: a failure (on_marked_down decides), not lag; a delayed replica
 * (MASTER_DELAY) behind by more than max_lag fails as lagging.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { healthSchema } from '../../src/config/schema.ts';
import { mysqlProbe } from '../../src/health/probes/mysql.ts';
import { startMariaDb, type MariaDbServer } from '../helpers/mysql.ts';
import { waitFor } from '../helpers/net.ts';

const PASSWORD = 'mon-lag-Pa55';
const MAX_LAG = 1000;

let primary: MariaDbServer;
let replica: MariaDbServer;
let dir: string;
let pwFile: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fulcrum-mysql-lag-'));
  pwFile = join(dir, 'my.pass');
  await writeFile(pwFile, `${PASSWORD}\n`, { mode: 0o600 });
  [primary, replica] = await Promise.all([
    startMariaDb('127.3.21.1', ['--log-bin=mysql-bin', '--server-id=1']),
    startMariaDb('127.3.21.2', ['--server-id=2', '--read-only=1']),
  ]);
  // Made on the primary after it started with its binary log: the replica replays these too.
  await primary.sql(`CREATE USER 'repl'@'%' IDENTIFIED BY 'repl-Pa55'; GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';
    CREATE USER 'monitor'@'%' IDENTIFIED BY '${PASSWORD}'; GRANT SELECT, SLAVE MONITOR ON *.* TO 'monitor'@'%';
    CREATE DATABASE app; CREATE TABLE app.t (x INT)`);
  await replica.sql(`CHANGE MASTER TO MASTER_HOST='${primary.host}', MASTER_PORT=${primary.port}, MASTER_USER='repl', MASTER_PASSWORD='repl-Pa55', MASTER_USE_GTID=no; START SLAVE`);
  await waitFor(async () => (await replica.sql("SELECT COUNT(*) FROM mysql.user WHERE user = 'monitor'")) === '1', 20_000, 'the replica to replay the users', 100);
}, 120_000);

afterAll(async () => {
  await primary?.stop();
  await replica?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const probe = (m: MariaDbServer) => mysqlProbe({ host: m.host, port: m.port },
  healthSchema.parse({ type: 'mysql', role: 'replica', timeout: '2s', max_lag: `${MAX_LAG}ms`, mysql: { user: 'monitor', password_file: pwFile } }), AbortSignal.timeout(2000));

describe('the MySQL / MariaDB lag probe', () => {
  it('a caught-up replica passes with lag 0; the primary is the wrong role', async () => {
    await waitFor(async () => (await probe(replica)).ok, 10_000, 'the replica caught up', 100);
    expect(await probe(replica)).toMatchObject({ ok: true, role: 'replica', lag_ms: 0, reason: 'role replica, lag 0ms' });
    expect(await probe(primary)).toMatchObject({ ok: false, role: 'primary', reason: 'wrong role: saw primary, want replica' });
  });

  it('STOP SLAVE SQL_THREAD: Seconds_Behind_Master is NULL, a failure (not lag); started again, it passes', async () => {
    await replica.sql('STOP SLAVE SQL_THREAD');
    try {
      const r = await probe(replica);
      expect(r).toMatchObject({ ok: false, reason: 'replication stopped (Seconds_Behind_Master is NULL: IO thread Yes, SQL thread No)' });
      expect(r.lagging).toBeUndefined();
    } finally {
      await replica.sql('START SLAVE SQL_THREAD');
    }
    await waitFor(async () => (await probe(replica)).ok, 10_000, 'the replica to pass again', 100);
  });

  it('a delayed replica behind by more than max_lag is lagging, with the lag', async () => {
    await replica.sql('STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 3; START SLAVE');
    try {
      await primary.sql('INSERT INTO app.t VALUES (1)');
      await waitFor(async () => (await probe(replica)).lagging === true, 10_000, 'the probe to say lagging', 100);
      const r = await probe(replica);
      expect(r).toMatchObject({ ok: false, lagging: true, role: 'replica', reason: expect.stringMatching(/^lagging: \d\.\ds behind its primary \(max_lag 1\.0s\)$/) });
      expect(r.lag_ms).toBeGreaterThan(MAX_LAG);
      // Replayed after the delay: caught up again.
      await waitFor(async () => (await probe(replica)).ok, 10_000, 'the replica to catch up', 100);
    } finally {
      await replica.sql('STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 0; START SLAVE');
    }
  }, 30_000);
});
