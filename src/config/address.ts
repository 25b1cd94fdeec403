/**
 * Addresses as the config writes them and fulcrum keys them: "host:port", IPv6 bracketed and in
 * one spelling. Apart from schema.ts (which re-exports them) so the data-plane workers and the
 * probe thread use them without loading the schema library.
 */
import { isIP, isIPv4, isIPv6 } from 'node:net';

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

// ── IP addresses: one parser and one formatter ─────────────────────────────────
//
// Every address string fulcrum produces from bytes (the relay's accept events, PROXY v2 headers)
// or from text (the config, PROXY v1 lines, what send_proxy encodes) goes through these two, so
// one address has one spelling wherever it came from. The spelling is RFC 5952's, which is also
// what Node prints for a socket's address (a test checks the two agree):
//  - IPv4: dotted quad, no leading zeros;
//  - IPv6 (§4): lower-case hex, no leading zeros in a group, the longest run of two or more zero
//    groups (the first of equal runs) written "::";
//  - §5 mixed notation for the two prefixes it lists that Node recognises: IPv4-mapped
//    (::ffff:0:0/96 → "::ffff:192.0.2.1") and IPv4-compatible (::/96 with a nonzero upper half
//    of the last 32 bits → "::1.2.3.4"); "::" and "::1" stay as they are.
//
// A client's key: a client reaching a dual-stack listener ("[::]") over IPv4 is reported by the
// kernel as IPv4-mapped ("::ffff:192.0.2.1"). It is the same client as "192.0.2.1" arriving on an
// IPv4 listener or named by a PROXY header (TCP4, or TCP6 with a mapped address), so
// `clientAddress` unmaps it: Maglev hashes, logs and send_proxy use the plain IPv4 form.

/**
 * Parses an IP address's text into `out` (16 bytes: IPv4 in the first 4, IPv6 in all 16) and
 * returns 4 or 6, or 0 when the text is no address. A zone ("fe80::1%eth0") is refused: it names
 * an interface of some host and has no place in bytes (callers that accept one split it off).
 * The grammar is Node's (isIPv4 / isIPv6), so what the config and the PROXY parser accept is what
 * this parses. Called once per backend connection with send_proxy, and per PROXY v1 header.
 */
export function parseIP(text: string, out: Uint8Array): 0 | 4 | 6 {
  if (isIPv4(text)) {
    writeIPv4(text, out, 0);
    return 4;
  }
  if (!isIPv6(text) || text.includes('%')) return 0;
  out.fill(0, 0, 16);
  // Up to 8 groups; the last "group" may be a dotted quad worth two.
  const gap = text.indexOf('::');
  const head = gap < 0 ? text : text.slice(0, gap);
  const tail = gap < 0 ? '' : text.slice(gap + 2);
  if (head !== '') writeGroups(head, out, 0);
  if (tail !== '') {
    // Write the tail at the end: measure it first (groups, or a dotted quad as two).
    let colons = 0;
    for (let i = 0; i < tail.length; i++) if (tail.charCodeAt(i) === 0x3a) colons++;
    const bytes = (colons + 1) * 2 + (tail.includes('.') ? 2 : 0);
    writeGroups(tail, out, 16 - bytes);
  }
  return 6;
}

/** Writes colon-separated hex groups (the last one may be a dotted quad) from `at` on. */
function writeGroups(text: string, out: Uint8Array, at: number): void {
  for (const g of text.split(':')) {
    if (g.includes('.')) {
      writeIPv4(g, out, at);
      at += 4;
    } else {
      const v = parseInt(g, 16);
      out[at] = v >> 8;
      out[at + 1] = v & 0xff;
      at += 2;
    }
  }
}

function writeIPv4(text: string, out: Uint8Array, at: number): void {
  let v = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x2e) {
      out[at++] = v;
      v = 0;
    } else v = v * 10 + c - 0x30;
  }
  out[at] = v;
}

