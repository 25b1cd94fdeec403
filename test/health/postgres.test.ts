/**
 * PostgreSQL 15, real clusters (Debian's packages) on 127.3.4.x: a primary and a streaming
 * standby made with pg_basebackup. The probe authenticates with SCRAM-SHA-256 from a
 * password_file and reads pg_is_in_recovery(); fulcrum with `role: primary` follows a switchover
 * (old primary stopped, standby promoted, old primary restarted as a standby of the new one).
 */
import { chown, copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthSchema } from '../../src/config/schema.ts';
import { postgresProbe } from '../../src/health/probes/postgres.ts';
import type { FulcrumHandle } from '../../src/main.ts';
import { startProxy } from '../proxy/harness.ts';
import { monitorClient, PG_GID, PG_UID, pgPair, pgSandbox, primaryServiceYaml, whoAnswersAt, type PgCluster, type PgPair, type PgSandbox } from '../helpers/postgres.ts';
import { makeCerts } from '../helpers/tls.ts';
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

/** Whichever cluster is the primary now (the switchover above swaps them). */
const primary = async (): Promise<PgCluster> => ((await pg1.sql('SELECT pg_is_in_recovery()')) === 'f' ? pg1 : pg2);

describe('postgres probe: which password authentication it accepts (health.postgres.auth)', () => {
  /** A fake server that asks for `method` (3 cleartext, 5 MD5) after the startup message and keeps what comes next. */
  async function asking(method: number): Promise<{ port: number; after: () => Buffer; close: () => Promise<void> }> {
    const seen: Buffer[] = [];
    const server = net.createServer((s) => {
      s.on('error', () => {});
      let startup = true;
      s.on('data', (d: Buffer) => {
        if (!startup) return void seen.push(d);
        startup = false;
        const r = Buffer.alloc(method === 5 ? 13 : 9);
        r.write('R', 0);
        r.writeInt32BE(r.length - 1, 1);
        r.writeInt32BE(method, 5);
        s.write(r);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
    return {
      port: (server.address() as net.AddressInfo).port,
      after: () => Buffer.concat(seen),
      close: () => new Promise((resolve) => server.close(() => resolve())),
    };
  }

  it('gives a server that asks for a cleartext password or an MD5 hash nothing by default, and says why', async () => {
    for (const [method, words] of [[3, 'a cleartext password'], [5, 'an MD5 password hash']] as const) {
      const fake = await asking(method);
      try {
        const r = await postgresProbe({ host: HOST, port: fake.port }, h(monitorAuth()), AbortSignal.timeout(2000));
        expect(r).toMatchObject({ ok: false, reason: expect.stringContaining(`auth refused: the server asks for ${words}; health.postgres.auth is scram`) });
        await new Promise((resolve) => setTimeout(resolve, 100)); // anything sent has arrived by now on loopback
        expect(fake.after().toString('latin1')).not.toContain(PASSWORD);
        expect(fake.after().includes(0x70)).toBe(false); // no PasswordMessage ('p') at all
      } finally {
        await fake.close();
      }
    }
  });

  it('sends the cleartext password only when auth: password allows it', async () => {
    const fake = await asking(3);
    try {
      await postgresProbe({ host: HOST, port: fake.port }, h({ postgres: { ...monitorAuth().postgres, auth: 'password' } }), AbortSignal.timeout(500));
      expect(fake.after().toString('latin1')).toContain(PASSWORD);
    } finally {
      await fake.close();
    }
  });

  it('against a real server: password and md5 methods refused by default, accepted when allowed; scram by default', async () => {
    const p = await primary();
    await p.sql(`CREATE ROLE clear LOGIN PASSWORD '${PASSWORD}'`);
    await p.sql(`SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD '${PASSWORD}'`);
    const hba = join(p.dir, 'pg_hba.conf');
    await writeFile(hba, `host all clear 127.0.0.0/8 password\nhost all md5user 127.0.0.0/8 md5\n${await readFile(hba, 'utf8')}`);
    await p.sql('SELECT pg_reload_conf()');
    const as = (user: string, auth?: string) => probe(p, { postgres: { user, password_file: pwFile, database: 'postgres', ...(auth ? { auth } : {}) } });
    await expect.poll(async () => (await as('clear')).reason, { timeout: 5000 })
      .toMatch(/^auth refused: the server asks for a cleartext password; health\.postgres\.auth is scram/);
    expect(await as('clear', 'password')).toMatchObject({ ok: true, reason: 'role primary' });
    expect(await as('md5user')).toMatchObject({ ok: false, reason: expect.stringMatching(/^auth refused: the server asks for an MD5 password hash/) });
    expect(await as('md5user', 'md5')).toMatchObject({ ok: true, reason: 'role primary' });
    expect(await as('md5user', 'password')).toMatchObject({ ok: true });
    expect(await as('clear', 'md5')).toMatchObject({ ok: false, reason: expect.stringMatching(/^auth refused: .*cleartext/) });
    expect(await as('monitor')).toMatchObject({ ok: true, reason: 'role primary' });
  });
});

describe('postgres probe over TLS (health.postgres.tls)', () => {
  it('require encrypts, verify-full checks the CA and the address; a server without TLS is refused', async () => {
    const p = await primary();
    const other = p === pg1 ? pg2 : pg1;
    const certs = await makeCerts(dir, HOST);
    for (const [from, to] of [[certs.certFile, 'server.crt'], [certs.keyFile, 'server.key']]) {
      await copyFile(from, join(p.dir, to));
      await chown(join(p.dir, to), PG_UID, PG_GID);
    }
    await p.sql('ALTER SYSTEM SET ssl = on');
    await p.sql('SELECT pg_reload_conf()');
    const tlsProbe = (x: Record<string, unknown>) => probe(p, { postgres: { ...monitorAuth().postgres, ...x } });
    await expect.poll(async () => (await tlsProbe({ tls: 'require' })).reason, { timeout: 5000 }).toBe('role primary');
    expect(await tlsProbe({ tls: 'verify-full', ca_file: certs.caFile })).toMatchObject({ ok: true, reason: 'role primary' });

    expect(await tlsProbe({ tls: 'verify-full', ca_file: certs.otherCaFile })).toMatchObject({ ok: false, reason: expect.stringMatching(/^tls: /) });
    expect(await tlsProbe({ tls: 'verify-full' })).toMatchObject({ ok: false, reason: expect.stringMatching(/^tls: /) });
    // The other cluster has no certificate: TLS required, the server says no.
    expect(await probe(other, { postgres: { ...monitorAuth().postgres, tls: 'require' } })).toMatchObject({ ok: false, reason: 'tls: the server does not support TLS (health.postgres.tls is require)' });
  });
});
