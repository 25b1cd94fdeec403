/**
 * Fuzzing the heartbeat decoder (src/failover/heartbeat.ts decodeAdvert): every packet that reaches
 * the failover port goes through it. It never throws, answers an Advert or one of DROP_REASONS,
 * and no change to an authentic packet is accepted (the HMAC covers every byte it reads).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeAdvert, DROP_REASONS, PACKET_SIZE } from '../../src/failover/heartbeat.ts';
import { corpus, inputs, rounds } from './fuzz.ts';

/** The key the corpus' seeds were signed with. */
const KEY = Buffer.from('fuzz-heartbeat-key-0123456789abcdef');
const seeds = corpus('heartbeat');

describe('fuzz: heartbeat decoder', () => {
  it('the seeds are authentic adverts (else the mutations below prove nothing)', () => {
    for (const s of seeds) expect(typeof decodeAdvert(s, KEY)).toBe('object');
  });

  it('never throws; only an unchanged authentic packet decodes', () => {
    fc.assert(fc.property(inputs(seeds, 2 * PACKET_SIZE), (buf) => {
      const r = decodeAdvert(buf, KEY);
      if (typeof r === 'string') {
        expect(DROP_REASONS).toContain(r);
        return;
      }
      expect(seeds.some((s) => s.equals(buf))).toBe(true);
    }), rounds());
  });
});
