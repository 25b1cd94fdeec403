/**
 * Field access, eligibility and slot admission shared by every algorithm. Nothing here allocates;
 * every function works on addresses in the one imported shared memory, computed from the
 * generated layout constants (never a hand-written offset).
 *
 * Memory-model notes, for every reader of this module:
 * - Fields written only by the control plane (state, weights, limits, members, rings) are read
 *   with plain loads, B_STATE included: a WebAssembly atomic load costs V8 an alignment and bounds
 *   check (measured: a 1,000-backend leastconn scan took 9.4 µs with atomic state loads, 4.2 µs
 *   with plain ones), and a stale read is harmless here. Aligned loads and stores of 8/16/32-bit integers are tear-free under the
 *   JavaScript/WebAssembly memory model, so a racing read sees either the old or the new value,
 *   never a mix. A pick therefore never trusts what it read: it validates the backend (state,
 *   owning service, backup tier, weight) right before taking a slot with an atomic operation.
 * - Counters shared between workers (S_ACTIVE, B_ACTIVE, S_CURSOR, S_RELEASE_SEQ) are changed
 *   with atomic read-modify-writes; a scan may read B_ACTIVE plainly as a hint, because the slot
 *   is taken by a CAS (takeSlot) that re-checks the limit.
 * - Publication points use atomic (sequentially consistent) stores: a backend's B_STATE, a
 *   service's S_ACTIVE_RING. Everything written before them is visible to a reader that sees them.
 */
import {
  SERVICES_OFFSET, SERVICE_SIZE, BACKENDS_OFFSET, BACKEND_SIZE, MEMBERS_OFFSET, MAX_MEMBERS,
  RINGS_OFFSET, RING_BYTES, SCRATCH_OFFSET, WORKER_SCRATCH_SIZE, MAX_BACKENDS, MAX_TRIED,
  B_STATE, B_SERVICE, B_FLAGS, B_EFF_WEIGHT, B_MAX_CONN, B_ACTIVE, BACKEND_UP, BF_BACKUP,
  S_PRIMARY_UP, S_MEMBER_COUNT, W_TRIED_COUNT, W_TRIED,
  TALLY_OFFSET, WORKER_TALLY_SIZE, T_SERVICE_HELD, T_BACKEND_HELD, BUILD_SCRATCH_OFFSET, BS_RECORD_SIZE,
} from './generated/layout';

/** This instance's worker scratch record (the tried list); set once by `init`. */
export let scratch: usize = SCRATCH_OFFSET;

/** This instance's worker tallies (the slots it holds now); set once by `init`. */
export let tally: usize = TALLY_OFFSET;

export function setWorker(workerId: u32): void {
  scratch = <usize>SCRATCH_OFFSET + <usize>workerId * <usize>WORKER_SCRATCH_SIZE;
  tally = tallyAt(workerId);
}

/** The build scratch record of the i-th eligible backend while a ring is built (control plane only). */
@inline export function buildRecordAt(i: u32): usize {
  return <usize>BUILD_SCRATCH_OFFSET + <usize>i * <usize>BS_RECORD_SIZE;
}

@inline export function tallyAt(workerId: u32): usize {
  return <usize>TALLY_OFFSET + <usize>workerId * <usize>WORKER_TALLY_SIZE;
}

/**
 * Counts a service slot this worker took (+1) or gave back (−1). Plain load and store: the worker
 * is the only writer while it lives, and `reclaim` reads the tally only after it died. Hot path:
 * twice per connection.
 */
@inline export function tallyService(s: u32, delta: i32): void {
  const at = tally + <usize>T_SERVICE_HELD + (<usize>s << 2);
  store<i32>(at, load<i32>(at) + delta);
}

/** Counts a backend slot this worker took (+1) or gave back (−1); see tallyService. */
@inline export function tallyBackend(b: u32, delta: i32): void {
  const at = tally + <usize>T_BACKEND_HELD + (<usize>b << 2);
  store<i32>(at, load<i32>(at) + delta);
}

@inline export function serviceAt(s: u32): usize {
  return <usize>SERVICES_OFFSET + <usize>s * <usize>SERVICE_SIZE;
}

@inline export function backendAt(b: u32): usize {
  return <usize>BACKENDS_OFFSET + <usize>b * <usize>BACKEND_SIZE;
}

@inline export function membersAt(s: u32): usize {
  return <usize>MEMBERS_OFFSET + <usize>s * <usize>(MAX_MEMBERS * 2);
}

@inline export function ringAt(s: u32, ring: u32): usize {
  return <usize>RINGS_OFFSET + <usize>(s * 2 + ring) * <usize>RING_BYTES;
}

/** Member count, clamped so a torn or bogus value can never index past the member list. */
@inline export function memberCount(sa: usize): u32 {
  return min<u32>(load<u32>(sa + S_MEMBER_COUNT), MAX_MEMBERS);
}

