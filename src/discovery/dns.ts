/**
 * `discover.dns`: one DNS query for a service's backends, through node:dns's Resolver (c-ares)
 * pointed at the configured resolvers (setServers), or the system's. Called by the Discovery
 * (index.ts) once per `interval` per service; never on the data path.
 *
 * - SRV: each record's target and port; the target's A records (AAAA when it has none), or the
 *   target itself when it is an IP address. Records of the lowest priority are the backends;
 *   records of higher priorities (RFC 2782: used only when the lower ones are unreachable) are
 *   `backup: true`. Weight: SRV's 0–65535 onto the backend's 1–MAX_WEIGHT — as is when every
 *   weight fits, else scaled in proportion to the largest; 0 (RFC 2782: "very small chance")
 *   becomes 1, as a backend weight 0 would take no connections at all. A target that does not
 *   resolve is left out and named in the answer's notes; if none resolves the answer fails.
 * - A / AAAA: each address, with `port`, weight 1.
 *
 * What is returned is sorted by address and has no duplicates (one address under two targets
 * keeps its first). A bad answer throws a DiscoveryError saying what and where: the caller keeps
 * its running set.
 */
import { Resolver } from 'node:dns/promises';
import { isIP } from 'node:net';
import { formatHostPort, type DnsDiscoveryConfig } from '../config/schema.ts';
import { MAX_WEIGHT } from '../shm/layout.ts';
import { DiscoveryError } from './errors.ts';
import { backendList, type Source, type SourceAnswer } from './source.ts';

export type DnsAnswer = SourceAnswer;

/** c-ares codes, in words an operator reads. */
const DNS_ERRORS: Record<string, string> = {
  ENOTFOUND: 'the name does not exist (NXDOMAIN)',
  ENODATA: 'no records of that type',
  ETIMEOUT: 'no answer from the resolvers (timeout)',
  ECONNREFUSED: 'the resolvers refused the connection',
  ESERVFAIL: 'the resolvers failed (SERVFAIL)',
  EREFUSED: 'the resolvers refused the query (REFUSED)',
  EBADRESP: 'a malformed answer (not DNS)',
  EFORMERR: 'the resolvers said the query was malformed (FORMERR)',
  EBADNAME: 'a malformed name',
  ECANCELLED: 'cancelled',
};

/** "no records of that type (ENODATA)". */
export function describeDnsError(err: unknown): string {
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code && DNS_ERRORS[code]) return `${DNS_ERRORS[code]} (${code})`;
  return (err as Error)?.message ?? String(err);
}

/** Empty answers: the name has no records (NODATA) or does not exist (NXDOMAIN). Told apart from failures by the caller. */
export const isEmptyAnswer = (err: unknown): boolean => ['ENODATA', 'ENOTFOUND'].includes((err as NodeJS.ErrnoException)?.code ?? '');

function resolverFor(settings: DnsDiscoveryConfig): Resolver {
  const r = new Resolver({ timeout: settings.timeout, tries: 1 });
  if (settings.resolvers) r.setServers(settings.resolvers.map(formatHostPort));
  return r;
}

/** SRV weights (0–65535) onto backend weights 1–MAX_WEIGHT (see the header). */
export function srvWeights(weights: readonly number[]): number[] {
  const max = Math.max(0, ...weights);
  if (max <= MAX_WEIGHT) return weights.map((w) => Math.max(1, w));
  return weights.map((w) => Math.max(1, Math.round((w * MAX_WEIGHT) / max)));
}

/** Asks the resolvers once; `signal` cancels the queries in flight (Discovery stopped or reconfigured). */
export async function queryDns(settings: DnsDiscoveryConfig, signal?: AbortSignal): Promise<DnsAnswer> {
  const resolver = resolverFor(settings);
  const onAbort = (): void => resolver.cancel();
  signal?.addEventListener('abort', onAbort, { once: true });
  const where = `${settings.type} ${settings.name}`;
  try {
    if (settings.type === 'SRV') return await querySrv(resolver, settings.name, where);
    const addresses = settings.type === 'A' ? await resolver.resolve4(settings.name) : await resolver.resolve6(settings.name);
    return { backends: backendList(addresses.map((host) => ({ host, port: settings.port! }))), notes: [] };
  } catch (err) {
    if (err instanceof DiscoveryError) throw err;
    throw new DiscoveryError(`dns ${where}: ${describeDnsError(err)}`, { cause: err, empty: isEmptyAnswer(err) });
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

async function querySrv(resolver: Resolver, name: string, where: string): Promise<DnsAnswer> {
  const records = await resolver.resolveSrv(name);
  const notes: string[] = [];
  const lowest = Math.min(...records.map((r) => r.priority));
  const weights = srvWeights(records.map((r) => r.weight));
  // Each distinct target once (many records may share one).
  const targets = new Map<string, Promise<string[]>>();
  const lookup = (target: string): Promise<string[]> => {
    let p = targets.get(target);
    if (p === undefined) {
      p = isIP(target) ? Promise.resolve([target]) : resolver.resolve4(target).catch(async (err) => {
        if (!isEmptyAnswer(err)) throw err;
        return resolver.resolve6(target);
      });
      targets.set(target, p);
    }
    return p;
  };
  const found: Array<{ host: string; port: number; weight: number; backup: boolean }> = [];
  await Promise.all(records.map(async (r, i) => {
    if (!Number.isInteger(r.port) || r.port < 1 || r.port > 65535) {
      notes.push(`target ${r.name}: port ${r.port} is not 1–65535`);
      return;
    }
    try {
      for (const host of await lookup(r.name)) found.push({ host, port: r.port, weight: weights[i], backup: r.priority !== lowest });
    } catch (err) {
      notes.push(`target ${r.name}: ${describeDnsError(err)}`);
    }
  }));
  if (found.length === 0 && records.length > 0) throw new DiscoveryError(`dns ${where}: none of its ${records.length} targets resolves (${notes.slice(0, 3).join('; ')}${notes.length > 3 ? '; …' : ''})`);
  return { backends: backendList(found), notes: [...new Set(notes)].sort() };
}

/** The Source a watch runs for `discover.dns`. */
export function dnsSource(settings: DnsDiscoveryConfig): Source {
  return {
    kind: 'dns',
    query: `${settings.type} ${settings.name} via ${settings.resolvers ? settings.resolvers.map(formatHostPort).join(', ') : 'the system resolvers'}`,
    interval: settings.interval,
    hold: settings.hold,
    ask: (signal) => queryDns(settings, signal),
  };
}
