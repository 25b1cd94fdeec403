/**
 * Replication lag, PostgreSQL 15 (Debian's packages) on 127.3.20.x: a primary and a
 * pg_basebackup standby. The probe reads the lag only while replay is behind receive, so an idle
 * primary does not make a healthy standby lag; with replay paused (pg_wal_replay_pause()) while
 * the primary takes writes, the standby leaves the read service (role replica, max_lag) within
 * max_lag + fall × interval and the primary (a backup) takes the reads; resumed, it returns.
 * lag_action: remove keeps its open sessions, close ends them. The lag is in the API and /metrics.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthSchema } from '../../src/config/schema.ts';
import { postgresProbe } from '../../src/health/probes/postgres.ts';
import type { FulcrumHandle } from '../../src/main.ts';
import { startProxy } from '../proxy/harness.ts';
import { withPage } from '../helpers/browser.ts';
import { pgSandbox, type PgCluster, type PgSandbox } from '../helpers/postgres.ts';
import { freePort, waitFor } from '../helpers/net.ts';
import { waitUntilOnly } from './switchover.ts';

const HOST = '127.3.20.1';
const LISTEN = '127.3.20.10';
const INTERVAL = 150;
const FALL = 2;
const RISE = 2;
const MAX_LAG = 1000;

let sandbox: PgSandbox;
let primary: PgCluster;
let standby: PgCluster;

beforeAll(async () => {
  sandbox = await pgSandbox(HOST);
  primary = await sandbox.initPrimary('lag1');
  await primary.sql('CREATE TABLE ticks (at timestamptz)');
  standby = await sandbox.basebackup(primary, 'lag2');
  // A transaction the standby replays (before it, pg_last_xact_replay_timestamp() is NULL).
  await primary.sql('INSERT INTO ticks VALUES (now())');
}, 120_000);

afterAll(async () => {
  await sandbox?.stop();
});

const probe = (c: PgCluster, x: Record<string, unknown> = {}) =>
  postgresProbe({ host: c.host, port: c.port }, healthSchema.parse({ type: 'postgres', role: 'replica', timeout: '2s', max_lag: `${MAX_LAG}ms`, ...x }), AbortSignal.timeout(2000));

/** Writes on the primary every 50 ms until stopped (a table the standby replays). */
function writer(): { stop: () => Promise<void> } {
  let done = false;
  const client = new pg.Client({ host: primary.host, port: primary.port, user: 'postgres', database: 'postgres' });
  const loop = (async () => {
    await client.connect();
    while (!done) {
      await client.query('INSERT INTO ticks VALUES (now())');
      await new Promise((r) => setTimeout(r, 50));
    }
    await client.end();
  })();
  return { stop: async () => { done = true; await loop; } };
}

/** Until the standby has received WAL it has not replayed (replay paused, the primary writing). */
const replayBehind = async () => (await standby.sql('SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()')) === 't';

describe('the PostgreSQL lag probe', () => {
  it('an idle primary does not make a healthy standby lag', async () => {
    // The last replayed transaction is older than max_lag: the time-based measure alone would say "lagging".
    await waitFor(async () => (await standby.sql(`SELECT coalesce(now() - pg_last_xact_replay_timestamp() > interval '${2 * MAX_LAG} milliseconds', false)`)) === 't', 10_000, 'the primary idle for 2 × max_lag', 100);
    for (let i = 0; i < 5; i++) expect(await probe(standby)).toMatchObject({ ok: true, role: 'replica', lag_ms: 0, reason: 'role replica, lag 0ms' });
    // A primary has no lag to read; with role any it passes as a primary.
    expect(await probe(primary, { role: 'any' })).toMatchObject({ ok: true, role: 'primary' });
    expect((await probe(primary, { role: 'any' })).lag_ms).toBeUndefined();
  });

  it('replay paused while the primary writes: lagging, with the lag; resumed: caught up', async () => {
    const w = writer();
    try {
      await standby.sql('SELECT pg_wal_replay_pause()');
      await waitFor(replayBehind, 5000, 'replay behind receive', 50);
      await waitFor(async () => (await probe(standby)).lagging === true, 5000, 'the probe to say lagging', 50);
      const r = await probe(standby);
      expect(r).toMatchObject({ ok: false, lagging: true, role: 'replica', reason: expect.stringMatching(/^lagging: \d+\.\d+s behind its primary \(max_lag 1\.0s\)$/) });
      expect(r.lag_ms).toBeGreaterThan(MAX_LAG);
      await standby.sql('SELECT pg_wal_replay_resume()');
      await waitFor(async () => (await probe(standby)).ok, 5000, 'the probe to pass again', 50);
    } finally {
      await standby.sql('SELECT pg_wal_replay_resume()').catch(() => {});
      await w.stop();
    }
  });
});

