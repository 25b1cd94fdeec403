/** Plain-TypeScript reference of assembly/random.ts (benchmark only). */
import { S_ACTIVE_RING, S_RING_LEN, B_ACTIVE, B_EFF_WEIGHT } from '../../src/shm/layout.ts';
import { u32, i32, u16, serviceAt, backendAt, ringAt, wantedTier, eligible, hasRoom, takeSlot, lighter } from './records.ts';
import { leastconnPick } from './leastconn.ts';

let state = 0x9e3779b9;
function next(): number {
  let x = state;
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  state = x >>> 0;
  return state;
}

export function randomPick(s: number): number {
  const sa = serviceAt(s);
  const rIdx = Atomics.load(u32, (sa + S_ACTIVE_RING) >> 2) & 1;
  const len = u32[((sa + S_RING_LEN) >> 2) + rIdx];
  if (len === 0) return leastconnPick(s);
  const r = ringAt(s, rIdx) >> 1;
  const tier = wantedTier(sa);
  for (let round = 0; round < 4; round++) {
    let a = u16[r + (next() % len)];
    let b = u16[r + (next() % len)];
    const okA = eligible(a, s, tier) && hasRoom(a);
    const okB = b !== a && eligible(b, s, tier) && hasRoom(b);
    if (okA && okB) {
      const pa = backendAt(a);
      const pb = backendAt(b);
      if (lighter(i32[(pb + B_ACTIVE) >> 2], i32[(pb + B_EFF_WEIGHT) >> 2], i32[(pa + B_ACTIVE) >> 2], i32[(pa + B_EFF_WEIGHT) >> 2])) {
        const t = a;
        a = b;
        b = t;
      }
      if (takeSlot(a)) return a;
      if (takeSlot(b)) return b;
    } else if (okA) {
      if (takeSlot(a)) return a;
    } else if (okB) {
      if (takeSlot(b)) return b;
    }
  }
  return leastconnPick(s);
}
