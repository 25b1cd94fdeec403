/**
 * The leastconn tree: a tournament tree over a leastconn service's member positions, so that a pick
 * finds the exact weighted-least-connections backend in O(log n) instead of scanning n members.
 *
 * Shape (layout.ts LT_*): a complete binary tree in heap order, L leaves (the next power of two at
 * or above the member count), node 1 the root, leaf of member position p at node L + p. A leaf
 * node holds p when the member was eligible at the last refresh (up, of this service, in the tier
 * taking connections, weight > 0), else LT_NONE; an inner node holds the winner of its two
 * children: the lower key (active + 1) / weight (an f64 per position whose order is exactly
 * `lighter`'s, see setKey), a full member (active ≥ max_connections, key +∞) losing to any other,
 * and on a tie the left one, so every node holds the leftmost minimum of its subtree. Keys come
 * from the leaf records, the tree's own copy of each member's weight, limit and count (so a state
 * or weight written by the control plane takes effect at the rebuild that follows it, as it does
 * for the rings).
 *
 * Concurrency: one lock word per service (LT_LOCK, a CAS spin lock). Every change of B_ACTIVE of a
 * leastconn service's backend happens under it (the pick's takeSlot, release and reacquire's
 * give-back, reclaim), and so does every change of the tree, so a holder sees a tree that is
 * exactly the minimum of the live keys and leaves it so: picks by any number of workers are
 * linearizable in the order they take the lock, each one the reference scan's answer for the
 * counts at that moment. The lock is held for O(log n) loads and stores (≈ 20 comparisons at
 * 1,024 members). The control plane does not take it for a weight, state or limit change: it
 * stages the member's new leaf (LT_STAGED), sets the member's bit (atomic or) and LT_DIRTY, and
 * the next lock holder (a pick or a release, in whatever worker) applies the staged leaves before
 * it looks at the tree (O(log n) per changed member). So such a change never makes a picker wait
 * for the control plane, and the tree a holder reads always includes every change staged before
 * it took the lock. Only a new member count (a reload adding or removing members) or a change of
 * algorithm rebuilds the tree under the lock (O(n)). A waiter spins, then sleeps in short timed
 * waits, so a holder descheduled by the OS costs the others a few µs, not a spin of its whole time
 * slice. A worker that dies holding the lock is handled by `reclaim` (control plane): it breaks
 * that worker's lock and rebuilds the tree.
 *
 * Cost of a pick: one CAS (lock), one cursor increment, one walk from the cursor's leaf up and
 * down the tree (≤ 2 log2 L node comparisons), one CAS (takeSlot), then the path above the chosen
 * leaf is recomputed while the chosen leaf is still its best (≤ log2 L), and one store (unlock).
 * A retry (reacquire) sets each tried member it meets aside for the moment: O(tried × log n).
 * A release: one CAS, one atomic sub, the freed member climbs while it wins (usually a level or
 * two), one store. Measured (bench/engine.bench.ts and BENCHMARKS.md): acquire + release ≈ 80–95 ns
 * at 1,024 members, against ≈ 11 µs for the scan.
 */
import {
  MAX_MEMBERS, B_ACTIVE, B_STATE, B_SERVICE, B_FLAGS, B_EFF_WEIGHT, B_MAX_CONN, B_MEMBER_POS, BACKEND_UP,
  BF_BACKUP, TREES_OFFSET, LT_SIZE, LT_LOCK, LT_LEAVES, LT_COUNT, LT_NODES, LT_LEAF_RECORDS, LT_LEAF_SIZE,
  LTL_ID, LTL_WEIGHT, LTL_MAX, LTL_ACTIVE, LT_KEYS, LT_NONE, LT_DIRTY, LT_BITS, LT_STAGED, LT_STAGED_SIZE, LT_MASKED, LT_MAX_MASKED,
  MAX_BACKENDS, S_ALGORITHM, S_CURSOR, ALG_LEASTCONN, MAX_SERVICES, PICK_BACKENDS_FULL,
} from './generated/layout';
import { serviceAt, backendAt, membersAt, memberCount, wantedTier, eligible, isTried, takeSlot } from './records';
import { scanFrom } from './leastconn';

