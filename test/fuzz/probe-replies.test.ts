/**
 * Fuzzing what the database probes read from a backend before any driver sees it: the RESP
 * parser of the Redis probe (src/health/probes/resp.ts) and the PostgreSQL and MySQL framing
 * checks (pgFrames, mysqlFrames: src/health/probes/postgres.ts, mysql.ts). A backend is not
 * trusted: whatever it answers, the probe fails with a reason (ProbeFailure, or a problem
 * string) and never throws anything else, never loops, and decides the same whether the reply
 * arrives in one piece or in many.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ProbeFailure } from '../../src/health/probes/probe.ts';
import { parseReply, RespError, type RespValue } from '../../src/health/probes/resp.ts';
import { pgFrames } from '../../src/health/probes/postgres.ts';
import { mysqlFrames } from '../../src/health/probes/mysql.ts';
import { chunks, corpus, inputs, rounds } from './fuzz.ts';

/** parseReply's three answers, as one value: a reply and its length, 'more', or the failure. */
function resp(buf: Buffer): [RespValue, number] | 'more' | 'failure' {
  try {
    return parseReply(buf) ?? 'more';
  } catch (err) {
    expect(err).toBeInstanceOf(ProbeFailure);
    return 'failure';
  }
}

describe('fuzz: RESP replies', () => {
  const seeds = corpus('resp');

  it('the seeds parse whole', () => {
    for (const s of seeds) {
      const r = resp(s);
      expect(Array.isArray(r) && r[1]).toBe(s.length);
    }
  });

  it('a RESP3 blob error is read whole, as an error (it was read as a one-line error, leaving its message unread)', () => {
    const r = resp(Buffer.from('!21\r\nSYNTAX invalid syntax\r\n+OK\r\n'));
    expect(r).toEqual([new RespError('SYNTAX invalid syntax'), 28]);
  });

  it('never throws but ProbeFailure; a reply is decided by its own bytes; its prefixes ask for more or fail', () => {
    fc.assert(fc.property(inputs(seeds), fc.uint8Array({ maxLength: 32 }), fc.nat(), (buf, tail, cut) => {
      const r = resp(buf);
      if (typeof r === 'string') return;
      const [value, used] = r;
      expect(used).toBeGreaterThan(0);
      expect(used).toBeLessThanOrEqual(buf.length);
      const own = buf.subarray(0, used);
      expect(resp(Buffer.concat([own, Buffer.from(tail)]))).toEqual([value, used]);
      // A strict prefix of a reply is never taken for a (different) reply.
      const prefix = own.subarray(0, cut % used);
      const p = resp(prefix);
      if (typeof p !== 'string') expect(p[1]).toBeLessThan(used);
    }), rounds());
  });
});

describe.each([
  ['PostgreSQL', 'pg', pgFrames],
  ['MySQL', 'mysql', mysqlFrames],
] as const)('fuzz: %s reply framing', (_name, target, frames) => {
  const seeds = corpus(target);

  /** Feeds the pieces to a fresh check; the first problem, or null when all were accepted. */
  function verdict(pieces: Buffer[]): string | null {
    const check = frames();
    for (const p of pieces) {
      const problem = check(p);
      if (problem !== null) return problem;
    }
    return null;
  }

  it('the seeds are accepted', () => {
    for (const s of seeds) expect(verdict([s])).toBeNull();
  });

  it('never throws; the verdict does not depend on how the bytes were cut', () => {
    fc.assert(fc.property(inputs(seeds, 1024), fc.array(fc.nat(), { maxLength: 8 }), (buf, cuts) => {
      const whole = verdict([buf]);
      const pieces = verdict(chunks(buf, cuts));
      expect(pieces === null).toBe(whole === null);
      if (whole !== null) expect(whole.length).toBeLessThan(400);
    }), rounds());
  });
});
