/**
 * Power-of-two-choices random: draw two backends from the weighted schedule (so draws are
 * proportional to effective weight), keep the less loaded by the leastconn key
 * (active + 1) × SCALE / weight. Mitzenmacher's result: two random choices cut the maximum load
 * exponentially compared with one, without a scan.
 *
 * The xorshift32 state is a WebAssembly global: one per engine instance (per worker), never shared,
 * seeded by `init` (and `seedRandom`).
 */
import { RING_CAPACITY, S_ACTIVE_RING, S_RING_LEN, B_ACTIVE, B_EFF_WEIGHT } from './generated/layout';
import { serviceAt, backendAt, ringAt, wantedTier, eligible, hasRoom, takeSlot, lighter } from './records';
import { leastconnPick } from './leastconn';

/** Pairs drawn before falling back to the exact scan. */
const ROUNDS: i32 = 4;

let state: u32 = 0x9e3779b9;

/** Sets this instance's generator state (0 is replaced: xorshift must not start at 0). */
export function seedRandom(seed: u32): void {
  state = seed != 0 ? seed : 0x9e3779b9;
}

@inline function next(): u32 {
  let x = state;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  state = x;
  return x;
}

/**
 * Picks a backend of service `s` by two weighted random draws and takes a slot on it. Hot path:
 * once per accepted connection of a random service. Returns the backend id or
 * PICK_BACKENDS_FULL / PICK_NO_BACKEND (decided by the leastconn scan when draws keep failing).
 */
export function randomPick(s: u32): i32 {
  const sa = serviceAt(s);
  const r = atomic.load<u32>(sa + S_ACTIVE_RING) & 1;
  const len = load<u32>(sa + S_RING_LEN + (r << 2));
  if (len == 0 || len > RING_CAPACITY) return leastconnPick(s);
  const ra = ringAt(s, r);
  const tier = wantedTier(sa);
  for (let round = 0; round < ROUNDS; round++) {
    let a = <u32>load<u16>(ra + (<usize>(next() % len) << 1));
    let b = <u32>load<u16>(ra + (<usize>(next() % len) << 1));
    const okA = eligible(a, s, tier) && hasRoom(a);
    const okB = b != a && eligible(b, s, tier) && hasRoom(b);
    if (okA && okB) {
      const ra_ = backendAt(a);
      const rb_ = backendAt(b);
      if (lighter(load<i32>(rb_ + B_ACTIVE), load<i32>(rb_ + B_EFF_WEIGHT), load<i32>(ra_ + B_ACTIVE), load<i32>(ra_ + B_EFF_WEIGHT))) {
        const t = a;
        a = b;
        b = t;
      }
      if (takeSlot(a)) return <i32>a;
      if (takeSlot(b)) return <i32>b;
    } else if (okA) {
      if (takeSlot(a)) return <i32>a;
    } else if (okB) {
      if (takeSlot(b)) return <i32>b;
    }
  }
  return leastconnPick(s);
}