/** This instance's lock value: its worker id + 1 (set by init), so reclaim can tell whose lock it is. */
let owner: u32 = 1;

export function setTreeOwner(workerId: u32): void {
  owner = workerId + 1;
}

/** Spins before a waiter starts sleeping in timed waits. */
const SPINS: i32 = 256;
/** One timed wait, in ns: the unlock does not notify, so a sleeper re-checks this often. */
const NAP_NS: i64 = 20_000;

@inline export function treeAt(s: u32): usize {
  return <usize>TREES_OFFSET + <usize>s * <usize>LT_SIZE;
}

@inline function nodeAt(t: usize, i: u32): usize {
  return t + <usize>LT_NODES + (<usize>i << 1);
}

@inline function node(t: usize, i: u32): u32 {
  return <u32>load<u16>(nodeAt(t, i));
}

@inline function leafAt(t: usize, pos: u32): usize {
  return t + <usize>LT_LEAF_RECORDS + <usize>pos * <usize>LT_LEAF_SIZE;
}

@inline function keyAt(t: usize, pos: u32): usize {
  return t + <usize>LT_KEYS + (<usize>pos << 3);
}

@inline function key(t: usize, pos: u32): f64 {
  return load<f64>(keyAt(t, pos));
}

/**
 * Recomputes position `pos`'s key from its leaf record: (active + 1) / weight as an f64, +∞ when
 * the member is full (active ≥ max_connections) or not eligible (weight 0). The leaf record keeps
 * the tree's own copy of B_ACTIVE, and the keys array keeps comparisons to one 8-byte load per
 * side. The f64 order is the exact order of the rationals: equal rationals divide to the same
 * correctly rounded double, and two different ones (numerators ≤ 2^31, weights ≤ 2^16) differ by at
 * least 1 / (w1 × w2), more than their rounding errors, so ties and order are `lighter`'s.
 * Under the lock; a few times per pick.
 */
function setKey(t: usize, pos: u32): void {
  const l = leafAt(t, pos);
  const w = <u32>load<u16>(l + LTL_WEIGHT);
  const active = load<i32>(l + LTL_ACTIVE);
  const limit = load<i32>(l + LTL_MAX);
  const k = w == 0 || (limit > 0 && active >= limit) ? Infinity : <f64>(max<i32>(active, 0) + 1) / <f64>w;
  store<f64>(keyAt(t, pos), k);
}

/**
 * Copies B_ACTIVE into the leaf record and its key. Every change of B_ACTIVE under the lock is
 * followed by this; a count changed outside the lock (a pick that raced an algorithm change) is
 * copied at the next change of that member or the next rebuild.
 */
@inline function syncActive(t: usize, pos: u32, b: u32): void {
  store<i32>(leafAt(t, pos) + LTL_ACTIVE, atomic.load<i32>(backendAt(b) + B_ACTIVE));
  setKey(t, pos);
}

/** The winner of positions `a` (left) and `b` (right): see the header for the order. */
@inline function better(t: usize, a: u32, b: u32): u32 {
  if (a == LT_NONE) return b;
  if (b == LT_NONE) return a;
  return key(t, b) < key(t, a) ? b : a;
}

/** Does position `v` hold a member whose key is `k` (finite: a member with room)? */
@inline function sameKey(t: usize, v: u32, k: f64): bool {
  return v != LT_NONE && key(t, v) == k;
}

// ── the lock ──────────────────────────────────────────────────────────────────────────────────

@inline function lock(t: usize): void {
  if (atomic.cmpxchg<u32>(t + LT_LOCK, 0, owner) != 0) lockSlow(t);
}