/** The dotted quad of 4 bytes at `at`. */
export const formatIPv4 = (b: Uint8Array, at: number): string => `${b[at]}.${b[at + 1]}.${b[at + 2]}.${b[at + 3]}`;

/**
 * The RFC 5952 text of the 16 bytes at `at` (the rules above). Hot: once per connection the relay
 * accepts for a service that needs the client's address, and per PROXY v2 header; no array is
 * built, only the string.
 */
export function formatIPv6(b: Uint8Array, at: number): string {
  // The longest run of zero groups (2 or more; the first of equal runs).
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (b[at + 2 * i] !== 0 || b[at + 2 * i + 1] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && b[at + 2 * j] === 0 && b[at + 2 * j + 1] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  // §5: IPv4-mapped (5 zero groups, then ffff) and IPv4-compatible (6 zero groups, then not zero).
  if (best === 0 && (bestLen === 6 || (bestLen === 5 && b[at + 10] === 0xff && b[at + 11] === 0xff))) {
    return (bestLen === 5 ? '::ffff:' : '::') + formatIPv4(b, at + 12);
  }
  let text = '';
  for (let i = 0; i < 8; i++) {
    if (i === best) {
      text += '::';
      i += bestLen - 1;
      continue;
    }
    if (text !== '' && !text.endsWith(':')) text += ':';
    text += ((b[at + 2 * i] << 8) | b[at + 2 * i + 1]).toString(16);
  }
  return text;
}

const scratch = new Uint8Array(16);

/** "198.51.100.2" → its 32-bit unsigned value, or -1 when it is no IPv4 address (the failover tie-break and heartbeat carry these). */
export function ipv4ToInt(text: string): number {
  if (parseIP(text, scratch) !== 4) return -1;
  return ((scratch[0] << 24) | (scratch[1] << 16) | (scratch[2] << 8) | scratch[3]) >>> 0;
}

/** A 32-bit unsigned value → its dotted quad (formatIPv4's spelling). */
export function intToIpv4(n: number): string {
  scratch[0] = n >>> 24;
  scratch[1] = n >>> 16;
  scratch[2] = n >>> 8;
  scratch[3] = n;
  return formatIPv4(scratch, 0);
}

/**
 * One spelling per IPv6 address ("[0:0::1]" → "::1", "::FFFF:c000:201" → "::ffff:192.0.2.1"): a
 * backend's address names it in the admin API and orders the Maglev build, which both instances of
 * a pair must do alike; a PROXY header's source is a hashing key and a log field, whichever version
 * sent it. A zone is kept as written after the canonical address ("FE80::1%eth0" → "fe80::1%eth0":
 * interface names are case-sensitive). Text that is no IPv6 address comes back unchanged.
 */
export function canonicalIPv6(host: string): string {
  const pct = host.indexOf('%');
  const address = pct < 0 ? host : host.slice(0, pct);
  if (parseIP(address, scratch) !== 6) return host;
  return pct < 0 ? formatIPv6(scratch, 0) : formatIPv6(scratch, 0) + host.slice(pct);
}

/**
 * The address a client is keyed by (Maglev hash, log line, send_proxy): an IPv4-mapped IPv6
 * address ("::ffff:192.0.2.1", a dual-stack listener's IPv4 client, or a PROXY header naming one)
 * is its IPv4 address; anything else is itself. Expects the canonical text (Node's, or this
 * module's). Hot: once per connection whose client address is needed; allocates only to unmap.
 */
export const clientAddress = (a: string): string => (a.startsWith('::ffff:') && a.indexOf('.', 7) > 0 ? a.slice(7) : a);

/** "127.0.0.1:6380", "[::1]:6380", "db1.internal:5432" → { host, port }. */
export function parseHostPort(v: unknown, portOptional = false): HostPort | undefined {
  return splitHostPort(v, portOptional).hp;
}

/** "host:port" as fulcrum prints and keys addresses everywhere (IPv6 bracketed). */
export const formatHostPort = ({ host, port }: HostPort): string => (host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`);
