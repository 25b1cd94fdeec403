/**
 * `discover.patroni`: the members of a Patroni cluster from `GET /cluster` on any of the listed
 * REST API URLs (the first that answers; the one that answered last is asked first). Called by
 * the Discovery (index.ts) every interval.
 *
 * `/cluster` answers `{ "members": [{ "name", "role", "state", "host", "port", "lag", … }] }`.
 * role primary: the member whose role is `leader` (Patroni < 3.0: `master`) or `standby_leader`,
 * in state `running`. role replica: members whose role is `replica` (or `sync_standby`,
 * `quorum_standby`) in state `running` or `streaming`; Patroni's `lag` (bytes behind the leader,
 * or "unknown") is shown in the notes — the replica's own lag is the health probe's to judge
 * (health.max_lag). With primary_as_backup (role replica) the leader joins as `backup: true`, so
 * reads fall back to it when every replica is out. `host` must be an IP address: a name is left out and noted (the balancer
 * takes addresses; put the DNS source in front of names).
 */
import { isIP } from 'node:net';
import type { PatroniDiscoveryConfig } from '../config/schema.ts';
import { DiscoveryError } from './errors.ts';
import { backendList, type Found, type Source, type SourceAnswer } from './source.ts';

/** Largest /cluster body read: a few KB per member. */
const MAX_BODY = 1024 * 1024;

const LEADER_ROLES = new Set(['leader', 'master', 'standby_leader']);
const REPLICA_ROLES = new Set(['replica', 'sync_standby', 'quorum_standby']);
const REPLICA_STATES = new Set(['running', 'streaming']);

/** The backends of a /cluster answer for `role` (see the header); throws a DiscoveryError for one that is not. */
export function readCluster(body: unknown, role: 'primary' | 'replica', where: string, primaryAsBackup = false): SourceAnswer {
  const members = (body as { members?: unknown } | null)?.members;
  if (!Array.isArray(members)) throw new DiscoveryError(`${where}: not a Patroni /cluster answer (no members list)`);
  const found: Found[] = [];
  const notes: string[] = [];
  for (const m of members as Array<Record<string, unknown>>) {
    if (m === null || typeof m !== 'object') continue;
    const name = typeof m.name === 'string' ? m.name : '?';
    const r = typeof m.role === 'string' ? m.role : '';
    const state = typeof m.state === 'string' ? m.state : '';
    const leader = LEADER_ROLES.has(r) && state === 'running';
    const backup = role === 'replica' && primaryAsBackup && leader;
    const wanted = role === 'primary' ? leader : backup || (REPLICA_ROLES.has(r) && REPLICA_STATES.has(state));
    if (!wanted) continue;
    const port = typeof m.port === 'number' ? m.port : NaN;
    if (typeof m.host !== 'string' || isIP(m.host) === 0) {
      notes.push(`member ${name}: host ${JSON.stringify(m.host)} is not an IP address`);
      continue;
    }
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      notes.push(`member ${name}: port ${JSON.stringify(m.port)} is not 1–65535`);
      continue;
    }
    found.push({ host: m.host, port, backup });
    if (role === 'replica' && !leader && m.lag !== undefined) notes.push(`member ${name}: lag ${JSON.stringify(m.lag)}`);
  }
  if (role === 'primary' && found.length > 1) throw new DiscoveryError(`${where}: ${found.length} running leaders in one answer (${found.map((f) => `${f.host}:${f.port}`).join(', ')}): not applied`);
  return { backends: backendList(found), notes };
}

async function getCluster(url: string, timeout: number, signal: AbortSignal): Promise<unknown> {
  const res = await fetch(new URL('/cluster', url), { signal: AbortSignal.any([signal, AbortSignal.timeout(timeout)]), headers: { accept: 'application/json' } });
  if (res.status !== 200) {
    await res.body?.cancel();
    throw new Error(`status ${res.status}`);
  }
  const length = Number(res.headers.get('content-length') ?? 0);
  if (length > MAX_BODY) {
    await res.body?.cancel();
    throw new Error(`a body of ${length} bytes (at most ${MAX_BODY})`);
  }
  const text = await res.text();
  if (text.length > MAX_BODY) throw new Error(`a body over ${MAX_BODY} bytes`);
  try {
    return JSON.parse(text);
  } catch {
    throw new Error('not JSON');
  }
}

/** fetch's errors in words: its own "fetch failed" hides the cause (ECONNREFUSED, …). */
function describeFetchError(err: unknown, timeout: number): string {
  const e = err as Error & { cause?: { code?: string; message?: string } };
  if (e.name === 'TimeoutError') return `no answer within ${timeout}ms`;
  if (e.cause?.code) return `${e.cause.code}${e.cause.message ? ` (${e.cause.message})` : ''}`;
  return e.message;
}

export function patroniSource(settings: PatroniDiscoveryConfig): Source {
  let preferred = 0;
  return {
    kind: 'patroni',
    query: `${settings.role} from GET /cluster on ${settings.urls.join(', ')}`,
    interval: settings.interval,
    hold: settings.hold,
    async ask(signal) {
      const problems: string[] = [];
      for (let i = 0; i < settings.urls.length && !signal.aborted; i++) {
        const url = settings.urls[(preferred + i) % settings.urls.length];
        let body: unknown;
        try {
          body = await getCluster(url, settings.timeout, signal);
        } catch (err) {
          problems.push(`${url}: ${describeFetchError(err, settings.timeout)}`);
          continue;
        }
        preferred = (preferred + i) % settings.urls.length;
        return readCluster(body, settings.role, `patroni ${url}`, settings.primary_as_backup);
      }
      throw new DiscoveryError(`patroni: no URL answered (${problems.join('; ')})`);
    },
  };
}
