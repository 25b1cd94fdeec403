/**
 * The PROXY protocol (HAProxy's, versions 1 and 2): how a TCP proxy tells the next hop who the
 * client really was. Fulcrum reads a header from clients when a service has `accept_proxy: true`
 * (fulcrum behind another L4 balancer) and writes one to backends with `send_proxy: v1 | v2`
 * (HAProxy's `send-proxy` / `send-proxy-v2`).
 *
 * Parsing is incremental and strict: a header arriving in pieces is "incomplete" until it is
 * whole, and anything that is not a well-formed header is an error with a reason, never a guess.
 * Called once per accepted connection on services that accept the header (and per chunk until
 * the header is whole, which is almost always the first one).
 */
import { formatIPv4, formatIPv6, parseIP } from '../config/address.ts';

/** v2's 12-byte signature. */
const V2_SIG = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** The spec's bound on a v1 line, CRLF included. */
export const V1_MAX = 107;
/** v2 allows 65535 bytes of addresses and TLVs; no honest sender needs more than this. */
export const V2_MAX = 16 + 2048;

export interface ProxyAddresses {
  /** 'local' (v2 LOCAL, a health check of the sender) and 'unknown' carry no addresses: keep the socket's. */
  family: 'tcp4' | 'tcp6' | 'local' | 'unknown';
  srcAddress: string;
  srcPort: number;
  dstAddress: string;
  dstPort: number;
}

export type ParseResult =
  | { status: 'incomplete' }
  | { status: 'ok'; header: ProxyAddresses; consumed: number }
  | { status: 'error'; reason: string };

const INCOMPLETE: ParseResult = { status: 'incomplete' };
const NONE: ProxyAddresses = { family: 'unknown', srcAddress: '', srcPort: 0, dstAddress: '', dstPort: 0 };

const fail = (reason: string): ParseResult => ({ status: 'error', reason });

/** Parses a v1 or v2 header at the start of `buf`. */
export function parseProxyHeader(buf: Buffer): ParseResult {
  if (buf.length === 0) return INCOMPLETE;
  // Decide the version from what has arrived so far; refuse as soon as neither can match.
  const n = Math.min(buf.length, V2_SIG.length);
  if (buf.subarray(0, n).equals(V2_SIG.subarray(0, n))) return buf.length < 16 ? INCOMPLETE : parseV2(buf);
  const v1 = 'PROXY ';
  for (let i = 0; i < Math.min(buf.length, v1.length); i++) {
    if (buf[i] !== v1.charCodeAt(i)) return fail(`not a PROXY header: starts with ${quote(buf.subarray(0, 16))}`);
  }
  return parseV1(buf);
}

function parseV1(buf: Buffer): ParseResult {
  const end = buf.indexOf('\r\n', 0, 'latin1');
  if (end < 0) return buf.length >= V1_MAX ? fail(`PROXY v1 line longer than ${V1_MAX} bytes`) : INCOMPLETE;
  if (end + 2 > V1_MAX) return fail(`PROXY v1 line longer than ${V1_MAX} bytes`);
  const line = buf.toString('latin1', 0, end);
  const parts = line.split(' ');
  const consumed = end + 2;
  if (parts[1] === 'UNKNOWN') return { status: 'ok', header: NONE, consumed };
  if (parts.length !== 6) return fail(`PROXY v1: expected 6 fields, got ${parts.length}: ${quote(buf.subarray(0, end))}`);
  const [, proto, src, dst, sport, dport] = parts;
  if (proto !== 'TCP4' && proto !== 'TCP6') return fail(`PROXY v1: protocol must be TCP4, TCP6 or UNKNOWN, got ${quote(Buffer.from(proto))}`);
  const want = proto === 'TCP4' ? 4 : 6;
  // parseIP refuses a zone ("fe80::1%eth0"): it names an interface of the sender's host, means
  // nothing here and is not in the spec's grammar.
  if (parseIP(src, srcBytes) !== want || parseIP(dst, dstBytes) !== want) return fail(`PROXY v1: bad ${proto} address in ${quote(buf.subarray(0, end))}`);
  const sp = port(sport);
  const dp = port(dport);
  if (sp < 0 || dp < 0) return fail(`PROXY v1: bad port in ${quote(buf.subarray(0, end))}`);
  // One spelling whichever version named the address (the v2 path formats the same bytes; an
  // IPv4 text that parsed is already in its one spelling).
  const header: ProxyAddresses = want === 4
    ? { family: 'tcp4', srcAddress: src, srcPort: sp, dstAddress: dst, dstPort: dp }
    : { family: 'tcp6', srcAddress: formatIPv6(srcBytes, 0), srcPort: sp, dstAddress: formatIPv6(dstBytes, 0), dstPort: dp };
  return { status: 'ok', header, consumed };
}

