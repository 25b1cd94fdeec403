/**
 * Fuzzing the PROXY protocol parser (src/proxy/proxy-protocol.ts), the first thing fulcrum reads
 * from a client on an accept_proxy service. Whatever arrives, the parser answers incomplete, ok or
 * error — it never throws — and what it accepts is consistent: the header is decided by its own
 * bytes (the same with any bytes after it, the same when it arrives in pieces), addresses are
 * valid for their family, ports fit 16 bits.
 */
import { isIPv4, isIPv6 } from 'node:net';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseProxyHeader, V1_MAX, V2_MAX, type ParseResult } from '../../src/proxy/proxy-protocol.ts';
import { chunks, corpus, inputs, rounds } from './fuzz.ts';

const seeds = corpus('proxy-header');

/** What a connection's reader does: feed the bytes as they arrive until a verdict. */
function incremental(pieces: Buffer[]): ParseResult {
  let got = Buffer.alloc(0);
  let r: ParseResult = { status: 'incomplete' };
  for (const p of pieces) {
    got = Buffer.concat([got, p]);
    r = parseProxyHeader(got);
    if (r.status !== 'incomplete') return r;
  }
  return r;
}

describe('fuzz: PROXY header parser', () => {
  it('never throws; what it accepts is well-formed and bounded', () => {
    fc.assert(fc.property(inputs(seeds), (buf) => {
      const r = parseProxyHeader(buf);
      if (r.status !== 'ok') return;
      expect(r.consumed).toBeGreaterThan(0);
      expect(r.consumed).toBeLessThanOrEqual(Math.min(buf.length, Math.max(V1_MAX, V2_MAX)));
      const h = r.header;
      for (const p of [h.srcPort, h.dstPort]) expect(Number.isInteger(p) && p >= 0 && p <= 65535).toBe(true);
      if (h.family === 'tcp4') expect(isIPv4(h.srcAddress) && isIPv4(h.dstAddress)).toBe(true);
      if (h.family === 'tcp6') expect(isIPv6(h.srcAddress) && isIPv6(h.dstAddress)).toBe(true);
      if (h.family === 'local' || h.family === 'unknown') expect(h.srcAddress).toBe('');
    }), rounds());
  });

  it('a header is decided by its own bytes: the same with bytes after it, and when it arrives in pieces', () => {
    fc.assert(fc.property(inputs(seeds), fc.uint8Array({ maxLength: 64 }), fc.array(fc.nat(), { maxLength: 6 }), (buf, tail, cuts) => {
      const whole = parseProxyHeader(buf);
      if (whole.status === 'ok') {
        const own = buf.subarray(0, whole.consumed);
        expect(parseProxyHeader(Buffer.concat([own, Buffer.from(tail)]))).toEqual(whole);
        expect(parseProxyHeader(own)).toEqual(whole);
      }
      // Piece by piece, the verdict is the one the whole buffer gets (an error may come earlier,
      // from the first bytes that rule a header out, but then the whole buffer is an error too).
      const inPieces = incremental(chunks(buf, cuts));
      expect(inPieces.status).toBe(whole.status);
      if (whole.status === 'ok') expect(inPieces).toEqual(whole);
    }), rounds());
  });
});
