/**
 * A real MariaDB server for tests (Debian's mariadb-server): a temp datadir made with
 * mariadb-install-db, mariadbd bound to one loopback address and port, its socket in the temp
 * dir, running as root (acceptable in a test sandbox). stop() kills it and removes the dir.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort, waitFor } from './net.ts';

const run = promisify(execFile);

export interface MariaDbServer {
  host: string;
  port: number;
  address: string;
  dir: string;
  /** Runs SQL as root over the socket; returns the client's tab-separated output, trimmed. */
  sql(query: string): Promise<string>;
  stop(): Promise<void>;
}

/** `args`: more mariadbd options, after the defaults (e.g. --log-bin and --server-id for replication). */
export async function startMariaDb(host: string, args: string[] = []): Promise<MariaDbServer> {
  const dir = await mkdtemp(join(tmpdir(), 'fulcrum-mariadb-'));
  const datadir = join(dir, 'data');
  const socket = join(dir, 'mysqld.sock');
  const port = await freePort(host);
  const installArgs = ['--no-defaults', `--datadir=${datadir}`, '--user=root', '--auth-root-authentication-method=normal', '--skip-test-db'];
  // One retry: on a busy machine the bootstrap has been seen to fail once and pass the next time.
  for (let attempt = 1; ; attempt++) {
    try {
      await run('mariadb-install-db', installArgs, { timeout: 60_000 });
      break;
    } catch (err) {
      await rm(datadir, { recursive: true, force: true });
      if (attempt === 2) {
        await rm(dir, { recursive: true, force: true });
        const e = err as { stderr?: string; stdout?: string; message: string };
        throw new Error(`mariadb-install-db failed (is mariadb-server installed?): ${e.stderr || e.stdout || e.message}`);
      }
    }
  }
  const child: ChildProcess = spawn('mariadbd', [
    '--no-defaults', `--datadir=${datadir}`, `--socket=${socket}`, `--port=${port}`, `--bind-address=${host}`,
    '--user=root', `--pid-file=${join(dir, 'mysqld.pid')}`, `--log-error=${join(dir, 'error.log')}`,
    '--skip-log-bin', '--innodb-buffer-pool-size=16M', '--skip-name-resolve', '--innodb-flush-log-at-trx-commit=0', ...args,
  ], { stdio: 'ignore' });
  let exited = false;
  const exitPromise = new Promise<void>((resolve) => child.once('exit', () => { exited = true; resolve(); }));
  const sql = async (query: string) => {
    const { stdout } = await run('mariadb', ['--no-defaults', `--socket=${socket}`, '-uroot', '-N', '-B', '-e', query], { timeout: 10_000 });
    return stdout.trim();
  };
  const stop = async () => {
    if (!exited) {
      child.kill('SIGKILL');
      await exitPromise;
    }
    await rm(dir, { recursive: true, force: true });
  };
  // Until it answers a query (an exit ends the wait).
  const answers = () => sql('SELECT 1').then(() => true, () => false);
  const up = await waitFor(async () => exited || (await answers()), 30_000, 'mariadbd to answer', 100).then(() => !exited, () => false);
  if (!up) {
    await stop();
    throw new Error(`mariadbd on ${host}:${port} did not start (is mariadb-server installed?)`);
  }
  return { host, port, address: `${host}:${port}`, dir, sql, stop };
}
