/**
 * The churn family of `npm run bench`, one list for the harness (bench/run.ts: what each variant
 * runs) and the report (report.ts: its row, its target): the base (64 client addresses, 50
 * connections in flight, the client closing first, health checks running on both proxies) and one
 * factor changed at a time. Variants with `proxy` null run on the pair the other scenarios use;
 * the others get a pair of their own, configured alike (proxies.ts).
 */
import type { ProxyVariant } from './proxies.ts';

export const CHURN_SOURCES = 64;

export interface ChurnVariant {
  /** '' for the base (the run's variant field; the churn table and the targets read it). */
  name: string;
  /** Its row in the report. */
  label: string;
  what: string;
  /** The target, connections per proxy CPU-second against HAProxy. */
  goal: number;
  sources: number;
  conns: number;
  backendCloses: boolean;
  proxy: ProxyVariant | null;
}

const BASE = { sources: CHURN_SOURCES, conns: 50, backendCloses: false, proxy: null, goal: 1.15 };

export const CHURN_VARIANTS: ChurnVariant[] = [
  { ...BASE, name: '', label: 'base', what: `base: ${CHURN_SOURCES} client addresses, 50 in flight, the client closes first, health checks on` },
  { ...BASE, name: '1src', label: 'one client address', what: 'one client address', sources: 1 },
  { ...BASE, name: 'c500', label: '500 in flight', what: '500 in flight', conns: 500 },
  { ...BASE, name: 'srvclose', label: 'backend closes first', what: 'the backend closes first (after its reply; the client reads to EOF)', backendCloses: true },
  { ...BASE, name: 'nohealth', label: 'no health checks', what: 'no health checks on either proxy', proxy: { health: false } },
  // connLog's file and receiver are filled in per pair (run.ts variantPair).
  {
    ...BASE, name: 'logs', label: 'connection log on', goal: 1.1,
    what: 'the connection log on for both (fulcrum: lines to a file; HAProxy: tcplog over UDP syslog)', proxy: { connLog: { file: '', syslog: '' } },
  },
];

/** The name `--churn-variants` takes. */
export const churnVariantName = (v: ChurnVariant): string => v.name || 'base';
