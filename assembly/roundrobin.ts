/**
 * Weighted round-robin, smooth as nginx's: on every step each backend's current value grows by its
 * weight, the largest wins the step and pays back the total. Heavier backends get proportionally
 * more steps, interleaved rather than in bursts (weights 5:1:1 give a a b a c a a, not a a a a a b c).
 *
 * The schedule is computed once per rebuild into the ring (weights divided by their gcd, length
 * capped at RING_CAPACITY), so a pick is one atomic cursor increment and one ring load. The random
 * algorithm draws from the same schedule, which makes its draws weight-proportional.
 */
import {
  RING_CAPACITY, MAX_MEMBERS, S_CURSOR, BS_RR_CURRENT as X_CURRENT, BS_RR_SCALED as X_SCALED, BS_ID as X_ID,
  BS_WEIGHT as X_WEIGHT,
} from './generated/layout';
import { serviceAt, ringAt, buildRecordAt as rec } from './records';
import { walkRing } from './ring';
import { collectTier } from './tier';

// The build scratch record of each eligible backend (layout.ts BS_*): collectTier wrote its id and
// effective weight; the schedule build keeps its current value and scaled weight there.

function gcd(a: u32, b: u32): u32 {
  while (b != 0) {
    const t = a % b;
    a = b;
    b = t;
  }
  return a;
}

/**
 * Builds service `s`'s smooth weighted round-robin schedule into ring `ring` and returns its length
 * (0 when nothing is eligible). Does not publish the ring (rebuild does). Control plane only, via
 * rebuild; exported for tests and benchmarks. Cost O(length × eligible backends).
 */
export function scheduleBuild(s: u32, ring: u32): u32 {
  const n = collectTier(s);
  if (n == 0) return 0;
  let g: u32 = 0;
  let total: u64 = 0;
  for (let i: u32 = 0; i < n; i++) {
    const w = <u32>load<u16>(rec(i) + X_WEIGHT);
    g = gcd(w, g);
    total += <u64>w;
  }
  // Room for the max(1, …) rounding below: n ≤ MAX_MEMBERS backends may each gain up to one slot.
  const cap: u64 = <u64>(RING_CAPACITY - MAX_MEMBERS);
  const scaledDown = total / <u64>g > cap;
  let sum: u32 = 0;
  for (let i: u32 = 0; i < n; i++) {
    const w = <u64>load<u16>(rec(i) + X_WEIGHT);
    let scaled = <u32>(w / <u64>g);
    if (scaledDown) scaled = max<u32>(1, <u32>(w * cap / total));
    store<u32>(rec(i) + X_SCALED, scaled);
    store<i32>(rec(i) + X_CURRENT, 0);
    sum += scaled;
  }
  const ra = ringAt(s, ring);
  for (let slot: u32 = 0; slot < sum; slot++) {
    let best: u32 = 0;
    let bestCurrent: i32 = i32.MIN_VALUE;
    for (let i: u32 = 0; i < n; i++) {
      const x = rec(i);
      const cur = load<i32>(x + X_CURRENT) + <i32>load<u32>(x + X_SCALED);
      store<i32>(x + X_CURRENT, cur);
      if (cur > bestCurrent) {
        bestCurrent = cur;
        best = i;
      }
    }
    const x = rec(best);
    store<i32>(x + X_CURRENT, load<i32>(x + X_CURRENT) - <i32>sum);
    store<u16>(ra + (<usize>slot << 1), load<u16>(x + X_ID));
  }
  return sum;
}

/**
 * Picks the next backend of service `s`'s schedule and takes a slot on it. Hot path: once per
 * accepted connection of a roundrobin service: one atomic increment of the shared cursor (so all
 * workers together follow one schedule) and one ring load; unavailable entries (full, tried, or a
 * racing rebuild, validated as in maglevPick) are skipped forward a bounded number of slots, then
 * the leastconn scan decides. Returns the backend id or PICK_BACKENDS_FULL / PICK_NO_BACKEND.
 */
export function roundrobinPick(s: u32): i32 {
  // One atomic increment of the shared cursor, so all workers together follow one schedule.
  return walkRing(s, atomic.add<u32>(serviceAt(s) + S_CURSOR, 1), 0, false);
}