function lockSlow(t: usize): void {
  let spins: i32 = 0;
  while (true) {
    const cur = atomic.load<u32>(t + LT_LOCK);
    if (cur == 0) {
      if (atomic.cmpxchg<u32>(t + LT_LOCK, 0, owner) == 0) return;
    } else if (++spins >= SPINS) {
      atomic.wait<i32>(t + LT_LOCK, <i32>cur, NAP_NS);
      spins = 0;
    }
  }
}

/** A sequentially consistent store: everything the holder wrote is visible to the next holder. */
@inline function unlock(t: usize): void {
  atomic.store<u32>(t + LT_LOCK, 0);
}

// ── staged leaves (control plane → the next lock holder) ────────────────────────────────────────

@inline function stagedAt(t: usize, pos: u32): usize {
  return t + <usize>LT_STAGED + <usize>pos * <usize>LT_STAGED_SIZE;
}

/** Under the lock, at its start: applies the leaves the control plane staged. One load when none. */
@inline function applyStaged(t: usize): void {
  if (atomic.load<u32>(t + LT_DIRTY) != 0) applyStagedSlow(t);
}

function applyStagedSlow(t: usize): void {
  // Cleared before the bits are taken: a change staged meanwhile sets it again (its bit may then
  // be taken here already, and the next holder finds no bit: harmless).
  atomic.store<u32>(t + LT_DIRTY, 0);
  const leaves = load<u32>(t + LT_LEAVES);
  const words = (leaves + 31) >> 5;
  for (let w: u32 = 0; w < words; w++) {
    let bits = atomic.xchg<u32>(t + LT_BITS + (<usize>w << 2), 0);
    while (bits != 0) {
      const pos = (w << 5) + ctz<u32>(bits);
      bits &= bits - 1;
      if (pos >= leaves) continue;
      // The control plane wrote these before it set the bit; a torn read (it restaged this member
      // meanwhile) is followed by its bit set again, so the next holder applies the final values.
      const x = stagedAt(t, pos);
      writeLeaf(t, leaves, pos, <u32>load<u16>(x + LTL_ID), <u32>load<u16>(x + LTL_WEIGHT), load<i32>(x + LTL_MAX));
      repath(t, leaves, pos);
    }
  }
}

// ── keeping the tree exact ────────────────────────────────────────────────────────────────────

/** After position `pos`'s key grew (a slot taken): recomputes the ancestors it was the best of. */
@inline function raised(t: usize, leaves: u32, pos: u32): void {
  let i = (leaves + pos) >> 1;
  while (i >= 1 && node(t, i) == pos) {
    store<u16>(nodeAt(t, i), <u16>better(t, node(t, i << 1), node(t, (i << 1) + 1)));
    i >>= 1;
  }
}

/** After position `pos`'s key fell (a slot given back): lets it win the ancestors it now beats. */
@inline function lowered(t: usize, leaves: u32, pos: u32): void {
  if (node(t, leaves + pos) == LT_NONE) return;
  let i = (leaves + pos) >> 1;
  while (i >= 1) {
    const v = node(t, i);
    if (v != pos) {
      // Order matters for ties: the left (lower) position wins.
      const w = pos < v ? better(t, pos, v) : better(t, v, pos);
      if (w != pos) return;
      store<u16>(nodeAt(t, i), <u16>pos);
    }
    i >>= 1;
  }
}

/** Recomputes every ancestor of `pos` (its leaf changed either way). */
function repath(t: usize, leaves: u32, pos: u32): void {
  let i = (leaves + pos) >> 1;
  while (i >= 1) {
    store<u16>(nodeAt(t, i), <u16>better(t, node(t, i << 1), node(t, (i << 1) + 1)));
    i >>= 1;
  }
}

/**
 * The leftmost position ≥ p holding a member with room whose key equals the root's, or LT_NONE.
 * Walks up from leaf p through the subtrees to its right, then down the first one that holds
 * such a key (a node holds its subtree's minimum, so it does when its own best does).
 */
