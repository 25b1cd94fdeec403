/**
 * PostgreSQL 15, real clusters (Debian's packages) on 127.3.4.x: a primary and a streaming
 * standby made with pg_basebackup. The probe authenticates with SCRAM-SHA-256 from a
 * password_file and reads pg_is_in_recovery(); fulcrum with `role: primary` follows a switchover
 * (old primary stopped, standby promoted, old primary restarted as a standby of the new one).
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthSchema } from '../../src/config/schema.ts';
import { postgresProbe } from '../../src/health/probes/postgres.ts';
import type { FulcrumHandle } from '../../src/main.ts';
import { startProxy } from '../proxy/harness.ts';
import { monitorClient, pgPair, primaryServiceYaml, whoAnswersAt, type PgCluster, type PgPair } from '../helpers/postgres.ts';
import { freePort, waitFor } from '../helpers/net.ts';
import { waitUntilOnly } from './switchover.ts';

const HOST = '127.3.4.1';
const LISTEN = '127.3.4.10';
const PASSWORD = 'mon-Pa55';
const INTERVAL = 150;
const FALL = 2;

let pair: PgPair | undefined;
let pg1: PgCluster;
let pg2: PgCluster;
let dir: string;
let pwFile: string;

beforeAll(async () => {
  pair = await pgPair(HOST, PASSWORD);
  ({ primary: pg1, standby: pg2, dir, pwFile } = pair);
}, 120_000);

afterAll(async () => {
  await pair?.stop();
});

const h = (x: Record<string, unknown>) => healthSchema.parse({ type: 'postgres', timeout: '2s', ...x });
const probe = (c: PgCluster, x: Record<string, unknown>) => postgresProbe({ host: c.host, port: c.port }, h(x), AbortSignal.timeout(2000));
const monitorAuth = () => ({ postgres: { user: 'monitor', password_file: pwFile, database: 'postgres' } });

describe('postgres probe against real clusters', () => {
  it('the monitor password is stored as SCRAM-SHA-256 and the standby streams', async () => {
    expect(await pg1.sql("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'monitor'")).toBe('t');
    expect(await pg2.sql('SELECT pg_is_in_recovery()')).toBe('t');
  });

  it('reads the role with password authentication and applies the role filter', async () => {
    expect(await probe(pg1, { ...monitorAuth(), role: 'primary' })).toMatchObject({ ok: true, reason: 'role primary', role: 'primary' });
    expect(await probe(pg2, { ...monitorAuth(), role: 'primary' })).toMatchObject({ ok: false, reason: 'wrong role: saw replica, want primary' });
    expect(await probe(pg2, { ...monitorAuth(), role: 'replica' })).toMatchObject({ ok: true, reason: 'role replica' });
  });

  it('says why authentication failed', async () => {
    const wrong = join(dir, 'wrong.pass');
    await writeFile(wrong, 'nope\n', { mode: 0o600 });
    expect(await probe(pg1, { role: 'primary', postgres: { user: 'monitor', password_file: wrong, database: 'postgres' } }))
      .toMatchObject({ ok: false, reason: 'auth failed: password authentication failed for user "monitor"' });
    expect(await probe(pg1, { role: 'primary', postgres: { user: 'monitor', database: 'postgres' } }))
      .toMatchObject({ ok: false, reason: expect.stringMatching(/^auth failed: /) });
    expect(await probe(pg1, { role: 'primary', postgres: { user: 'monitor', password_file: pwFile, database: 'nosuchdb' } }))
      .toMatchObject({ ok: false, reason: 'database "nosuchdb" does not exist (health.postgres.database)' });
  });
});

describe('fulcrum follows a PostgreSQL switchover (role: primary)', () => {
  let fulcrum: FulcrumHandle;
  let listenPort: number;

  beforeAll(async () => {
    listenPort = await freePort(LISTEN);
    fulcrum = await startProxy(primaryServiceYaml(`${LISTEN}:${listenPort}`, pair!, INTERVAL, FALL, `
    on_marked_down: shutdown_sessions
    retries: 1`));
  });
  afterAll(async () => {
    await fulcrum?.stop('test done');
  });

  async function connect(): Promise<pg.Client> {
    const c = monitorClient(LISTEN, listenPort, PASSWORD);
    await c.connect();
    return c;
  }

  const whoAnswers = (): Promise<number> => whoAnswersAt(LISTEN, listenPort, PASSWORD);


  it('routes only to the primary; after the switchover only to the new primary', async () => {
    await waitUntilOnly(whoAnswers, pg1.port, 3000);
    expect(fulcrum.health.state('pg', pg2.address)).toMatchObject({ state: 'down' });

    const held = await connect();
    expect(Number((await held.query('SELECT inet_server_port() AS p')).rows[0].p)).toBe(pg1.port);
    let heldEnded = false;
    held.on('end', () => (heldEnded = true));

    // The textbook switchover: stop the primary (it streams its last WAL first), promote the
    // standby, restart the old primary as a standby of the new one.
    await pg1.stop('fast');
    await pg2.promote();
    const t0 = Date.now();
    const bound = FALL * INTERVAL + 1000;
    const reachedAt = await waitUntilOnly(whoAnswers, pg2.port, bound + 3000);
    expect(reachedAt - t0).toBeLessThanOrEqual(bound);
    expect(heldEnded).toBe(true);

    await pg1.followPrimary(pg2);
    await pg1.start();
    expect(await pg1.sql('SELECT pg_is_in_recovery()')).toBe('t');
    // pg1 accepts connections again, as a standby: fulcrum keeps it out. Wait for a probe that
    // began after its start, then look at what it saw.
    const restarted = Date.now();
    const last = () => fulcrum.health.history('pg', pg1.address).at(-1);
    await waitFor(() => { const e = last(); return e !== undefined && e.at - e.latency_ms > restarted; }, 3 * INTERVAL + 2000, 'a probe of the restarted pg1');
    expect(fulcrum.health.history('pg', pg1.address).at(-1)).toMatchObject({ ok: false, reason: 'wrong role: saw replica, want primary' });
    for (let i = 0; i < 10; i++) expect(await whoAnswers()).toBe(pg2.port);
    const desc = fulcrum.balancer.describe().find((s) => s.name === 'pg')!;
    expect(desc.backends.find((x) => x.address === pg1.address)?.state).toBe('down');
    expect(desc.backends.find((x) => x.address === pg2.address)?.state).toBe('up');
    await held.end().catch(() => {});
  });
});
