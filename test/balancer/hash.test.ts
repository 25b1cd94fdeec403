import { describe, it, expect } from 'vitest';
import { hashKey, hashString, fmix32, backendHashes, SEED_OFFSET, SEED_SKIP } from '../../src/balancer/hash.ts';

describe('hashKey', () => {
  it('is FNV-1a finished with fmix32, stable across processes (pinned values)', () => {
    expect(fmix32(0x811c9dc5)).toBe(hashKey(''));
    // Pinned: a change here changes every Maglev table and every client's backend.
    expect(hashKey('10.0.0.1')).toBe(2931590574);
    expect(hashKey('a')).toBe(444641715);
  });

  it('returns unsigned 32-bit integers and differs per seed', () => {
    for (const k of ['', 'x', '192.168.1.1:5432', '[::1]:80']) {
      const h = hashKey(k);
      expect(Number.isInteger(h) && h >= 0 && h <= 0xffffffff).toBe(true);
      const { offset, skip } = backendHashes(k);
      expect(offset).toBe(hashString(k, SEED_OFFSET));
      expect(skip).toBe(hashString(k, SEED_SKIP));
      expect(offset).not.toBe(skip);
    }
  });

  it('spreads similar IPv4 keys evenly over buckets', () => {
    const buckets = new Array(16).fill(0);
    for (let i = 0; i < 64_000; i++) buckets[hashKey(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`) % 16]++;
    for (const b of buckets) expect(Math.abs(b - 4000)).toBeLessThan(300);
  });
});