/**
 * Which tier takes new connections: primaries (0) while any is up, else backups (BF_BACKUP).
 * Read once per pick; rebuild refreshes S_PRIMARY_UP whenever a state or weight changes.
 */
@inline export function wantedTier(sa: usize): u32 {
  return load<u32>(sa + S_PRIMARY_UP) != 0 ? 0 : BF_BACKUP;
}

// ── tried list (this worker's, for the connection being placed) ─────────────────────────────

/** Hot path: acquire clears the list, once per accepted connection. */
@inline export function clearTried(): void {
  store<u32>(scratch + W_TRIED_COUNT, 0);
}

/** Once per retry (reacquire): the first `n` entries the caller wrote into W_TRIED are the list. */
@inline export function keepTried(n: u32): void {
  store<u32>(scratch + W_TRIED_COUNT, min<u32>(n, MAX_TRIED));
}

/** Remembers `b` as already tried (ignored once MAX_TRIED are held: the list stays bounded). */
export function addTried(b: u32): void {
  const n = load<u32>(scratch + W_TRIED_COUNT);
  if (n >= MAX_TRIED) return;
  store<u16>(scratch + W_TRIED + (<usize>n << 1), <u16>b);
  store<u32>(scratch + W_TRIED_COUNT, n + 1);
}

/** Hot path: checked for each candidate. The list is at most MAX_TRIED (16) long, usually empty. */
@inline export function isTried(b: u32): bool {
  const n = min<u32>(load<u32>(scratch + W_TRIED_COUNT), MAX_TRIED);
  for (let i: u32 = 0; i < n; i++) {
    if (<u32>load<u16>(scratch + W_TRIED + (<usize>i << 1)) == b) return true;
  }
  return false;
}

// ── eligibility and admission ───────────────────────────────────────────────────────────────

/**
 * Could backend `b` take a new connection of service `s` in tier `tier`, leaving its
 * max_connections aside? Hot path: called for every candidate a pick looks at. Validating the
 * owning service here is what makes a racing rebuild or a freed-and-reused slot harmless.
 */
@inline export function eligible(b: u32, s: u32, tier: u32): bool {
  if (b >= MAX_BACKENDS) return false; // NO_BACKEND_U16 in a ring being rebuilt, or garbage
  const a = backendAt(b);
  if (load<u32>(a + B_STATE) != BACKEND_UP) return false;
  if (load<u32>(a + B_SERVICE) != s) return false;
  if ((load<u32>(a + B_FLAGS) & BF_BACKUP) != tier) return false;
  if (load<i32>(a + B_EFF_WEIGHT) <= 0) return false;
  return !isTried(b);
}

/** Is `b` below its max_connections right now (0 = unlimited)? A hint: takeSlot decides. */
@inline export function hasRoom(b: u32): bool {
  const a = backendAt(b);
  const max = load<i32>(a + B_MAX_CONN);
  return max <= 0 || load<i32>(a + B_ACTIVE) < max;
}

/**
 * Takes one connection slot on `b` (B_ACTIVE + 1) unless that would exceed its max_connections.
 * Hot path: once per successful pick.
 */
@inline export function takeSlot(b: u32): bool {
  return takeSlotBelow(b, 0);
}

/**
 * takeSlot with a second limit: with `cap` > 0 the slot is taken only while B_ACTIVE < cap too
 * (Maglev's bounded load). With a limit it is a CAS loop, so concurrent workers can never push
 * B_ACTIVE to or past it; each failed CAS means another worker made progress.
 */
export function takeSlotBelow(b: u32, cap: i32): bool {
  const a = backendAt(b);
  let max = load<i32>(a + B_MAX_CONN);
  if (cap > 0 && (max <= 0 || cap < max)) max = cap;
  if (max <= 0) {
    atomic.add<i32>(a + B_ACTIVE, 1);
    return true;
  }
  let cur = atomic.load<i32>(a + B_ACTIVE);
  while (cur < max) {
    const seen = atomic.cmpxchg<i32>(a + B_ACTIVE, cur, cur + 1);
    if (seen == cur) return true;
    cur = seen;
  }
  return false;
}

/**
 * Is (activeA + 1) / weightA strictly lower than (activeB + 1) / weightB? This is HAProxy's
 * leastconn key (active + 1) × SCALE / weight compared exactly: cross-multiplied in 64 bits
 * instead of divided, so there is no rounding and no division on the hot path.
 */
@inline export function lighter(activeA: i32, weightA: i32, activeB: i32, weightB: i32): bool {
  // max(…, 0): a count can never be negative unless a caller released twice; stay sane anyway.
  return <u64>(max<i32>(activeA, 0) + 1) * <u64>weightB < <u64>(max<i32>(activeB, 0) + 1) * <u64>weightA;
}
