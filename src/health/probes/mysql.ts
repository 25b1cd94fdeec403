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
