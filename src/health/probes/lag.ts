/**
 * Replication lag: how each database probe reads it, and the one verdict over `health.max_lag`.
 * Read only when the check sets max_lag and the server reported the replica role (a primary has
 * no lag); one extra query per probe.
 *
 * - PostgreSQL (postgres.ts, PG_LAG_QUERY): an idle primary writes no WAL, and the time since the
 *   last replayed transaction then grows without the standby being behind. So the standby is
 *   caught up (lag 0) while it has replayed everything it received
 *   (pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn()); only while replay is behind receive
 *   is the lag `now() - pg_last_xact_replay_timestamp()`. That errs long, never short: after an
 *   idle hour the first write a paused standby does not replay counts as an hour behind. A
 *   standby that has received nothing since it started (no primary) is behind by an unknown amount.
 * - MySQL / MariaDB (mysql.ts): `Seconds_Behind_Master` (Seconds_Behind_Source on MySQL ≥ 8.0.22)
 *   from SHOW REPLICA STATUS (SHOW SLAVE STATUS where that is not known). NULL means replication
 *   is stopped (an IO or SQL thread not running): the probe fails as a failure (on_marked_down
 *   decides), not as lag. An empty status (read_only, but no replication set up) fails too.
 * - Redis (redis.ts, from INFO replication): a replica applies its primary's stream as it arrives
 *   and cannot see how far its primary is ahead (slave_repl_offset and master_repl_offset are
 *   both its own offset; only the primary knows its replicas' offsets). What it can tell is how
 *   stale its data may be: with `master_link_status:up` lag 0; with the link down, the time since
 *   it went down (`master_link_down_since_seconds`); during a full resync
 *   (`master_sync_in_progress:1`) or with a link never up, an unknown amount.
 */
import { ProbeFailure, roleResult, type ProbeResult, type Role, type RoleFilter } from './probe.ts';

/** The lag of a PostgreSQL standby in milliseconds; NULL when it cannot be told (see above). */
export const PG_LAG_QUERY = `SELECT CASE
  WHEN pg_last_wal_receive_lsn() IS NOT NULL AND pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn() THEN 0::float8
  ELSE (extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::float8 END AS lag_ms`;

/** "1.2s", "350ms": a lag as the reasons say it. */
export function formatLag(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(1)}s` : `${Math.round(ms)}ms`;
}

export type LagOutcome = { ok: boolean; reason: string; role: Role } & Pick<ProbeResult, 'lag_ms' | 'lagging'>;

/**
 * The verdict on a replica's lag: `lag_ms` measured (null: behind by an unknown amount, `why`
 * says what was seen). Over max_lag (or unknown) fails the probe as lagging.
 */
export function lagResult(want: RoleFilter, maxLag: number, lagMs: number | null, why = ''): LagOutcome {
  const base = roleResult('replica', want);
  if (!base.ok) return base;
  if (lagMs === null) return { ok: false, reason: `lagging: ${why || 'behind its primary by an unknown amount'} (max_lag ${formatLag(maxLag)})`, role: 'replica', lag_ms: null, lagging: true };
  const lag = Math.max(0, lagMs);
  const seen = why ? `, ${why}` : '';
  if (lag > maxLag) return { ok: false, reason: `lagging: ${formatLag(lag)} behind its primary${seen} (max_lag ${formatLag(maxLag)})`, role: 'replica', lag_ms: lag, lagging: true };
  return { ok: true, reason: `role replica, lag ${formatLag(lag)}${seen}`, role: 'replica', lag_ms: lag };
}

/** A replica's lag from Redis's INFO replication text (see the header); throws for a text without a link status. */
export function redisLag(info: string): { lag_ms: number | null; why: string } {
  const field = (name: string): string | undefined => new RegExp(`^${name}:(.*?)\\r?$`, 'm').exec(info)?.[1];
  const link = field('master_link_status');
  if (link === undefined) throw new ProbeFailure('bad reply to INFO replication: no master_link_status line');
  if (field('master_sync_in_progress') === '1') return { lag_ms: null, why: 'full resynchronization from its primary in progress' };
  if (link === 'up') return { lag_ms: 0, why: '' };
  const since = Number(field('master_link_down_since_seconds'));
  // -1 (Redis 7: never up) or a value that is not a number: how stale is not known.
  if (!Number.isFinite(since) || since < 0) return { lag_ms: null, why: 'link to its primary down' };
  return { lag_ms: since * 1000, why: 'link to its primary down' };
}