function firstFrom(t: usize, leaves: u32, p: u32, k: f64): u32 {
  let i = leaves + p;
  while (true) {
    if (sameKey(t, node(t, i), k)) {
      while (i < leaves) {
        i <<= 1;
        if (!sameKey(t, node(t, i), k)) i++;
      }
      return node(t, i);
    }
    while (i & 1) i >>= 1;
    if (i == 0) return LT_NONE;
    i++;
  }
}

/**
 * Picks the leastconn backend of service `s` from its tree and takes a slot on it. Returns the
 * backend id, PICK_BACKENDS_FULL or PICK_NO_BACKEND: the reference scan's answer. Hot path: once
 * per accepted connection of a leastconn service (see the header for the cost); the scan runs (under
 * the lock, with the cursor this pick drew) only when the tree's answer cannot be used.
 */
export function treePick(s: u32): i32 {
  const t = treeAt(s);
  const sa = serviceAt(s);
  lock(t);
  applyStaged(t);
  const leaves = load<u32>(t + LT_LEAVES);
  const n = load<u32>(t + LT_COUNT);
  const cursor = atomic.add<u32>(sa + S_CURSOR, 1);
  let masked: u32 = 0;
  while (leaves != 0 && n != 0) {
    const r = node(t, 1);
    if (r == LT_NONE) break;
    const kr = key(t, r);
    if (kr == Infinity) {
      // Every eligible member is full. Unless one was set aside as tried (then the scan tells
      // "full" from "nothing left" for this connection), the answer is known.
      if (masked == 0 && !isTried(<u32>load<u16>(leafAt(t, r) + LTL_ID))) {
        unlock(t);
        return PICK_BACKENDS_FULL;
      }
      break;
    }
    let c = firstFrom(t, leaves, cursor % n, kr);
    if (c == LT_NONE) c = r; // none from the cursor on: the leftmost minimum wins
    const cb = <u32>load<u16>(leafAt(t, c) + LTL_ID);
    if (isTried(cb) && masked < LT_MAX_MASKED) {
      // A retry (reacquire) must skip the members this connection already tried: set this one
      // aside (key +∞ for the moment, under the lock nobody else sees it) and ask again, so the
      // answer is the scan's over the untried ones, in O(tried × log n).
      store<u16>(t + LT_MASKED + (<usize>masked << 1), <u16>c);
      masked++;
      store<f64>(keyAt(t, c), Infinity);
      repath(t, leaves, c);
      continue;
    }
    // Validated live before the slot is taken, as in every pick; a state written since the last
    // rebuild sends us to the exact scan instead.
    if (!eligible(cb, s, wantedTier(sa)) || !takeSlot(cb)) break;
    unmask(t, leaves, masked);
    syncActive(t, c, cb);
    raised(t, leaves, c);
    unlock(t);
    return <i32>cb;
  }
  unmask(t, leaves, masked);
  // Rare: nothing eligible in the tree, everything left full or tried, a stale member, or a slot
  // taken outside the lock (an algorithm change raced). The exact scan decides, with this cursor.
  const b = scanFrom(s, cursor, 0);
  if (b >= 0) fixActive(t, <u32>b, true);
  unlock(t);
  return b;
}

/** Under the lock: gives the members treePick set aside their keys back. */
@inline function unmask(t: usize, leaves: u32, masked: u32): void {
  for (let i: u32 = 0; i < masked; i++) {
    const c = <u32>load<u16>(t + LT_MASKED + (<usize>i << 1));
    setKey(t, c);
    repath(t, leaves, c);
  }
}

/** Under the lock: after `b`'s count changed, fixes its path if it is a leaf of this tree. */
@inline function fixActive(t: usize, b: u32, up: bool): void {
  const leaves = load<u32>(t + LT_LEAVES);
  const pos = load<u32>(backendAt(b) + B_MEMBER_POS);
  if (pos >= load<u32>(t + LT_COUNT) || <u32>load<u16>(leafAt(t, pos) + LTL_ID) != b) return;
  syncActive(t, pos, b);
  if (up) raised(t, leaves, pos);
  else lowered(t, leaves, pos);
}

