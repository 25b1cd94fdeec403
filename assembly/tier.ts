/**
 * The eligible set a ring is built from, shared by the Maglev and schedule builds. Control plane
 * only (rebuild), so it may use the build scratch region, which no worker touches.
 */
import {
  MAX_BACKENDS, BACKEND_UP, BF_BACKUP, B_STATE, B_SERVICE, B_FLAGS, B_EFF_WEIGHT,
  S_PRIMARY_UP, S_BACKUP_UP, BS_ID, BS_WEIGHT,
} from './generated/layout';
import { serviceAt, backendAt, membersAt, memberCount, wantedTier, buildRecordAt } from './records';

/** Is member `b` up for service `s` with a weight, whatever its tier and load? */
function usable(b: u32, s: u32): bool {
  if (b >= MAX_BACKENDS) return false;
  const a = backendAt(b);
  return atomic.load<u32>(a + B_STATE) == BACKEND_UP && load<u32>(a + B_SERVICE) == s && load<i32>(a + B_EFF_WEIGHT) > 0;
}

/** Recounts S_PRIMARY_UP and S_BACKUP_UP (up, weight > 0) from the member list. Control plane only. */
export function countUp(s: u32): void {
  const sa = serviceAt(s);
  const ma = membersAt(s);
  const n = memberCount(sa);
  let primary: u32 = 0;
  let backup: u32 = 0;
  for (let i: u32 = 0; i < n; i++) {
    const b = <u32>load<u16>(ma + (<usize>i << 1));
    if (!usable(b, s)) continue;
    if (load<u32>(backendAt(b) + B_FLAGS) & BF_BACKUP) backup++;
    else primary++;
  }
  atomic.store<u32>(sa + S_PRIMARY_UP, primary);
  atomic.store<u32>(sa + S_BACKUP_UP, backup);
}

/**
 * Writes the eligible members of service `s` (usable, in the tier that takes connections) into the
 * build scratch, in member order: record i gets the id (BS_ID) and the effective weight
 * (BS_WEIGHT). Returns how many. Needs countUp first.
 */
export function collectTier(s: u32): u32 {
  const sa = serviceAt(s);
  const ma = membersAt(s);
  const n = memberCount(sa);
  const tier = wantedTier(sa);
  let k: u32 = 0;
  for (let i: u32 = 0; i < n; i++) {
    const b = <u32>load<u16>(ma + (<usize>i << 1));
    if (!usable(b, s)) continue;
    const a = backendAt(b);
    if ((load<u32>(a + B_FLAGS) & BF_BACKUP) != tier) continue;
    const x = buildRecordAt(k);
    store<u16>(x + BS_ID, <u16>b);
    store<u16>(x + BS_WEIGHT, <u16>min<i32>(load<i32>(a + B_EFF_WEIGHT), 0xffff));
    k++;
  }
  return k;
}
