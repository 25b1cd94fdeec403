/** Plain-TypeScript reference of assembly/tier.ts's collectTier (benchmark only). */
import { MAX_BACKENDS, BACKEND_UP, BF_BACKUP, B_STATE, B_SERVICE, B_FLAGS, B_EFF_WEIGHT } from '../../src/shm/layout.ts';
import { u32, i32, u16, serviceAt, backendAt, membersAt, memberCount, wantedTier } from './records.ts';

export const ids = new Uint16Array(1024);
export const weights = new Uint32Array(1024);

export function collectTier(s: number): number {
  const sa = serviceAt(s);
  const m = membersAt(s) >> 1;
  const n = memberCount(sa);
  const tier = wantedTier(sa);
  let k = 0;
  for (let i = 0; i < n; i++) {
    const b = u16[m + i];
    if (b >= MAX_BACKENDS) continue;
    const a = backendAt(b);
    if (u32[(a + B_STATE) >> 2] !== BACKEND_UP || u32[(a + B_SERVICE) >> 2] !== s) continue;
    if ((u32[(a + B_FLAGS) >> 2] & BF_BACKUP) !== tier || i32[(a + B_EFF_WEIGHT) >> 2] <= 0) continue;
    ids[k] = b;
    weights[k] = i32[(a + B_EFF_WEIGHT) >> 2];
    k++;
  }
  return k;
}
