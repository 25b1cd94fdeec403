/**
 * Weighted least-connections, as HAProxy's leastconn: the eligible backend with the lowest
 * (active + 1) × SCALE / effective weight wins; ties go to the first one met from a rotating start
 * (S_CURSOR), so equal backends share new connections instead of the first member taking them all.
 *
 * A leastconn service answers from its tournament tree (tree.ts: O(log n) per pick, the same answer
 * as the scan below, retries included). The scan is the exact definition, kept as the rare
 * fallback: of the tree (every member full or tried, a state written since the last rebuild) and of
 * every other algorithm, when a bounded walk of a ring finds nothing; it also decides between
 * "here is a backend", PICK_BACKENDS_FULL and PICK_NO_BACKEND.
 */
import { S_CURSOR, B_ACTIVE, B_MAX_CONN, B_EFF_WEIGHT, PICK_NO_BACKEND, PICK_BACKENDS_FULL } from './generated/layout';
import { serviceAt, backendAt, membersAt, memberCount, wantedTier, eligible, takeSlotBelow, lighter } from './records';
import { hasTree, treePick } from './tree';

/** Rescans after losing the last slot of the chosen backend to another worker; then give up as full. */
const ATTEMPTS: i32 = 4;

/**
 * Picks a backend of service `s` and takes a slot on it (B_ACTIVE + 1). Returns the backend id, or
 * PICK_BACKENDS_FULL (eligible backends exist, all at max_connections) or PICK_NO_BACKEND.
 * Hot path: once per accepted connection of a leastconn service (the tree, O(log n)); as the
 * fallback of the other algorithms, the scan (O(n), rare).
 */
export function leastconnPick(s: u32): i32 {
  if (hasTree(s)) return treePick(s);
  return scanFrom(s, atomic.add<u32>(serviceAt(s) + S_CURSOR, 1), 0);
}

/**
 * The exact scan: the lowest key among eligible members with room, ties to the first met from
 * member position `first` % n; later attempts (after losing a slot race) draw a new start.
 * With `cap` > 0, a member with active ≥ cap counts as full too (Maglev's bounded load), and the
 * takeSlot enforces it. Cost O(n). Called by leastconnPick (services without a tree), by the tree
 * pick's fallback (under the tree's lock) and by the ring algorithms' fallbacks.
 */
export function scanFrom(s: u32, first: u32, cap: i32): i32 {
  const sa = serviceAt(s);
  const n = memberCount(sa);
  if (n == 0) return PICK_NO_BACKEND;
  const ma = membersAt(s);
  const tier = wantedTier(sa);
  let start = first;
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    if (attempt > 0) start = atomic.add<u32>(sa + S_CURSOR, 1);
    let i = start % n;
    let best: i32 = -1;
    let bestActive: i32 = 0;
    let bestWeight: i32 = 1;
    let full = false;
    for (let k: u32 = 0; k < n; k++) {
      const b = <u32>load<u16>(ma + (<usize>i << 1));
      if (++i == n) i = 0;
      if (!eligible(b, s, tier)) continue;
      const a = backendAt(b);
      const active = load<i32>(a + B_ACTIVE); // a hint: takeSlotBelow decides atomically
      const max = load<i32>(a + B_MAX_CONN);
      if ((max > 0 && active >= max) || (cap > 0 && active >= cap)) {
        full = true;
        continue;
      }
      const weight = load<i32>(a + B_EFF_WEIGHT);
      if (best < 0 || lighter(active, weight, bestActive, bestWeight)) {
        best = <i32>b;
        bestActive = active;
        bestWeight = weight;
      }
    }
    if (best < 0) return full ? PICK_BACKENDS_FULL : PICK_NO_BACKEND;
    if (takeSlotBelow(<u32>best, cap)) return best;
  }
  return PICK_BACKENDS_FULL;
}
