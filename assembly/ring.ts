/**
 * The pick shared by the ring algorithms (maglev, roundrobin): from a starting slot of the
 * service's active ring, the first eligible backend with room wins; a short walk forward skips
 * entries that are full, already tried, or read while a rebuild raced (see maglevPick for why a
 * racing read is safe), and after WALK slots the exact leastconn scan decides, which also tells
 * "backends full" (queue) from "nothing up" (close).
 */
import { RING_CAPACITY, S_ACTIVE_RING, S_RING_LEN } from './generated/layout';
import { serviceAt, ringAt, wantedTier, eligible, takeSlot } from './records';
import { leastconnPick } from './leastconn';

/** Ring slots a pick looks at before falling back to the exact scan. */
const WALK: u32 = 16;

/**
 * Hot path: once per pick of a maglev (start = the client's hash) or roundrobin (start = the
 * shared cursor) service. One atomic load of the ring index, then typically one slot read.
 */
@inline export function walkRing(s: u32, start: u32): i32 {
  const sa = serviceAt(s);
  const r = atomic.load<u32>(sa + S_ACTIVE_RING) & 1;
  const len = load<u32>(sa + S_RING_LEN + (r << 2));
  if (len == 0 || len > RING_CAPACITY) return leastconnPick(s);
  const ra = ringAt(s, r);
  const tier = wantedTier(sa);
  let idx = start % len;
  const walk = min<u32>(len, WALK);
  for (let k: u32 = 0; k < walk; k++) {
    const b = <u32>load<u16>(ra + (<usize>idx << 1));
    if (eligible(b, s, tier) && takeSlot(b)) return <i32>b;
    if (++idx == len) idx = 0;
  }
  return leastconnPick(s);
}
