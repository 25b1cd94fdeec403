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
