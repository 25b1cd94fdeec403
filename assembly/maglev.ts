/**
 * Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
 * Balancer", NSDI 2016, §3.4), with weights and bounded-load lookups.
 *
 * Build (control plane, on every change of members, states or weights): each eligible backend i
 * has a permutation of the M table slots, offset_i = B_HASH_OFFSET % M and
 * skip_i = B_HASH_SKIP % (M − 1) + 1 (M prime, so every skip walks all slots). Backends take turns
 * in member order (members are sorted by "host:port", so independent instances build identical
 * tables); in its turn a backend claims the next slot of its permutation that is still empty.
 * Weights: every round each backend adds its effective weight to a credit and takes a turn only
 * when the credit reaches the largest weight, so turns (and slots) are proportional to weight; with
 * equal weights this is exactly the paper's round-robin and each backend owns ⌊M/N⌋ or ⌈M/N⌉ slots.
 *
 * Pick: ring[hash % M]. A backend that is full, already tried, no longer valid, or at the load bound
 * (`hash_balance_factor`, see ring.ts loadBound: bounded-load consistent hashing) makes the pick
 * walk the key's preference order, the next slots of its own permutation of the table, a bounded
 * number of slots: the overflow lands on other owners, still deterministic per key and state, and
 * goes back to the key's own slot as soon as its owner is under the bound again; after that the
 * leastconn scan decides.
 */
import {
  RING_CAPACITY, NO_BACKEND_U16, S_TABLE_SIZE, B_HASH_OFFSET, B_HASH_SKIP,
  BS_MAGLEV_POS as X_POS, BS_MAGLEV_SKIP as X_SKIP, BS_ID as X_ID, BS_WEIGHT as X_WEIGHT, BS_MAGLEV_CREDIT as X_CREDIT,
} from './generated/layout';
import { serviceAt, backendAt, ringAt, buildRecordAt } from './records';
import { walkRing } from './ring';
import { collectTier } from './tier';

// The build scratch record of each eligible backend (layout.ts BS_*): collectTier wrote its id and
// effective weight; the build keeps the next slot of its permutation, its skip and its turn credit.

function isPrime(m: u32): bool {
  if (m < 2) return false;
  for (let d: u32 = 2; d * d <= m; d++) if (m % d == 0) return false;
  return true;
}

/**
 * Builds service `s`'s Maglev table into ring `ring` (0 or 1) and returns its length: M (the
 * service's S_TABLE_SIZE), or 0 when no backend is eligible. Does not publish the ring (rebuild
 * does). Control plane only, via rebuild; also exported for tests and benchmarks.
 * Cost: O(M log M) slot probes in expectation (the paper's bound), no allocation.
 */
export function maglevBuild(s: u32, ring: u32): u32 {
  const sa = serviceAt(s);
  let m = load<u32>(sa + S_TABLE_SIZE);
  // A non-prime M would let a permutation cycle without covering the table (and the fill never
  // end); the control plane validates table_size, this keeps the engine safe regardless.
  if (m < 7 || m > RING_CAPACITY || !isPrime(m)) m = RING_CAPACITY;
  const n = collectTier(s);
  if (n == 0) return 0;
  const ra = ringAt(s, ring);
  let maxWeight: u32 = 0;
  for (let i: u32 = 0; i < n; i++) {
    const x = buildRecordAt(i);
    const a = backendAt(<u32>load<u16>(x + X_ID));
    store<u32>(x + X_POS, load<u32>(a + B_HASH_OFFSET) % m);
    store<u32>(x + X_SKIP, load<u32>(a + B_HASH_SKIP) % (m - 1) + 1);
    store<u32>(x + X_CREDIT, 0);
    const w = <u32>load<u16>(x + X_WEIGHT);
    if (w > maxWeight) maxWeight = w;
  }
  for (let j: u32 = 0; j < m; j++) store<u16>(ra + (<usize>j << 1), NO_BACKEND_U16);
  let filled: u32 = 0;
  // Each round gives the heaviest backend a turn, so every round fills at least one slot.
  while (true) {
    for (let i: u32 = 0; i < n; i++) {
      const x = buildRecordAt(i);
      let credit = load<u32>(x + X_CREDIT) + <u32>load<u16>(x + X_WEIGHT);
      if (credit < maxWeight) {
        store<u32>(x + X_CREDIT, credit);
        continue;
      }
      store<u32>(x + X_CREDIT, credit - maxWeight);
      const skip = load<u32>(x + X_SKIP);
      let c = load<u32>(x + X_POS);
      while (load<u16>(ra + (<usize>c << 1)) != NO_BACKEND_U16) {
        c += skip;
        if (c >= m) c -= m;
      }
      store<u16>(ra + (<usize>c << 1), load<u16>(x + X_ID));
      c += skip;
      if (c >= m) c -= m;
      store<u32>(x + X_POS, c);
      if (++filled == m) return m;
    }
  }
  return m; // unreachable
}

/**
 * Picks service `s`'s backend for a client whose key hashes to `hash`, and takes a slot on it.
 * Hot path: once per accepted connection of a maglev service (one ring load when the owner is
 * available). Returns the backend id or PICK_BACKENDS_FULL / PICK_NO_BACKEND.
 *
 * Racing a rebuild is safe: the active ring index is read once (atomic), each u16 slot read is a
 * single tear-free load, and whatever id is read is validated by `eligible` (state UP, owned by
 * `s`, right tier, weight > 0) before takeSlot. A pick that straddles two rebuilds may read a slot
 * of a ring being refilled (NO_BACKEND_U16 or a newer owner): it then walks on or lands on another
 * valid backend of the service for that one connection; it never uses an invalid one.
 */
export function maglevPick(s: u32, hash: u32): i32 {
  // The key's own step through the table (its permutation), from a second mix of its hash.
  let h = hash ^ (hash >>> 16);
  h *= 0x7feb352d;
  h ^= h >>> 15;
  return walkRing(s, hash, h, true);
}
