/** Plain-TypeScript reference of assembly/leastconn.ts (benchmark only). */
import { S_CURSOR, B_ACTIVE, B_MAX_CONN, B_EFF_WEIGHT, PICK_NO_BACKEND, PICK_BACKENDS_FULL } from '../../src/shm/layout.ts';
import { u32, i32, u16, serviceAt, backendAt, membersAt, memberCount, wantedTier, eligible, takeSlot, lighter } from './records.ts';

export function leastconnPick(s: number): number {
  const sa = serviceAt(s);
  const n = memberCount(sa);
  if (n === 0) return PICK_NO_BACKEND;
  const m = membersAt(s) >> 1;
  const tier = wantedTier(sa);
  for (let attempt = 0; attempt < 4; attempt++) {
    let i = (Atomics.add(u32, (sa + S_CURSOR) >> 2, 1) >>> 0) % n;
    let best = -1;
    let bestActive = 0;
    let bestWeight = 1;
    let full = false;
    for (let k = 0; k < n; k++) {
      const b = u16[m + i];
      if (++i === n) i = 0;
      if (!eligible(b, s, tier)) continue;
      const a = backendAt(b);
      const active = i32[(a + B_ACTIVE) >> 2];
      const max = i32[(a + B_MAX_CONN) >> 2];
      if (max > 0 && active >= max) {
        full = true;
        continue;
      }
      const weight = i32[(a + B_EFF_WEIGHT) >> 2];
      if (best < 0 || lighter(active, weight, bestActive, bestWeight)) {
        best = b;
        bestActive = active;
        bestWeight = weight;
      }
    }
    if (best < 0) return full ? PICK_BACKENDS_FULL : PICK_NO_BACKEND;
    if (takeSlot(best)) return best;
  }
  return PICK_BACKENDS_FULL;
}