describe('a read service (role replica, max_lag, the primary as backup)', () => {
  let fulcrum: FulcrumHandle;
  let portRemove: number;
  let portClose: number;

  const service = (name: string, port: number, action: string) => `
  - name: ${name}
    listen: ${LISTEN}:${port}
    balance: roundrobin
    health:
      type: postgres
      role: replica
      max_lag: ${MAX_LAG}ms
      lag_action: ${action}
      interval: ${INTERVAL}ms
      timeout: ${INTERVAL}ms
      rise: ${RISE}
      fall: ${FALL}
    backends:
      - address: ${standby.address}
      - address: ${primary.address}
        backup: true
`;

  beforeAll(async () => {
    portRemove = await freePort(LISTEN);
    portClose = await freePort(LISTEN);
    fulcrum = await startProxy(`
workers: 1
logging: { level: warn }
admin: { listen: ${LISTEN}:${await freePort(LISTEN)} }
services:${service('read', portRemove, 'remove')}${service('read-close', portClose, 'close')}`);
  });
  afterAll(async () => {
    await fulcrum?.stop('test done');
  });

  async function connect(port: number): Promise<pg.Client> {
    const c = new pg.Client({ host: LISTEN, port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 2000 });
    c.on('error', () => {});
    await c.connect();
    return c;
  }
  const serverPort = async (c: pg.Client) => Number((await c.query('SELECT inet_server_port() AS p')).rows[0].p);
  const whoAnswers = (port: number) => async (): Promise<number> => {
    const c = await connect(port);
    try {
      return await serverPort(c);
    } finally {
      await c.end().catch(() => {});
    }
  };

  it('reads go to the standby; lagging, to the primary (sessions kept or closed as lag_action says); caught up, back', async () => {
    await waitUntilOnly(whoAnswers(portRemove), standby.port, 5000);
    await waitUntilOnly(whoAnswers(portClose), standby.port, 5000);
    const kept = await connect(portRemove);
    const closed = await connect(portClose);
    expect(await serverPort(kept)).toBe(standby.port);
    expect(await serverPort(closed)).toBe(standby.port);
    let closedEnded = false;
    closed.on('end', () => (closedEnded = true));

    // Writes flowing and replayed, so the last replayed commit is recent when replay stops.
    const w = writer();
    try {
      await waitFor(async () => (await standby.sql(`SELECT now() - pg_last_xact_replay_timestamp() < interval '200 milliseconds'`)) === 't', 5000, 'the standby replaying the writes', 50);
      await standby.sql('SELECT pg_wal_replay_pause()');
      const paused = Date.now();
      const movedAt = await waitUntilOnly(whoAnswers(portRemove), primary.port, MAX_LAG + 10_000);
      // The bound: max_lag, then fall probes over it; one more interval for the probe that
      // straddles the crossing and the jitter (± 10 %), and 300 ms for a busy machine.
      expect(movedAt - paused).toBeLessThanOrEqual(MAX_LAG + (FALL + 1) * INTERVAL + 300);
      expect(movedAt - paused).toBeGreaterThanOrEqual(MAX_LAG - 200);
      const h = fulcrum.health.state('read', standby.address)!;
      expect(h).toMatchObject({ state: 'down', role: { reported: 'replica', eligible: true } });
      expect(h.role!.lag_ms).toBeGreaterThan(MAX_LAG);
      expect(h.last?.reason).toMatch(/^lagging: /);

      // lag_action: remove keeps the standby's open session; close ended it.
      expect(await serverPort(kept)).toBe(standby.port);
      await waitFor(() => closedEnded, 3000, 'the read-close session to be closed');

      // Visible: /api/services, /api/status and the gauge.
      const admin = `http://${fulcrum.config.admin!.listen.host}:${fulcrum.config.admin!.listen.port}`;
      const { services } = await (await fetch(`${admin}/api/services`)).json() as { services: Array<{ name: string; backends: Array<Record<string, any>> }> };
      const b = services.find((s) => s.name === 'read')!.backends.find((x) => x.address === standby.address)!;
      expect(b.role.lag_ms).toBeGreaterThan(MAX_LAG);
      const status = await (await fetch(`${admin}/api/status`)).json() as { roles: Array<Record<string, any>> };
      expect(status.roles.find((r) => r.service === 'read' && r.backend === standby.address)?.lag_ms).toBeGreaterThan(MAX_LAG);
      const metrics = await (await fetch(`${admin}/metrics`)).text();
      const gauge = Number(new RegExp(`fulcrum_backend_replication_lag_seconds\\{service="read",backend="${standby.address.replace(/\./g, '\\.')}"\\} (\\S+)`).exec(metrics)?.[1]);
      expect(gauge).toBeGreaterThan(MAX_LAG / 1000);
      // The status page's Lag column: seconds for the lagging standby, a dash for the primary (no lag read).
      await withPage(`${admin}/`, async (page) => {
        const lagCell = (address: string) => page.locator(`tr[data-backend="read|${address}"] td[data-field="lag"]`);
        await lagCell(standby.address).filter({ hasText: / s$/ }).waitFor({ timeout: 5000 });
        expect(Number((await lagCell(standby.address).textContent())!.replace(' s', ''))).toBeGreaterThan(MAX_LAG / 1000);
        expect(await lagCell(primary.address).textContent()).toBe('–');
      });

      await standby.sql('SELECT pg_wal_replay_resume()');
      const resumed = Date.now();
      const backAt = await waitUntilOnly(whoAnswers(portRemove), standby.port, 10_000);
      expect(backAt - resumed).toBeLessThanOrEqual((RISE + 1) * INTERVAL + 500);
      // Writes still flow: replay may be a moment behind receive, under max_lag.
      expect(fulcrum.health.state('read', standby.address)?.role?.lag_ms).toBeLessThanOrEqual(MAX_LAG);
    } finally {
      await standby.sql('SELECT pg_wal_replay_resume()').catch(() => {});
      await w.stop();
      await kept.end().catch(() => {});
    }
  }, 60_000);
});
