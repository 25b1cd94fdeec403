/**
 * Addresses as the config writes them and fulcrum keys them: "host:port", IPv6 bracketed and in
 * one spelling. Apart from schema.ts (which re-exports them) so the data-plane workers and the
 * probe thread use them without loading the schema library.
 */
import { isIP } from 'node:net';

export interface HostPort {
  host: string;
  port: number;
}

const HOST_PORT = /^(?:\[([^\]\s]*)\]|([^\s:\[\]]+))(?::(\d{1,5}))?$/;
/** RFC 1123 labels (and "_", which service names use), 253 characters at most, a root dot allowed. */
const HOST_NAME = /^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$/;

/**
 * Why `host` is no address to listen on or connect to, or undefined when it is one. Digits and
 * dots are an IPv4 address or nothing: "10.0.0.300" or "127.1" would otherwise go to the
 * resolver as a name, and fail only when a worker binds or connects.
 */
function hostProblem(host: string, bracketed: boolean): string | undefined {
  if (bracketed) return isIP(host) === 6 ? undefined : 'is not an IPv6 address';
  if (/^[\d.]+$/.test(host)) return isIP(host) === 4 ? undefined : 'is not an IPv4 address';
  return HOST_NAME.test(host) ? undefined : 'is not a host name';
}

export function splitHostPort(v: unknown, portOptional: boolean): { hp?: HostPort; problem?: string } {
  if (typeof v !== 'string') return {};
  const m = HOST_PORT.exec(v.trim());
  if (!m) return {};
  const host = m[1] ?? m[2];
  const problem = hostProblem(host, m[1] !== undefined);
  if (problem) return { problem: `${JSON.stringify(host)} ${problem}` };
  const canonical = m[1] !== undefined ? canonicalIPv6(host) : host;
  if (m[3] === undefined) return portOptional ? { hp: { host: canonical, port: 0 } } : {};
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return {};
  return { hp: { host: canonical, port } };
}

/**
 * One spelling per IPv6 address (RFC 5952's, as URLs write it: "[0:0::1]" → "::1"): a backend's
 * address names it in the admin API and orders the Maglev build, which both instances of a pair
 * must do alike; a PROXY header's source is a hashing key and a log field, whichever version sent it.
 */
export function canonicalIPv6(host: string): string {
  // A zone, or an IPv4 tail (RFC 5952 keeps "::ffff:192.0.2.1" dotted; URLs would not).
  if (host.includes('%') || host.includes('.')) return host.toLowerCase();
  try {
    return new URL(`http://[${host}]/`).hostname.slice(1, -1);
  } catch {
    return host;
  }
}

/** "127.0.0.1:6380", "[::1]:6380", "db1.internal:5432" → { host, port }. */
export function parseHostPort(v: unknown, portOptional = false): HostPort | undefined {
  return splitHostPort(v, portOptional).hp;
}

/** "host:port" as fulcrum prints and keys addresses everywhere (IPv6 bracketed). */
export const formatHostPort = ({ host, port }: HostPort): string => (host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`);