function parseV2(buf: Buffer): ParseResult {
  const verCmd = buf[12];
  if (verCmd >> 4 !== 2) return fail(`PROXY v2: version must be 2, got ${verCmd >> 4}`);
  const cmd = verCmd & 0x0f;
  if (cmd > 1) return fail(`PROXY v2: command must be LOCAL or PROXY, got ${cmd}`);
  const fam = buf[13];
  const len = buf.readUInt16BE(14);
  if (16 + len > V2_MAX) return fail(`PROXY v2: header of ${16 + len} bytes exceeds ${V2_MAX}`);
  if (buf.length < 16 + len) return INCOMPLETE;
  const consumed = 16 + len;
  if (cmd === 0) return { status: 'ok', header: { ...NONE, family: 'local' }, consumed };
  const af = fam >> 4;
  const transport = fam & 0x0f;
  if (af === 0 || transport !== 1) return { status: 'ok', header: NONE, consumed }; // UNSPEC or not a stream: keep the socket's
  if (af === 1) {
    if (len < 12) return fail(`PROXY v2: TCP4 needs 12 address bytes, got ${len}`);
    return {
      status: 'ok',
      header: { family: 'tcp4', srcAddress: formatIPv4(buf, 16), dstAddress: formatIPv4(buf, 20), srcPort: buf.readUInt16BE(24), dstPort: buf.readUInt16BE(26) },
      consumed,
    };
  }
  if (af === 2) {
    if (len < 36) return fail(`PROXY v2: TCP6 needs 36 address bytes, got ${len}`);
    return {
      status: 'ok',
      header: { family: 'tcp6', srcAddress: formatIPv6(buf, 16), dstAddress: formatIPv6(buf, 32), srcPort: buf.readUInt16BE(48), dstPort: buf.readUInt16BE(50) },
      consumed,
    };
  }
  if (af === 3) return { status: 'ok', header: NONE, consumed }; // AF_UNIX: no IP to forward
  return fail(`PROXY v2: unknown address family ${af}`);
}

/**
 * The families the header carries for these two addresses (text as Node or parseProxyHeader gives
 * it), parsed into srcBytes / dstBytes: 4 when both are IPv4 (an IPv4-mapped IPv6 address counts
 * as its IPv4 address, as the client key does: config/address.ts), 6 when both are IP and one is
 * IPv6 (an IPv4 one is then sent IPv4-mapped, so neither address is lost), 0 otherwise. A zone is
 * dropped: it names an interface of this host, which the backend cannot use, and neither the v1
 * grammar nor v2's bytes carry one (HAProxy sends the bare address too).
 */
function families(src: string, dst: string): 0 | 4 | 6 {
  const fs = parseIP(unzone(src), srcBytes);
  const fd = parseIP(unzone(dst), dstBytes);
  if (fs === 0 || fd === 0) return 0;
  const s4 = fs === 4 || isMapped(srcBytes);
  const d4 = fd === 4 || isMapped(dstBytes);
  if (s4 && d4) {
    if (fs === 6) srcBytes.copyWithin(0, 12, 16);
    if (fd === 6) dstBytes.copyWithin(0, 12, 16);
    return 4;
  }
  if (fs === 4) toMapped(srcBytes);
  if (fd === 4) toMapped(dstBytes);
  return 6;
}

/** A v1 line for a TCP connection (see `families`: the same addresses always give the same line). */
export function encodeProxyV1(src: string, srcPort: number, dst: string, dstPort: number): Buffer {
  const f = families(src, dst);
  const fmt = f === 4 ? formatIPv4 : formatIPv6;
  if (f === 0) return Buffer.from('PROXY UNKNOWN\r\n', 'latin1');
  return Buffer.from(`PROXY TCP${f} ${fmt(srcBytes, 0)} ${fmt(dstBytes, 0)} ${srcPort} ${dstPort}\r\n`, 'latin1');
}

/**
 * A v2 header (PROXY command, TCP — or with `dgram` UDP, for a UDP service's datagrams — over IPv4
 * or IPv6 as `families` decides; UNSPEC when not both are IP).
 */
export function encodeProxyV2(src: string, srcPort: number, dst: string, dstPort: number, dgram = false): Buffer {
  const f = families(src, dst);
  const size = f === 4 ? 4 : 16;
  const len = f === 0 ? 0 : 2 * size + 4;
  const out = Buffer.alloc(16 + len);
  V2_SIG.copy(out, 0);
  out[12] = 0x21; // version 2, PROXY
  // Address family in the high nibble (1 INET, 2 INET6), transport in the low (1 STREAM, 2 DGRAM).
  out[13] = f === 0 ? 0x00 : (f === 4 ? 0x10 : 0x20) | (dgram ? 0x02 : 0x01);
  out.writeUInt16BE(len, 14);
  if (f !== 0) {
    out.set(srcBytes.subarray(0, size), 16);
    out.set(dstBytes.subarray(0, size), 16 + size);
    out.writeUInt16BE(srcPort, 16 + 2 * size);
    out.writeUInt16BE(dstPort, 18 + 2 * size);
  }
  return out;
}

function port(text: string): number {
  if (!/^\d{1,5}$/.test(text) || (text.length > 1 && text[0] === '0')) return -1;
  const n = Number(text);
  return n <= 65535 ? n : -1;
}

/** Scratch for the two addresses of the header being parsed or encoded (one at a time per thread). */
const srcBytes = new Uint8Array(16);
const dstBytes = new Uint8Array(16);

const unzone = (a: string): string => {
  const pct = a.indexOf('%');
  return pct < 0 ? a : a.slice(0, pct);
};

/** ::ffff:0:0/96 */
function isMapped(b: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}

/** IPv4 bytes (first 4) → their IPv4-mapped IPv6 form. */
function toMapped(b: Uint8Array): void {
  b.copyWithin(12, 0, 4);
  b.fill(0, 0, 10);
  b[10] = 0xff;
  b[11] = 0xff;
}

/** Bytes as a short printable string for error messages: "GET / HTTP/1.1\x0d\x0a". */
function quote(b: Buffer): string {
  const text = b.toString('latin1').replace(/[^\x20-\x7e]|["\\]/g, (c) =>
    c === '"' || c === '\\' ? `\\${c}` : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  return `"${text}"`;
}
