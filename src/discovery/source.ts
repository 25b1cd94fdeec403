/**
 * What every discovery source shares: its answer, the Source a watch runs (index.ts), and the one
 * builder of a backend list from what a source found. A source module (dns.ts, sentinel.ts,
 * patroni.ts) turns a service's discover section into a Source; the Discovery schedules it.
 */
import { formatHostPort, type BackendConfig } from '../config/schema.ts';

export type SourceKind = 'dns' | 'redis_sentinel' | 'patroni';

/** One answer: the backends a source names, and what it left out and why. */
export interface SourceAnswer {
  backends: BackendConfig[];
  notes: string[];
}

export interface Source {
  kind: SourceKind;
  /** What is asked, and whom ("SRV _pg._tcp.db.internal via 10.0.0.53:53"). */
  query: string;
  interval: number;
  hold: number;
  /** Asks once; rejects with a DiscoveryError saying why. `signal`: the watch stopped. */
  ask(signal: AbortSignal): Promise<SourceAnswer>;
  /**
   * Sources that announce changes (Sentinel's pub/sub): calls `push` with an answer to apply at
   * once, or null to ask now. Returns the function that stops listening.
   */
  listen?(push: (answer: SourceAnswer | null) => void): () => void;
}

/** Found: an address with its weight and whether it is a backup. */
export interface Found {
  host: string;
  port: number;
  weight?: number;
  backup?: boolean;
}

/**
 * The backend list of an answer: sorted by address (the order the balancer keeps, so a diff is
 * stable), each address once (the first kept).
 */
export function backendList(found: readonly Found[]): BackendConfig[] {
  const byKey = new Map<string, BackendConfig>();
  for (const f of found) {
    const key = formatHostPort(f);
    if (!byKey.has(key)) byKey.set(key, { address: { host: f.host, port: f.port }, weight: f.weight ?? 1, max_connections: 0, backup: f.backup ?? false, state: 'ready' });
  }
  return [...byKey.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, b]) => b);
}
