/** The PROXY protocol codec: round trips, incremental parsing, and every malformed header refused with a reason. */
import { randomBytes } from 'node:crypto';
import { isIP, isIPv4, SocketAddress } from 'node:net';
import { describe, expect, it } from 'vitest';
import { clientAddress } from '../../src/config/address.ts';
import { encodeProxyV1, encodeProxyV2, parseProxyHeader, V1_MAX, V2_MAX } from '../../src/proxy/proxy-protocol.ts';

const ok = (buf: Buffer) => {
  const r = parseProxyHeader(buf);
  if (r.status !== 'ok') throw new Error(`expected ok, got ${JSON.stringify(r)}`);
  return r;
};
const reason = (buf: Buffer): string => {
  const r = parseProxyHeader(buf);
  if (r.status !== 'error') throw new Error(`expected an error, got ${JSON.stringify(r)}`);
  return r.reason;
};

describe('PROXY protocol', () => {
  it.each([
    ['v1', encodeProxyV1],
    ['v2', encodeProxyV2],
  ])('%s round-trips IPv4 and IPv6, and leaves the payload after the header', (_v, encode) => {
    const four = Buffer.concat([encode('192.0.2.7', 50123, '198.51.100.1', 6380), Buffer.from('PING\r\n')]);
    const r4 = ok(four);
    expect(r4.header).toEqual({ family: 'tcp4', srcAddress: '192.0.2.7', srcPort: 50123, dstAddress: '198.51.100.1', dstPort: 6380 });
    expect(four.subarray(r4.consumed).toString()).toBe('PING\r\n');
    const r6 = ok(encode('2001:db8::7', 1, '2001:db8:0:0:1::1', 65535));
    expect(r6.header).toEqual({ family: 'tcp6', srcAddress: '2001:db8::7', srcPort: 1, dstAddress: '2001:db8::1:0:0:1', dstPort: 65535 });
    // IPv4-mapped addresses (what a dual-stack Node socket reports) are sent as IPv4.
    expect(ok(encode('::ffff:127.0.0.1', 5, '::ffff:127.0.0.2', 6)).header.family).toBe('tcp4');
  });

  it.each([
    ['v1', encodeProxyV1('10.1.2.3', 1000, '10.1.2.4', 2000)],
    ['v2', encodeProxyV2('10.1.2.3', 1000, '10.1.2.4', 2000)],
  ])('%s: every proper prefix is incomplete, the whole is ok', (_v, whole) => {
    for (let i = 0; i < whole.length; i++) expect(parseProxyHeader(whole.subarray(0, i))).toEqual({ status: 'incomplete' });
    expect(ok(whole).consumed).toBe(whole.length);
  });

  it('v1 UNKNOWN and v2 LOCAL carry no addresses (the socket\'s own are kept)', () => {
    expect(ok(Buffer.from('PROXY UNKNOWN\r\n')).header.family).toBe('unknown');
    expect(ok(Buffer.from('PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n')).header.family).toBe('unknown');
    const local = encodeProxyV2('10.0.0.1', 1, '10.0.0.2', 2);
    local[12] = 0x20;
    expect(ok(local).header.family).toBe('local');
  });

  it('v2 for datagrams: family 0x12 / 0x22 (UDP over IPv4 / IPv6), the same address block; the TCP parser keeps the socket\'s', () => {
    const v4 = encodeProxyV2('10.1.2.3', 1000, '10.1.2.4', 2000, true);
    const v4tcp = encodeProxyV2('10.1.2.3', 1000, '10.1.2.4', 2000);
    expect(v4[13]).toBe(0x12);
    expect(v4tcp[13]).toBe(0x11);
    expect(Buffer.concat([v4.subarray(0, 13), v4.subarray(14)])).toEqual(Buffer.concat([v4tcp.subarray(0, 13), v4tcp.subarray(14)]));
    expect(encodeProxyV2('2001:db8::1', 1, '10.0.0.2', 2, true)[13]).toBe(0x22);
    expect(encodeProxyV2('unix', 0, 'socket', 0, true)[13]).toBe(0x00);
    // accept_proxy is TCP: a DGRAM header there names nothing the stream can use.
    expect(ok(v4).header.family).toBe('unknown');
  });

  it('refuses what is not a PROXY header, with a reason', () => {
    expect(reason(Buffer.from('GET / HTTP/1.1\r\n'))).toMatch(/^not a PROXY header: starts with "GET \/ HTTP\/1.1\\x0d\\x0a"/);
    expect(reason(Buffer.from('*1\r\n$4\r\nPING\r\n'))).toMatch(/not a PROXY header/);
    // As soon as the first bytes cannot be either version: no waiting for more.
    expect(reason(Buffer.from('PRX'))).toMatch(/not a PROXY header/);
    expect(reason(Buffer.from([0x0d, 0x0a, 0x0d, 0x0b]))).toMatch(/not a PROXY header/);
  });

  it('refuses malformed v1 lines', () => {
    expect(reason(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n'))).toMatch(/expected 6 fields, got 5/);
    expect(reason(Buffer.from('PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n'))).toMatch(/protocol must be TCP4, TCP6 or UNKNOWN/);
    expect(reason(Buffer.from('PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n'))).toMatch(/bad TCP4 address/);
    expect(reason(Buffer.from('PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n'))).toMatch(/bad TCP6 address/);
    expect(reason(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n'))).toMatch(/bad port/);
    expect(reason(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n'))).toMatch(/bad port/);
    expect(reason(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n'))).toMatch(/bad port/);
    expect(reason(Buffer.from('PROXY ' + 'x'.repeat(V1_MAX)))).toMatch(/longer than 107 bytes/);
  });

  it('refuses a v1 IPv6 address with a zone, which isIPv6 accepts but no canonical form has (it threw)', () => {
    // A zone ("%eth0") names an interface of the sender's host: meaningless here, and not in the spec's grammar.
    expect(reason(Buffer.from('PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n'))).toMatch(/bad TCP6 address/);
    expect(reason(Buffer.from('PROXY TCP6 ::1 ::%1 1 2\r\n'))).toMatch(/bad TCP6 address/);
  });

  it('refuses malformed v2 headers', () => {
    const good = encodeProxyV2('10.0.0.1', 1, '10.0.0.2', 2);
    const v3 = Buffer.from(good);
    v3[12] = 0x31;
    expect(reason(v3)).toMatch(/version must be 2, got 3/);
    const cmd = Buffer.from(good);
    cmd[12] = 0x22;
    expect(reason(cmd)).toMatch(/command must be LOCAL or PROXY, got 2/);
    const short = Buffer.from(good);
    short.writeUInt16BE(4, 14);
    expect(reason(short)).toMatch(/TCP4 needs 12 address bytes, got 4/);
    const huge = Buffer.from(good);
    huge.writeUInt16BE(0xffff, 14);
    expect(reason(huge)).toMatch(new RegExp(`exceeds ${V2_MAX}`));
    const fam = Buffer.from(good);
    fam[13] = 0x51;
    expect(reason(fam)).toMatch(/unknown address family 5/);
  });

  it('never throws on random bytes (with or without a valid signature in front), nor on address-like v1 fields', () => {
    const sig = encodeProxyV2('10.0.0.1', 1, '10.0.0.2', 2).subarray(0, 12);
    // Random addresses from the pieces an address parser cares about, so many pass isIPv4/isIPv6.
    const pieces = ['::', ':', '1', 'fe80', 'ffff', '0', '.', '1.2.3.4', '%', 'eth0', '%1', '256', 'g'];
    const field = (b: Buffer) => Array.from(b, (x) => pieces[x % pieces.length]).join('');
    for (let i = 0; i < 5000; i++) {
      const tail = randomBytes(i % 200);
      const v1 = Buffer.from(`PROXY TCP${i % 2 ? 6 : 4} ${field(tail.subarray(0, 1 + (i % 6)))} ::1 1 2\r\n`);
      for (const buf of [tail, Buffer.concat([sig, tail]), Buffer.concat([Buffer.from('PROXY '), tail]), v1]) {
        const r = parseProxyHeader(buf);
        expect(['ok', 'incomplete', 'error']).toContain(r.status);
      }
    }
  });
});

/**
 * Every address form through encode and parse, v1 and v2, against Node's own formatter as the
 * oracle (SocketAddress prints what a socket reports). Seeded, so a failure names a repeatable case.
 */
describe('PROXY addresses: a round-trip property over every address form', () => {
  /** mulberry32: a small seeded generator (the seed is in the test name). */
  function rng(seed: number): () => number {
    let a = seed >>> 0;
    return () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }
  const SEED = 0x5eed5952;

  type Form = 'ipv4' | 'full' | 'compressed' | 'mixed' | 'mapped' | 'mapped-long' | 'compatible';
  const FORMS: Form[] = ['ipv4', 'full', 'compressed', 'mixed', 'mapped', 'mapped-long', 'compatible'];

  /** A random address written in `form`, with random spelling (case, leading zeros) where the form allows. */
  function address(r: () => number, form: Form): string {
    const byte = () => (r() < 0.3 ? 0 : Math.floor(r() * 256));
    const quad = () => [byte(), byte(), byte(), byte()].join('.');
    const group = () => (r() < 0.4 ? 0 : Math.floor(r() * 0x10000));
    const spell = (g: number) => {
      let h = g.toString(16);
      if (r() < 0.2) h = h.padStart(4, '0');
      return r() < 0.3 ? h.toUpperCase() : h;
    };
    const groups = Array.from({ length: 8 }, group);
    if (form === 'ipv4') return quad();
    if (form === 'mapped') return `::${r() < 0.5 ? 'ffff' : 'FFFF'}:${quad()}`;
    if (form === 'mapped-long') return `0:0:0:0:0:ffff:${quad()}`;
    if (form === 'compatible') return `::${[1 + Math.floor(r() * 255), byte(), byte(), byte()].join('.')}`;
    if (form === 'mixed') return `${groups.slice(0, 6).map(spell).join(':')}:${quad()}`.replace(/^(0:)+/, '::').replace(/^::0:/, '::');
    if (form === 'full') return groups.map(spell).join(':');
    // compressed: a run of zero groups (any length 1..8, anywhere) written '::'
    const start = Math.floor(r() * 8);
    const len = 1 + Math.floor(r() * (8 - start));
    for (let i = start; i < start + len; i++) groups[i] = 0;
    const head = groups.slice(0, start).map(spell).join(':');
    const tail = groups.slice(start + len).map(spell).join(':');
    return `${head}::${tail}`;
  }

  /** Node's spelling, and the client key fulcrum uses for it (an IPv4-mapped address as IPv4). */
  const nodeText = (a: string): string => new SocketAddress({ address: a, family: isIPv4(a) ? 'ipv4' : 'ipv6' }).address;
  const keyed = (a: string): string => clientAddress(nodeText(a));

  it.each([['v1', encodeProxyV1], ['v2', encodeProxyV2]] as const)(`%s: encode then parse gives each address back in Node's spelling (seed ${SEED})`, (v, encode) => {
    const r = rng(SEED + (v === 'v1' ? 1 : 2));
    for (let i = 0; i < 4000; i++) {
      const src = address(r, FORMS[i % FORMS.length]);
      const dst = address(r, FORMS[Math.floor(r() * FORMS.length)]);
      expect(isIP(src) && isIP(dst), `${src} ${dst}`).toBeTruthy();
      const sp = Math.floor(r() * 65536);
      const dp = Math.floor(r() * 65536);
      const h = ok(encode(src, sp, dst, dp)).header;
      const both4 = isIPv4(keyed(src)) && isIPv4(keyed(dst));
      const what = `case ${i}: ${src} → ${dst}`;
      expect(h.family, what).toBe(both4 ? 'tcp4' : 'tcp6');
      // Nothing lost: the same client key as the address had, in Node's spelling.
      expect(clientAddress(h.srcAddress), what).toBe(keyed(src));
      expect(clientAddress(h.dstAddress), what).toBe(keyed(dst));
      if (!both4) expect(h.srcAddress, what).toBe(isIPv4(keyed(src)) ? `::ffff:${keyed(src)}` : keyed(src));
      expect([h.srcPort, h.dstPort], what).toEqual([sp, dp]);
    }
  });

  it(`v1 parses any spelling of an address to Node's, and v2 any 16 bytes to Node's (seed ${SEED})`, () => {
    const r = rng(SEED + 3);
    for (let i = 0; i < 4000; i++) {
      const form = FORMS[1 + (i % (FORMS.length - 1))]; // the IPv6 forms
      const a = address(r, form);
      const h = ok(Buffer.from(`PROXY TCP6 ${a} ::1 1 2\r\n`)).header;
      expect(h.srcAddress, `${form} ${a}`).toBe(nodeText(a));
      const bytes = randomBytes(16);
      if (i % 3 === 0) bytes.fill(0, 0, 10 + (i % 2));
      if (i % 6 === 0) bytes[10] = bytes[11] = 0xff;
      const v2 = encodeProxyV2('::1', 1, '::1', 2);
      bytes.copy(v2, 16);
      const text = ok(v2).header.srcAddress;
      const hex = bytes.toString('hex').replace(/(....)(?!$)/g, '$1:');
      expect(text, hex).toBe(nodeText(hex));
    }
  });

  it('the cases the fuzzer found: no address is cut short or lost', () => {
    for (const encode of [encodeProxyV1, encodeProxyV2]) {
      expect(ok(encode('1::1.2.3.4', 1, '::1', 2)).header.srcAddress).toBe('1::102:304');
      expect(ok(encode('::1.2.3.4', 1, '::1', 2)).header.srcAddress).toBe('::1.2.3.4');
      // A mapped client beside an IPv6 destination: both sent as IPv6, the client still named.
      expect(ok(encode('::ffff:192.0.2.1', 1, '2001:db8::1', 2)).header).toMatchObject({ family: 'tcp6', srcAddress: '::ffff:192.0.2.1', dstAddress: '2001:db8::1' });
      expect(ok(encode('192.0.2.1', 1, '2001:db8::1', 2)).header).toMatchObject({ family: 'tcp6', srcAddress: '::ffff:192.0.2.1' });
      expect(ok(encode('::ffff:192.0.2.1', 1, '::ffff:192.0.2.2', 2)).header).toMatchObject({ family: 'tcp4', srcAddress: '192.0.2.1', dstAddress: '192.0.2.2' });
    }
    // v1 and v2 name a mapped client alike (v2 used to give ::ffff:c000:201).
    const v1 = ok(Buffer.from('PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n')).header.srcAddress;
    const v2 = Buffer.from(encodeProxyV2('::ffff:192.0.2.1', 1, '2001:db8::1', 2));
    expect(ok(v2).header.srcAddress).toBe(v1);
    expect(v1).toBe('::ffff:192.0.2.1');
  });

  it('zones: refused in a header; a zoned address is sent without its zone, in either version', () => {
    expect(reason(Buffer.from('PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n'))).toMatch(/bad TCP6 address/);
    for (const encode of [encodeProxyV1, encodeProxyV2]) {
      const h = ok(encode('fe80::1%eth0', 1, 'fe80::2%2', 2)).header;
      expect(h).toMatchObject({ family: 'tcp6', srcAddress: 'fe80::1', dstAddress: 'fe80::2' });
      expect(encode('fe80::1%eth0', 1, 'fe80::2%2', 2)).toEqual(encode('fe80::1', 1, 'fe80::2', 2));
    }
    // Not an address at all: UNKNOWN (v1) / UNSPEC (v2), never a guess.
    expect(ok(encodeProxyV1('not-an-ip', 1, '::1', 2)).header.family).toBe('unknown');
    expect(ok(encodeProxyV2('', 1, '::1', 2)).header.family).toBe('unknown');
  });
});
