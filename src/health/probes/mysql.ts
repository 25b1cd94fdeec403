/**
 * `type: mysql` — connects with `mysql2` (MySQL and MariaDB), runs `SELECT @@global.read_only`:
 * 0 is a primary, 1 a replica (the convention replication tooling keeps: replicas read-only).
 *
 * Settings (health.mysql): user (default "root"), password_file, database (optional), tls and
 * ca_file (TLS after the server's greeting, as MySQL negotiates it).
 */
import mysql from 'mysql2';
import net from 'node:net';
import tls from 'node:tls';
import { capReply, checkData, framed, MAX_REPLY, ProbeFailure, readSecret, roleResult, runProbe, tlsOptions, type Probe } from './probe.ts';
import { lagResult } from './lag.ts';

const AUTH_ERRNOS = new Set([1044, 1045, 1698, 1130]);

/**
 * The check of mysql2's socket (CheckedSocket): frames packets (3-byte length, sequence id) and
 * refuses an error packet shorter than its marker and code. mysql2 parses a packet that arrives
 * while no command waits for one (after the query's result, before QUIT) outside its commands'
 * try/catch, reading an error packet's code unchecked: a short one threw a RangeError out of the
 * socket's callback, which ended the process. Commands catch what they read themselves. Holds
 * at most one incomplete packet (≤ MAX_REPLY: a larger one is refused at its header).
 */
export const mysqlFrames = (): ((chunk: Buffer) => string | null) => framed(4, (b, at) => {
  const len = b.readUIntLE(at, 3);
  return len > MAX_REPLY ? `bad reply: not the MySQL protocol (a packet of ${len} bytes)` : 4 + len;
}, (b, at, total) => {
  const len = total - 4;
  return len > 0 && b[at + 4] === 0xff && len < 3 ? `bad reply: not the MySQL protocol (an error packet of ${len} byte${len === 1 ? '' : 's'})` : null;
});

type Row = Record<string, unknown>;

const query = (conn: mysql.Connection, sql: string): Promise<Row[]> => new Promise((resolve, reject) => {
  conn.query(sql, (err, result) => (err ? reject(err) : resolve(Array.isArray(result) ? result as Row[] : [])));
});

/** SHOW REPLICA STATUS (MySQL ≥ 8.0.22, MariaDB ≥ 10.5.1), else SHOW SLAVE STATUS (a syntax error, 1064, says which). */
async function replicaStatus(conn: mysql.Connection): Promise<Row[]> {
  try {
    return await query(conn, 'SHOW REPLICA STATUS');
  } catch (err) {
    if ((err as { errno?: number }).errno !== 1064) throw err;
    return query(conn, 'SHOW SLAVE STATUS');
  }
}

/**
 * The lag in milliseconds from a replica's status (src/health/probes/lag.ts): Seconds_Behind_Master
 * (or _Source). NULL (replication stopped) and no status at all are failures, not lag.
 */
function replicaLag(rows: Row[]): number {
  const row = rows[0];
  if (!row) throw new ProbeFailure('read_only, but not replicating (SHOW REPLICA STATUS is empty)');
  const secs = row.Seconds_Behind_Master ?? row.Seconds_Behind_Source;
  const running = (io: string, sql: string) => `IO thread ${String(row[io] ?? '?')}, SQL thread ${String(row[sql] ?? '?')}`;
  if (secs === null || secs === undefined) {
    const threads = 'Slave_IO_Running' in row ? running('Slave_IO_Running', 'Slave_SQL_Running') : running('Replica_IO_Running', 'Replica_SQL_Running');
    throw new ProbeFailure(`replication stopped (Seconds_Behind_Master is NULL: ${threads})`);
  }
  const n = Number(secs);
  if (!Number.isFinite(n) || n < 0) throw new ProbeFailure(`bad reply: Seconds_Behind_Master ${JSON.stringify(secs)}`);
  return n * 1000;
}

