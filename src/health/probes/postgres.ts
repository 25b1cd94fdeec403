/**
 * `type: postgres` — connects with the `pg` driver, runs `SELECT pg_is_in_recovery()`: false is a
 * primary, true a standby (replica).
 *
 * Settings (health.postgres): user (default "postgres"), password_file, database (default: the
 * user name, as libpq does), auth (the weakest password authentication allowed: scram, the
 * default, md5 or password), tls and ca_file. The connection is closed after every probe: a
 * monitor connection held open would hide a server that stops accepting new ones.
 *
 * The password goes to whatever answers at the backend's address: a server that asks for it in
 * cleartext (or as MD5, a hash it can replay) gets nothing unless `auth` allows that method; the
 * probe then fails saying so. SCRAM proves the password without sending it.
 */
import net from 'node:net';
import pg from 'pg';
import type { HealthConfig } from '../../config/schema.ts';
import { capReply, checkData, excerpt, framed, MAX_REPLY, ProbeFailure, readSecret, roleResult, runProbe, tlsOptions, type Probe } from './probe.ts';
import { lagResult, PG_LAG_QUERY } from './lag.ts';

/** SQLSTATEs that mean "these credentials will not do" rather than "the server is unwell". */
const AUTH_STATES = new Set(['28P01', '28000']);

/** Authentication requests pg-protocol knows: ok, cleartext, MD5, SASL, SASL continue, SASL final. */
const AUTH_KNOWN = new Set([0, 3, 5, 10, 11, 12]);
const AUTH_NAMES: Record<number, string> = { 2: 'Kerberos V5', 6: 'SCM credential', 7: 'GSSAPI', 8: 'GSSAPI', 9: 'SSPI' };

/**
 * Why pg's parser must not see this backend message, or null. `b` is the message's body (after
 * its type byte and length). pg-protocol reads a message trusting its fields: an ErrorResponse or
 * NoticeResponse whose fields lack their terminating NUL makes it loop for ever, and a message
 * shorter than what its type reads, or with a negative count (`new Array(-1)`), makes it throw
 * (RangeError) from the socket's 'data' callback, as does an authentication method it does not
 * know. Only those reads are checked here: what the fields say is pg's to judge.
 */
function pgMessageProblem(code: number, b: Buffer): string | null {
  const bad = (what: string) => `bad reply: not the PostgreSQL protocol (message ${excerpt(Buffer.from([code]))} ${what})`;
  const n = b.length;
  switch (code) {
    case 0x52: { // R: authentication request
      if (n < 4) return bad('without its method');
      const method = b.readInt32BE(0);
      if (AUTH_KNOWN.has(method)) return null;
      return `auth failed: the server asks for ${AUTH_NAMES[method] ?? `method ${method}`} authentication; the probe speaks password, md5 and scram-sha-256`;
    }
    case 0x45: // E: ErrorResponse
    case 0x4e: { // N: NoticeResponse — fields of a type byte and a C string, then a NUL
      for (let at = 0; ;) {
        if (at >= n) return bad('whose fields do not end');
        if (b[at] === 0) return null;
        const nul = b.indexOf(0, at + 1);
        if (nul < 0) return bad('whose fields do not end');
        at = nul + 1;
      }
    }
    case 0x4b: // K: BackendKeyData, two int32
      return n < 8 ? bad('shorter than its fields') : null;
    case 0x41: // A: NotificationResponse, an int32 first
      return n < 4 ? bad('shorter than its fields') : null;
    case 0x74: // t: ParameterDescription, int16 count × int32
      if (n < 2 || b.readInt16BE(0) < 0) return bad('without its count');
      return n < 2 + 4 * b.readInt16BE(0) ? bad('shorter than its fields') : null;
    case 0x47: // G, H: CopyIn/CopyOut response, int8, int16 count × int16
    case 0x48:
      if (n < 3 || b.readInt16BE(1) < 0) return bad('without its count');
      return n < 3 + 2 * b.readInt16BE(1) ? bad('shorter than its fields') : null;
    case 0x54: { // T: RowDescription, int16 count × (C string, 18 bytes)
      if (n < 2 || b.readInt16BE(0) < 0) return bad('without its count');
      let at = 2;
      for (let i = b.readInt16BE(0); i > 0; i--) {
        const nul = b.indexOf(0, at);
        if (nul < 0 || nul + 19 > n) return bad('shorter than its fields');
        at = nul + 19;
      }
      return null;
    }
    case 0x44: { // D: DataRow, int16 count × (int32 length, bytes; -1 is NULL)
      if (n < 2 || b.readInt16BE(0) < 0) return bad('without its count');
      let at = 2;
      for (let i = b.readInt16BE(0); i > 0; i--) {
        if (at + 4 > n) return bad('shorter than its fields');
        const len = b.readInt32BE(at);
        at += 4;
        if (len === -1) continue;
        if (len < 0 || at + len > n) return bad('shorter than its fields');
        at += len;
      }
      return null;
    }
  }
  return null; // no read that can fail (or a type pg reports as an invalid response itself)
}

/**
 * The check of pg's socket (CheckedSocket): frames the backend's messages and runs
 * pgMessageProblem on each, holding at most one incomplete message (≤ MAX_REPLY) between chunks.
 */