/** Does service `s` keep a tree (a leastconn service, refreshed at least once)? Hot path. */
@inline export function hasTree(s: u32): bool {
  return load<u32>(treeAt(s) + LT_LEAVES) != 0;
}

/**
 * Gives back one slot on backend `b` of service `s` (B_ACTIVE − 1), under the tree's lock when
 * `s` keeps one, so the tree stays exact. Hot path: once per closed connection (release) and per
 * failed connect (reacquire). With a tree: one CAS, one atomic sub, usually one or two node
 * comparisons (the path stops where the member does not win), one store.
 */
export function giveSlot(s: u32, b: u32): void {
  const a = backendAt(b);
  if (s < MAX_SERVICES && load<u32>(serviceAt(s) + S_ALGORITHM) == ALG_LEASTCONN && hasTree(s)) {
    const t = treeAt(s);
    lock(t);
    applyStaged(t);
    atomic.sub<i32>(a + B_ACTIVE, 1);
    fixActive(t, b, false);
    unlock(t);
    return;
  }
  atomic.sub<i32>(a + B_ACTIVE, 1);
}

// ── control plane ─────────────────────────────────────────────────────────────────────────────

/** The leaf record values of member `b` now: its weight when eligible in `tier`, else 0. */
@inline function leafWeight(b: u32, s: u32, tier: u32): u32 {
  if (b >= MAX_BACKENDS) return 0;
  const a = backendAt(b);
  if (atomic.load<u32>(a + B_STATE) != BACKEND_UP || load<u32>(a + B_SERVICE) != s) return 0;
  if ((load<u32>(a + B_FLAGS) & BF_BACKUP) != tier) return 0;
  return <u32>min<i32>(max<i32>(load<i32>(a + B_EFF_WEIGHT), 0), 0xffff);
}

@inline function writeStaged(t: usize, pos: u32, b: u32, w: u32, max: i32): void {
  const x = stagedAt(t, pos);
  store<u16>(x + LTL_ID, <u16>b);
  store<u16>(x + LTL_WEIGHT, <u16>w);
  store<i32>(x + LTL_MAX, max);
}

@inline function writeLeaf(t: usize, leaves: u32, pos: u32, b: u32, w: u32, max: i32): void {
  const l = leafAt(t, pos);
  store<u16>(l + LTL_ID, <u16>b);
  store<u16>(l + LTL_WEIGHT, <u16>w);
  store<i32>(l + LTL_MAX, max);
  store<i32>(l + LTL_ACTIVE, b < MAX_BACKENDS ? atomic.load<i32>(backendAt(b) + B_ACTIVE) : 0);
  setKey(t, pos);
  store<u16>(nodeAt(t, leaves + pos), <u16>(w > 0 ? pos : LT_NONE));
}

/** Rebuilds service `s`'s whole tree under its lock: O(L). A `breakOwner` ≠ 0 first frees a dead worker's lock. */
function buildAll(s: u32, n: u32, leaves: u32, breakOwner: u32): void {
  const t = treeAt(s);
  const sa = serviceAt(s);
  if (breakOwner != 0) atomic.cmpxchg<u32>(t + LT_LOCK, breakOwner, 0);
  lock(t);
  const ma = membersAt(s);
  const tier = wantedTier(sa);
  store<u32>(t + LT_LEAVES, leaves);
  store<u32>(t + LT_COUNT, n);
  // Everything staged is superseded by what is read now.
  atomic.store<u32>(t + LT_DIRTY, 0);
  for (let w: u32 = 0; w < MAX_MEMBERS / 32; w++) atomic.store<u32>(t + LT_BITS + (<usize>w << 2), 0);
  for (let pos: u32 = 0; pos < leaves; pos++) {
    let b: u32 = LT_NONE;
    let w: u32 = 0;
    let max: i32 = 0;
    if (pos < n) {
      b = <u32>load<u16>(ma + (<usize>pos << 1));
      w = leafWeight(b, s, tier);
      if (b < MAX_BACKENDS) {
        store<u32>(backendAt(b) + B_MEMBER_POS, pos);
        max = load<i32>(backendAt(b) + B_MAX_CONN);
      }
    }
    writeStaged(t, pos, b, w, max);
    writeLeaf(t, leaves, pos, b, w, max);
  }
  for (let i = leaves - 1; i >= 1; i--) {
    store<u16>(nodeAt(t, i), <u16>better(t, node(t, i << 1), node(t, (i << 1) + 1)));
  }
  unlock(t);
}

