/** The PROXY protocol codec: round trips, incremental parsing, and every malformed header refused with a reason. */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
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