export const pgFrames = (): ((chunk: Buffer) => string | null) => framed(5, (b, at) => {
  const len = b.readUInt32BE(at + 1);
  return len < 4 || len > MAX_REPLY ? `bad reply: not the PostgreSQL protocol (message ${excerpt(b.subarray(at, at + 1))} of ${len} bytes)` : 1 + len;
}, (b, at, total) => pgMessageProblem(b[at], b.subarray(at + 5, at + total)));

type PostgresAuth = NonNullable<HealthConfig['postgres']>['auth'];

/** The methods each `auth` setting allows, weakest last. */
const AUTH_ALLOWS: Record<PostgresAuth, ReadonlySet<'md5' | 'password'>> = {
  scram: new Set(),
  md5: new Set(['md5']),
  password: new Set(['md5', 'password']),
};

/** Why the probe keeps its password from a server asking for it this way. */
const refusal = (method: 'md5' | 'password', auth: PostgresAuth): string =>
  `auth refused: the server asks for ${method === 'password' ? 'a cleartext password' : 'an MD5 password hash'}; ` +
  `health.postgres.auth is ${auth}, so the probe sends no password (set auth: ${method} to allow it)`;

export const postgresProbe: Probe = (target, settings, signal) =>
  runProbe(signal, settings, async (stage) => {
    const cfg = settings.postgres;
    const user = cfg?.user ?? 'postgres';
    const auth = cfg?.auth ?? 'scram';
    const password = cfg?.password_file ? await readSecret(cfg.password_file, 'health.postgres.password_file') : undefined;
    const ssl = await tlsOptions(cfg, 'health.postgres');
    const socket = checkData(new net.Socket(), pgFrames());
    capReply(socket);
    let refused: string | null = null;
    const client = new pg.Client({
      stream: () => socket,
      host: target.host,
      port: target.port,
      user,
      database: cfg?.database ?? user,
      ...(ssl ? { ssl } : {}),
      // Asked for only when the server wants a password, after the method check below; an empty
      // string then fails as auth.
      password: async () => {
        if (refused !== null) throw new ProbeFailure(refused);
        return password ?? '';
      },
      application_name: 'fulcrum-health',
      // The signal is the real bound; these keep the driver from outliving it on its own.
      connectionTimeoutMillis: settings.timeout + 100,
      query_timeout: settings.timeout + 100,
    });
    // A driver 'error' after the probe has settled must never become an uncaught exception.
    client.on('error', () => {});
    // Attached before connect(), so they run before pg's own handlers (which ask for the password).
    const refuse = (method: 'md5' | 'password') => (): void => {
      if (AUTH_ALLOWS[auth].has(method)) return;
      refused = refusal(method, auth);
      socket.destroy(new ProbeFailure(refused));
    };
    client.connection.on('authenticationCleartextPassword', refuse('password'));
    client.connection.on('authenticationMD5Password', refuse('md5'));
    // Over TLS pg parses what the TLS socket it made emits: the same checks apply there, and the
    // same bound (the plain socket's data now goes to TLS, not to the listeners above).
    client.connection.on('sslconnect', () => {
      const secure = client.connection.stream;
      checkData(secure, pgFrames());
      capReply(secure);
    });
    const onAbort = () => socket.destroy();
    signal.addEventListener('abort', onAbort, { once: true });
    let clean = false;
    try {
      await client.connect();
      stage.name = 'waiting for pg_is_in_recovery()';
      const res = await client.query<{ r: unknown }>('SELECT pg_is_in_recovery() AS r');
      const r = res.rows[0]?.r;
      if (typeof r !== 'boolean') throw new ProbeFailure(`bad reply: pg_is_in_recovery() returned ${JSON.stringify(r)}`);
      if (r && settings.max_lag !== undefined && settings.role !== 'primary') {
        stage.name = 'waiting for the replication lag';
        const lag = (await client.query<{ lag_ms: unknown }>(PG_LAG_QUERY)).rows[0]?.lag_ms;
        if (lag !== null && typeof lag !== 'number') throw new ProbeFailure(`bad reply: the lag query returned ${JSON.stringify(lag)}`);
        clean = true;
        return lagResult(settings.role, settings.max_lag, lag, lag === null ? 'replay behind receive, no transaction replayed yet' : '');
      }
      clean = true;
      return roleResult(r ? 'replica' : 'primary', settings.role);
    } catch (err) {
      const e = err as { code?: string; message?: string };
      if (e.code && AUTH_STATES.has(e.code)) throw new ProbeFailure(`auth failed: ${e.message}`);
      if (/SASL|password must be a string|client password/.test(e.message ?? '')) throw new ProbeFailure(`auth failed: ${e.message}`);
      if (e.code === '57P03') throw new ProbeFailure(`server not accepting connections: ${e.message}`);
      if (e.code === '3D000') throw new ProbeFailure(`${e.message} (health.postgres.database)`);
      if (/does not support SSL/.test(e.message ?? '')) throw new ProbeFailure(`tls: the server does not support TLS (health.postgres.tls is ${cfg?.tls})`);
      throw err;
    } finally {
      signal.removeEventListener('abort', onAbort);
      if (clean) {
        // Terminate politely (no "connection reset" lines in the server's log), but never wait on it.
        client.end().catch(() => {});
        setTimeout(() => socket.destroy(), 1000).unref();
      } else {
        socket.destroy();
      }
    }
  });