export const mysqlProbe: Probe = (target, settings, signal) =>
  runProbe(signal, settings, async (stage) => {
    const cfg = settings.mysql;
    const password = cfg?.password_file ? await readSecret(cfg.password_file, 'health.mysql.password_file') : undefined;
    const secure = await tlsOptions(cfg, 'health.mysql');
    const socket = checkData(new net.Socket(), mysqlFrames());
    capReply(socket);
    socket.setNoDelay(true);
    socket.connect(target.port, target.host);
    const conn = mysql.createConnection({
      stream: socket,
      host: target.host,
      port: target.port,
      user: cfg?.user ?? 'root',
      password,
      database: cfg?.database,
      // The name check of verify-full is made below: mysql2's (verifyIdentity) checks an IP
      // address against "localhost", as it gives TLS no host.
      ...(secure ? { ssl: { rejectUnauthorized: secure.rejectUnauthorized, ca: secure.ca as string | undefined, verifyIdentity: false } } : {}),
      connectTimeout: settings.timeout + 100,
      // Numbers as numbers; no date handling needed.
      supportBigNumbers: false,
    });
    conn.on('error', () => {});
    if (secure) {
      // mysql2 makes the TLS socket over ours after the greeting and parses what it emits: the
      // same checks and bound apply to it, set before any data can arrive on it.
      const internal = conn as unknown as { startTLS(onSecure: (err?: Error) => void): void; stream: net.Socket };
      const startTLS = internal.startTLS.bind(internal);
      internal.startTLS = (onSecure) => {
        startTLS(onSecure);
        const tlsSocket = internal.stream as tls.TLSSocket;
        checkData(tlsSocket, mysqlFrames());
        capReply(tlsSocket);
        // verify-full: the certificate must name the backend's configured host or address,
        // checked before mysql2's own handler (which sends the credentials) runs.
        if (secure.rejectUnauthorized === true) {
          tlsSocket.prependOnceListener('secureConnect', () => {
            const err = tls.checkServerIdentity(target.host, tlsSocket.getPeerCertificate());
            if (err) tlsSocket.destroy(err);
          });
        }
      };
    }
    stage.name = 'connecting: waiting for the handshake';
    conn.once('connect', () => { stage.name = 'waiting for @@global.read_only'; });
    const onAbort = () => conn.destroy();
    signal.addEventListener('abort', onAbort, { once: true });
    let clean = false;
    try {
      const rows = await new Promise<unknown>((resolve, reject) => {
        conn.query('SELECT @@global.read_only AS ro', (err, result) => (err ? reject(err) : resolve(result)));
      });
      const ro = Array.isArray(rows) ? (rows[0] as { ro?: unknown } | undefined)?.ro : undefined;
      const n = typeof ro === 'string' ? Number(ro) : ro;
      if (n !== 0 && n !== 1) throw new ProbeFailure(`bad reply: @@global.read_only returned ${JSON.stringify(ro)}`);
      if (n === 1 && settings.max_lag !== undefined && settings.role !== 'primary') {
        stage.name = 'waiting for SHOW REPLICA STATUS';
        const lag = replicaLag(await replicaStatus(conn));
        clean = true;
        return lagResult(settings.role, settings.max_lag, lag);
      }
      clean = true;
      return roleResult(n === 1 ? 'replica' : 'primary', settings.role);
    } catch (err) {
      const e = err as { errno?: number; code?: string; sqlMessage?: string; message?: string };
      if (e.errno !== undefined && AUTH_ERRNOS.has(e.errno)) throw new ProbeFailure(`auth failed: ${e.sqlMessage ?? e.message}`);
      if (e.sqlMessage) throw new ProbeFailure(`server error ${e.code ?? e.errno}: ${e.sqlMessage}`);
      throw err;
    } finally {
      signal.removeEventListener('abort', onAbort);
      if (clean) {
        conn.end(() => {});
        setTimeout(() => conn.destroy(), 1000).unref();
      } else {
        conn.destroy();
      }
    }
  });
