/** Plain-TypeScript reference of assembly/roundrobin.ts's pick (benchmark only; the schedule is the engine's). */
import { S_ACTIVE_RING, S_RING_LEN, S_CURSOR } from '../../src/shm/layout.ts';
import { u32, u16, serviceAt, ringAt, wantedTier, eligible, takeSlot } from './records.ts';
import { leastconnPick } from './leastconn.ts';

export function roundrobinPick(s: number): number {
  const sa = serviceAt(s);
  const rIdx = Atomics.load(u32, (sa + S_ACTIVE_RING) >> 2) & 1;
  const len = u32[((sa + S_RING_LEN) >> 2) + rIdx];
  if (len === 0) return leastconnPick(s);
  const r = ringAt(s, rIdx) >> 1;
  const tier = wantedTier(sa);
  let idx = (Atomics.add(u32, (sa + S_CURSOR) >> 2, 1) >>> 0) % len;
  const walk = Math.min(len, 16);
  for (let k = 0; k < walk; k++) {
    const b = u16[r + idx];
    if (eligible(b, s, tier) && takeSlot(b)) return b;
    if (++idx === len) idx = 0;
  }
  return leastconnPick(s);
}