/**
 * Control plane only, from rebuild (after countUp): brings service `s`'s tree up to date with its
 * members, states, weights and limits. A leastconn service whose member count is unchanged has the
 * leaves of the members that changed staged for the next lock holder (no lock taken here: see the
 * header), so a weight or state change never holds up a picker; a new member count rebuilds the
 * whole tree under the lock (O(n), once per reload that adds or removes members). Other algorithms
 * drop their tree (LT_LEAVES 0): their picks never look at it and their releases skip the lock.
 * Cost: O(n) comparisons with the staged copies, here in the control plane.
 */
export function treeRefresh(s: u32): void {
  const t = treeAt(s);
  const sa = serviceAt(s);
  if (load<u32>(sa + S_ALGORITHM) != ALG_LEASTCONN) {
    if (load<u32>(t + LT_LEAVES) != 0) {
      lock(t);
      store<u32>(t + LT_LEAVES, 0);
      unlock(t);
    }
    return;
  }
  const n = memberCount(sa);
  let leaves: u32 = 1;
  while (leaves < n) leaves <<= 1;
  if (leaves != load<u32>(t + LT_LEAVES) || n != load<u32>(t + LT_COUNT)) {
    buildAll(s, n, leaves, 0);
    return;
  }
  const ma = membersAt(s);
  const tier = wantedTier(sa);
  let staged = false;
  for (let pos: u32 = 0; pos < n; pos++) {
    const b = <u32>load<u16>(ma + (<usize>pos << 1));
    const w = leafWeight(b, s, tier);
    const max = b < MAX_BACKENDS ? load<i32>(backendAt(b) + B_MAX_CONN) : 0;
    // The staged copy is the control plane's own (the only writer): no race in this comparison.
    const x = stagedAt(t, pos);
    if (<u32>load<u16>(x + LTL_ID) == b && <u32>load<u16>(x + LTL_WEIGHT) == w && load<i32>(x + LTL_MAX) == max) continue;
    if (b < MAX_BACKENDS) store<u32>(backendAt(b) + B_MEMBER_POS, pos);
    writeStaged(t, pos, b, w, max);
    atomic.or<u32>(t + LT_BITS + (<usize>(pos >> 5) << 2), 1 << (pos & 31));
    staged = true;
  }
  // Published after the bits: a holder that sees it finds them (or a later holder does).
  if (staged) atomic.store<u32>(t + LT_DIRTY, 1);
}

/**
 * Control plane only, from reclaim after worker `workerId` died and its slots were given back:
 * breaks the lock if that worker held it (it may have died mid-update) and rebuilds every tree
 * (the counts under them changed). Cold: once per worker death.
 */
export function treeReclaim(workerId: u32): void {
  for (let s: u32 = 0; s < MAX_SERVICES; s++) {
    const t = treeAt(s);
    const leaves = load<u32>(t + LT_LEAVES);
    if (leaves == 0) continue;
    buildAll(s, min<u32>(load<u32>(t + LT_COUNT), MAX_MEMBERS), leaves, workerId + 1);
  }
}
