/**
 * Real PostgreSQL 15 clusters for tests, from Debian's packages. PostgreSQL refuses to run as
 * root, so every server command runs as the `postgres` OS user (runuser) in a temp dir chowned
 * to it. Servers listen on one loopback address with their own ports; the Unix socket lives in
 * the temp dir. stop() stops every cluster started from the root and removes the dir.
 *
 * Authentication: local (socket) connections are trusted for the superuser the test drives;
 * TCP connections of `monitor` need a SCRAM-SHA-256 password; replication connects as postgres.
 */
import { execFile } from 'node:child_process';
import { chown, mkdtemp, rm, writeFile, appendFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { freePort } from './net.ts';

const run = promisify(execFile);
export const PG_BIN = '/usr/lib/postgresql/15/bin';
export const PG_UID = 101;
export const PG_GID = 104;

async function asPostgres(cmd: string, args: string[], timeout = 60_000): Promise<string> {
  try {
    const { stdout } = await run('runuser', ['-u', 'postgres', '--', join(PG_BIN, cmd), ...args], { timeout });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${e.stderr || e.message}`);
  }
}

export interface PgCluster {
  name: string;
  host: string;
  port: number;
  address: string;
  dir: string;
  /** Runs SQL as the superuser over the Unix socket; returns psql's unaligned output, trimmed. */
  sql(query: string): Promise<string>;
  start(): Promise<void>;
  stop(mode?: 'fast' | 'immediate'): Promise<void>;
  promote(): Promise<void>;
  /** Turns a stopped cluster into a standby of `primary` (standby.signal + primary_conninfo). */
  followPrimary(primary: PgCluster): Promise<void>;
}

export interface PgSandbox {
  root: string;
  host: string;
  /** A new primary cluster (initdb), started. */
  initPrimary(name: string): Promise<PgCluster>;
  /** A streaming standby of `primary` made with pg_basebackup -R, started. */
  basebackup(primary: PgCluster, name: string): Promise<PgCluster>;
  stop(): Promise<void>;
}

export async function pgSandbox(host: string): Promise<PgSandbox> {
  const root = await mkdtemp(join(tmpdir(), 'fulcrum-pg-'));
  await chown(root, PG_UID, PG_GID);
  const clusters: PgCluster[] = [];

  const confFor = (port: number) => [
    '',
    '# fulcrum test settings',
    `listen_addresses = '${host}'`,
    `port = ${port}`,
    `unix_socket_directories = '${root}'`,
    'fsync = off',
    'synchronous_commit = off',
    'full_page_writes = off',
    'shared_buffers = 16MB',
    'max_connections = 40',
    'wal_level = replica',
    'max_wal_senders = 5',
    'hot_standby = on',
    "password_encryption = 'scram-sha-256'",
    '',
  ].join('\n');

  const hba = [
    'local all all trust',
    'host replication postgres 127.0.0.0/8 trust',
    'host all postgres 127.0.0.0/8 trust',
    'host all all 127.0.0.0/8 scram-sha-256',
    '',
  ].join('\n');

  const cluster = (name: string, port: number): PgCluster => {
    const dir = join(root, name);
    const c: PgCluster = {
      name, host, port, address: `${host}:${port}`, dir,
      sql: async (query) => (await asPostgres('psql', ['-h', root, '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-c', query])).trim(),
      start: async () => { await asPostgres('pg_ctl', ['-D', dir, '-l', join(root, `${name}.log`), '-w', '-t', '30', 'start']); },
      stop: async (mode = 'fast') => { await asPostgres('pg_ctl', ['-D', dir, '-m', mode, '-w', '-t', '30', 'stop']); },
      promote: async () => { await asPostgres('pg_ctl', ['-D', dir, '-w', '-t', '30', 'promote']); },
      followPrimary: async (primary) => {
        await writeFile(join(dir, 'standby.signal'), '');
        await appendFile(join(dir, 'postgresql.auto.conf'),
          `primary_conninfo = 'host=${primary.host} port=${primary.port} user=postgres application_name=${name}'\nrecovery_target_timeline = 'latest'\n`);
        await chown(join(dir, 'standby.signal'), PG_UID, PG_GID);
      },
    };
    clusters.push(c);
    return c;
  };

  return {
    root, host,
    async initPrimary(name) {
      const port = await freePort(host);
      const c = cluster(name, port);
      await asPostgres('initdb', ['-D', c.dir, '-U', 'postgres', '-E', 'UTF8', '--no-sync', '--auth-local=trust', '--auth-host=scram-sha-256']);
      await appendFile(join(c.dir, 'postgresql.conf'), confFor(port));
      await writeFile(join(c.dir, 'pg_hba.conf'), hba);
      await c.start();
      return c;
    },
    async basebackup(primary, name) {
      const port = await freePort(host);
      const c = cluster(name, port);
      await mkdir(c.dir, { mode: 0o700 });
      await chown(c.dir, PG_UID, PG_GID);
      await asPostgres('pg_basebackup', ['-h', primary.host, '-p', String(primary.port), '-U', 'postgres', '-D', c.dir, '-R', '-X', 'stream', '--no-sync', '-c', 'fast']);
      // The copied postgresql.conf carries the primary's port: the last setting wins.
      await appendFile(join(c.dir, 'postgresql.conf'), `\nport = ${port}\n`);
      await c.start();
      return c;
    },
    async stop() {
      for (const c of clusters) await c.stop('immediate').catch(() => {});
      await rm(root, { recursive: true, force: true });
    },
  };
}

/** A primary and its streaming standby, with a `monitor` login whose password is in a file. */
export interface PgPair {
  sandbox: PgSandbox;
  /** pg1: the primary at start. */
  primary: PgCluster;
  /** pg2: its standby (pg_basebackup). */
  standby: PgCluster;
  /** The monitor's password, in a file (mode 0600) for health.postgres.password_file. */
  pwFile: string;
  /** The temp dir the password file is in (tests may put other files there). */
  dir: string;
  /** Stops both clusters and removes their dirs. */
  stop(): Promise<void>;
}

/** Starts a PgPair on `host`: `monitor` logs in over TCP with `password` (SCRAM-SHA-256). */
export async function pgPair(host: string, password: string): Promise<PgPair> {
  const dir = await mkdtemp(join(tmpdir(), 'fulcrum-pg-test-'));
  const pwFile = join(dir, 'pg.pass');
  await writeFile(pwFile, `${password}\n`, { mode: 0o600 });
  const sandbox = await pgSandbox(host);
  const primary = await sandbox.initPrimary('pg1');
  await primary.sql(`CREATE ROLE monitor LOGIN PASSWORD '${password}'`);
  const standby = await sandbox.basebackup(primary, 'pg2');
  return {
    sandbox, primary, standby, pwFile, dir,
    async stop() {
      await sandbox.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A client of the `monitor` login to host:port (fulcrum's listener), its 'error' events swallowed: a test reads what its calls return. */
export function monitorClient(host: string, port: number, password: string, connectTimeoutMs = 2000): pg.Client {
  const c = new pg.Client({ host, port, user: 'monitor', password, database: 'postgres', connectionTimeoutMillis: connectTimeoutMs });
  c.on('error', () => {});
  return c;
}

/** The port of the server that answers a new connection to host:port (its inet_server_port()). */
export async function whoAnswersAt(host: string, port: number, password: string): Promise<number> {
  const c = monitorClient(host, port, password);
  try {
    await c.connect();
    return Number((await c.query('SELECT inet_server_port() AS p')).rows[0].p);
  } finally {
    await c.end().catch(() => {});
  }
}

/**
 * A fulcrum config (YAML) with one `role: primary` service `pg` on `listen` in front of the pair,
 * probing every `interval` ms (rise 1, fall `fall`) as `monitor`; `extra` lines (indented as the
 * service's keys) add settings.
 */
export function primaryServiceYaml(listen: string, pair: PgPair, interval: number, fall: number, extra: string): string {
  return `
workers: 2
logging: { level: warn }
services:
  - name: pg
    listen: ${listen}
${extra}
    health:
      type: postgres
      role: primary
      interval: ${interval}ms
      timeout: ${interval}ms
      rise: 1
      fall: ${fall}
      postgres: { user: monitor, password_file: ${pair.pwFile}, database: postgres }
    backends:
      - address: ${pair.primary.address}
      - address: ${pair.standby.address}
`;
}
