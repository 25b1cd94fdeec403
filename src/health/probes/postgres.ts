/**
 * `type: postgres` — connects with the `pg` driver (MD5 and SCRAM-SHA-256 authentication come
 * with it), runs `SELECT pg_is_in_recovery()`: false is a primary, true a standby (replica).
 *
 * Settings (health.postgres): user (default "postgres"), password_file, database (default: the
 * user name, as libpq does). The connection is closed after every probe: a monitor connection
 * held open would hide a server that stops accepting new ones.
 */
import type { Duplex } from 'node:stream';
import pg from 'pg';
import { capReply, ProbeFailure, readSecret, roleResult, runProbe, type Probe } from './probe.ts';

/** SQLSTATEs that mean "these credentials will not do" rather than "the server is unwell". */
const AUTH_STATES = new Set(['28P01', '28000']);

export const postgresProbe: Probe = (target, settings, signal) =>
  runProbe(signal, settings, async (stage) => {
    const cfg = settings.postgres ?? {};
    const user = cfg.user ?? 'postgres';
    const password = cfg.password_file ? await readSecret(cfg.password_file, 'health.postgres.password_file') : undefined;
    const client = new pg.Client({
      host: target.host,
      port: target.port,
      user,
      database: cfg.database ?? user,
      // pg asks for a password only if the server does; an empty string then fails as auth.
      password: password ?? '',
      application_name: 'fulcrum-health',
      // The signal is the real bound; these keep the driver from outliving it on its own.
      connectionTimeoutMillis: settings.timeout + 100,
      query_timeout: settings.timeout + 100,
    });
    const stream = () => (client as unknown as { connection: { stream: Duplex } }).connection.stream;
    capReply(stream());
    // A driver 'error' after the probe has settled must never become an uncaught exception.
    client.on('error', () => {});
    const onAbort = () => stream().destroy();
    signal.addEventListener('abort', onAbort, { once: true });
    let clean = false;
    try {
      await client.connect();
      stage.name = 'waiting for pg_is_in_recovery()';
      const res = await client.query<{ r: unknown }>('SELECT pg_is_in_recovery() AS r');
      const r = res.rows[0]?.r;
      if (typeof r !== 'boolean') throw new ProbeFailure(`bad reply: pg_is_in_recovery() returned ${JSON.stringify(r)}`);
      clean = true;
      return roleResult(r ? 'replica' : 'primary', settings.role);
    } catch (err) {
      const e = err as { code?: string; message?: string };
      if (e.code && AUTH_STATES.has(e.code)) throw new ProbeFailure(`auth failed: ${e.message}`);
      if (/SASL|password must be a string|client password/.test(e.message ?? '')) throw new ProbeFailure(`auth failed: ${e.message}`);
      if (e.code === '57P03') throw new ProbeFailure(`server not accepting connections: ${e.message}`);
      if (e.code === '3D000') throw new ProbeFailure(`${e.message} (health.postgres.database)`);
      throw err;
    } finally {
      signal.removeEventListener('abort', onAbort);
      if (clean) {
        // Terminate politely (no "connection reset" lines in the server's log), but never wait on it.
        client.end().catch(() => {});
        setTimeout(() => stream().destroy(), 1000).unref();
      } else {
        stream().destroy();
      }
    }
  });
