/** Plain-TypeScript reference of assembly/maglev.ts (benchmark only), same table, same memory. */
import { RING_CAPACITY, NO_BACKEND_U16, S_TABLE_SIZE, S_ACTIVE_RING, S_RING_LEN, B_HASH_OFFSET, B_HASH_SKIP } from '../../src/shm/layout.ts';
import { u32, u16, serviceAt, backendAt, ringAt, wantedTier, eligible, takeSlot } from './records.ts';
import { leastconnPick } from './leastconn.ts';
import { collectTier, ids, weights } from './tier.ts';

const pos = new Uint32Array(1024);
const skips = new Uint32Array(1024);
const credit = new Uint32Array(1024);

export function maglevBuild(s: number, ring: number): number {
  const m = u32[(serviceAt(s) + S_TABLE_SIZE) >> 2] || RING_CAPACITY;
  const n = collectTier(s);
  if (n === 0) return 0;
  const r = ringAt(s, ring) >> 1;
  let maxWeight = 0;
  for (let i = 0; i < n; i++) {
    const a = backendAt(ids[i]);
    pos[i] = u32[(a + B_HASH_OFFSET) >> 2] % m;
    skips[i] = (u32[(a + B_HASH_SKIP) >> 2] % (m - 1)) + 1;
    credit[i] = 0;
    if (weights[i] > maxWeight) maxWeight = weights[i];
  }
  u16.fill(NO_BACKEND_U16, r, r + m);
  let filled = 0;
  for (;;) {
    for (let i = 0; i < n; i++) {
      const c0 = credit[i] + weights[i];
      if (c0 < maxWeight) {
        credit[i] = c0;
        continue;
      }
      credit[i] = c0 - maxWeight;
      const skip = skips[i];
      let c = pos[i];
      while (u16[r + c] !== NO_BACKEND_U16) {
        c += skip;
        if (c >= m) c -= m;
      }
      u16[r + c] = ids[i];
      c += skip;
      if (c >= m) c -= m;
      pos[i] = c;
      if (++filled === m) return m;
    }
  }
}

export function maglevPick(s: number, hash: number): number {
  const sa = serviceAt(s);
  const rIdx = Atomics.load(u32, (sa + S_ACTIVE_RING) >> 2) & 1;
  const len = u32[((sa + S_RING_LEN) >> 2) + rIdx];
  if (len === 0) return leastconnPick(s);
  const r = ringAt(s, rIdx) >> 1;
  const tier = wantedTier(sa);
  let idx = (hash >>> 0) % len;
  const walk = Math.min(len, 16);
  for (let k = 0; k < walk; k++) {
    const b = u16[r + idx];
    if (eligible(b, s, tier) && takeSlot(b)) return b;
    if (++idx === len) idx = 0;
  }
  return leastconnPick(s);
}
