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
import { isIPv4, isIPv6 } from 'node:net';
import { canonicalIPv6 } from '../config/address.ts';

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
  const valid = proto === 'TCP4' ? isIPv4 : isIPv6NoZone;
  if (!valid(src) || !valid(dst)) return fail(`PROXY v1: bad ${proto} address in ${quote(buf.subarray(0, end))}`);
  const sp = port(sport);
  const dp = port(dport);
  if (sp < 0 || dp < 0) return fail(`PROXY v1: bad port in ${quote(buf.subarray(0, end))}`);
  const canon = proto === 'TCP4' ? (a: string) => a : canonicalIPv6;
  return { status: 'ok', header: { family: proto === 'TCP4' ? 'tcp4' : 'tcp6', srcAddress: canon(src), srcPort: sp, dstAddress: canon(dst), dstPort: dp }, consumed };
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
      header: { family: 'tcp4', srcAddress: ipv4(buf, 16), dstAddress: ipv4(buf, 20), srcPort: buf.readUInt16BE(24), dstPort: buf.readUInt16BE(26) },
      consumed,
    };
  }
  if (af === 2) {
    if (len < 36) return fail(`PROXY v2: TCP6 needs 36 address bytes, got ${len}`);
    return {
      status: 'ok',
      header: { family: 'tcp6', srcAddress: ipv6(buf, 16), dstAddress: ipv6(buf, 32), srcPort: buf.readUInt16BE(48), dstPort: buf.readUInt16BE(50) },
      consumed,
    };
  }
  if (af === 3) return { status: 'ok', header: NONE, consumed }; // AF_UNIX: no IP to forward
  return fail(`PROXY v2: unknown address family ${af}`);
}

/** A v1 line for a TCP connection (addresses as Node reports them; IPv4-mapped IPv6 is unwrapped). */
export function encodeProxyV1(src: string, srcPort: number, dst: string, dstPort: number): Buffer {
  const s = unmap(src);
  const d = unmap(dst);
  if (isIPv4(s) && isIPv4(d)) return Buffer.from(`PROXY TCP4 ${s} ${d} ${srcPort} ${dstPort}\r\n`, 'latin1');
  if (isIPv6(s) && isIPv6(d)) return Buffer.from(`PROXY TCP6 ${s} ${d} ${srcPort} ${dstPort}\r\n`, 'latin1');
  return Buffer.from('PROXY UNKNOWN\r\n', 'latin1');
}

/** A v2 header (PROXY command, TCP over IPv4 or IPv6; mixed families are sent as UNSPEC). */
export function encodeProxyV2(src: string, srcPort: number, dst: string, dstPort: number): Buffer {
  const s = unmap(src);
  const d = unmap(dst);
  const four = isIPv4(s) && isIPv4(d);
  const six = !four && isIPv6(s) && isIPv6(d);
  const len = four ? 12 : six ? 36 : 0;
  const out = Buffer.alloc(16 + len);
  V2_SIG.copy(out, 0);
  out[12] = 0x21; // version 2, PROXY
  out[13] = four ? 0x11 : six ? 0x21 : 0x00;
  out.writeUInt16BE(len, 14);
  if (four) {
    writeIPv4(out, 16, s);
    writeIPv4(out, 20, d);
    out.writeUInt16BE(srcPort, 24);
    out.writeUInt16BE(dstPort, 26);
  } else if (six) {
    writeIPv6(out, 16, s);
    writeIPv6(out, 32, d);
    out.writeUInt16BE(srcPort, 48);
    out.writeUInt16BE(dstPort, 50);
  }
  return out;
}

function port(text: string): number {
  if (!/^\d{1,5}$/.test(text) || (text.length > 1 && text[0] === '0')) return -1;
  const n = Number(text);
  return n <= 65535 ? n : -1;
}

const unmap = (a: string): string => (a.startsWith('::ffff:') && isIPv4(a.slice(7)) ? a.slice(7) : a);

const ipv4 = (b: Buffer, at: number): string => `${b[at]}.${b[at + 1]}.${b[at + 2]}.${b[at + 3]}`;

function ipv6(b: Buffer, at: number): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(at + i).toString(16));
  return canonicalIPv6(groups.join(':'));
}

/**
 * isIPv6 also takes a zone ("fe80::1%eth0"): it names an interface of the sender's host, means
 * nothing here, is not in the spec's grammar, and has no canonical spelling (the URL parser
 * throws on it, which in a worker's read callback took the whole worker down).
 */
const isIPv6NoZone = (a: string): boolean => isIPv6(a) && !a.includes('%');


function writeIPv4(out: Buffer, at: number, a: string): void {
  a.split('.').forEach((o, i) => (out[at + i] = Number(o)));
}

function writeIPv6(out: Buffer, at: number, a: string): void {
  const [head, tail = ''] = a.split('::');
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = a.includes('::') ? [...h, ...Array(8 - h.length - t.length).fill('0'), ...t] : h;
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), at + i * 2));
}

/** Bytes as a short printable string for error messages: "GET / HTTP/1.1\x0d\x0a". */
function quote(b: Buffer): string {
  const text = b.toString('latin1').replace(/[^\x20-\x7e]|["\\]/g, (c) =>
    c === '"' || c === '\\' ? `\\${c}` : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  return `"${text}"`;
}
