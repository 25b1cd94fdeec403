/**
 * The pick shared by the ring algorithms (maglev, roundrobin): from a starting slot of the
 * service's active ring, the first eligible backend with room wins. Unavailable entries (full,
 * already tried, over Maglev's load bound, or read while a rebuild raced: see maglevPick for why
 * a racing read is safe) are skipped along the key's walk: the next slots for roundrobin, the next
 * slots of the key's own permutation for maglev (start + k × step mod M, M prime, so the walk
 * visits every slot once and two keys of one slot spill to different backends). After a bounded
 * walk the exact leastconn scan decides, which also tells "backends full" (queue) from "nothing up".
 */
import {
  RING_CAPACITY, S_ACTIVE_RING, S_RING_LEN, S_BALANCE_FACTOR, S_PRIMARY_UP, S_BACKUP_UP, S_ACTIVE, S_CURSOR,
} from './generated/layout';
import { serviceAt, ringAt, wantedTier, eligible, takeSlotBelow } from './records';
import { leastconnPick, scanFrom } from './leastconn';

/** Ring slots a pick looks at before falling back to the exact scan. */
const WALK: u32 = 16;
/**
 * The same with a load bound: at most 1/factor of the backends can be at the bound (each holds
 * more than the mean), so with factor 1.25 a slot is under it with probability ≥ 0.2 and a
 * 48-slot walk misses with probability ≤ 0.8^48 ≈ 2e-5, and far less under realistic loads.
 */
const BOUNDED_WALK: u32 = 48;

/**
 * Maglev's bounded load for a service (S_BALANCE_FACTOR, percent; 0 = off): a backend takes a new
 * connection only while its active count < ceil(factor × (total + 1) / backends), where total + 1
 * is the service's active count with the connection being placed (acquire and reacquire count it
 * before they pick) and backends is the number of eligible backends (up, weight > 0, in the tier
 * taking connections: what the ring was built from). Returns that bound, or 0 (no bound).
 * Hot path: once per maglev pick, four loads. Identical on every instance for the same counts.
 */
@inline function loadBound(sa: usize): i32 {
  const factor = load<u32>(sa + S_BALANCE_FACTOR);
  if (factor == 0) return 0;
  let up = load<u32>(sa + S_PRIMARY_UP);
  if (up == 0) up = load<u32>(sa + S_BACKUP_UP);
  if (up == 0) return 0;
  const total = <u64>max<i32>(load<i32>(sa + S_ACTIVE), 1);
  const d = <u64>up * 100;
  return <i32>min<u64>((<u64>factor * total + d - 1) / d, <u64>i32.MAX_VALUE);
}

/**
 * Hot path: once per pick of a maglev (start = the client's hash, `stepSeed` derived from it,
 * `bounded` true) or roundrobin (start = the shared cursor, `stepSeed` 0: the next slots) service.
 * One atomic load of the ring index, then typically one slot read; O(1) in backends.
 */
@inline export function walkRing(s: u32, start: u32, stepSeed: u32, bounded: bool): i32 {
  const sa = serviceAt(s);
  const r = atomic.load<u32>(sa + S_ACTIVE_RING) & 1;
  const len = load<u32>(sa + S_RING_LEN + (r << 2));
  if (len == 0 || len > RING_CAPACITY) return leastconnPick(s);
  const ra = ringAt(s, r);
  const tier = wantedTier(sa);
  const cap = bounded ? loadBound(sa) : 0;
  const step = stepSeed != 0 && len > 1 ? 1 + stepSeed % (len - 1) : 1;
  let idx = start % len;
  const walk = min<u32>(len, cap > 0 ? BOUNDED_WALK : WALK);
  for (let k: u32 = 0; k < walk; k++) {
    const b = <u32>load<u16>(ra + (<usize>idx << 1));
    if (eligible(b, s, tier) && takeSlotBelow(b, cap)) return <i32>b;
    idx += step;
    if (idx >= len) idx -= len;
  }
  if (cap > 0) {
    // Some backend is under the bound whenever the counts are settled (they cannot all hold more
    // than the mean): the scan finds the least loaded of them. Racing counts may leave none; the
    // bound is then set aside rather than refuse the connection.
    const b = scanFrom(s, atomic.add<u32>(sa + S_CURSOR, 1), cap);
    if (b >= 0) return b;
  }
  return leastconnPick(s);
}
