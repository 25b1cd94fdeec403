/**
 * The selection engine: admission and backend selection over the shared memory described by
 * src/shm/layout.ts. Every worker thread instantiates this module over the same imported memory;
 * the control plane (main thread) has its own instance for `rebuild`. Compiled with the stub
 * runtime: no allocator, no GC, no static data: only loads, stores and atomics on the layout.
 *
 * Exports (the fixed contract, see src/balancer/engine.ts): init, acquire, reacquire, release,
 * rebuild, plus each algorithm's entries for tests and benchmarks.
 */
import {
  MAGIC, LAYOUT_VERSION, LAYOUT_BASE, MAX_SERVICES, MAX_BACKENDS, MAX_WORKERS, HEADER_OFFSET, H_MAGIC, H_VERSION,
  H_GENERATION, S_STATE, S_ALGORITHM, S_MAX_CONN, S_ACTIVE, S_ACTIVE_RING, S_RING_LEN, S_RELEASE_SEQ, S_QUEUED, SERVICE_ACTIVE,
  ALG_MAGLEV, ALG_LEASTCONN, ALG_ROUNDROBIN, ALG_RANDOM, B_ACTIVE, B_MAX_CONN, PICK_SERVICE_FULL, PICK_BAD_SERVICE,
  INIT_OK, INIT_BAD_MAGIC, INIT_BAD_VERSION, INIT_BAD_WORKER, INIT_HEAP_OVERLAP,
  T_SERVICE_HELD, T_SERVICE_QUEUED, T_BACKEND_HELD,
} from './generated/layout';
import { serviceAt, backendAt, setWorker, clearTried, keepTried, addTried, tallyAt, tallyService, tallyBackend } from './records';
import { maglevBuild, maglevPick } from './maglev';
import { leastconnPick } from './leastconn';
import { scheduleBuild, roundrobinPick } from './roundrobin';
import { randomPick, seedRandom } from './random';
import { countUp } from './tier';
import { setTreeOwner, giveSlot, treeRefresh, treeReclaim } from './tree';

export { maglevBuild, maglevPick } from './maglev';
export { leastconnPick } from './leastconn';
export { scheduleBuild, roundrobinPick } from './roundrobin';
export { randomPick, seedRandom } from './random';

/**
 * Checks that this module and the memory agree (magic, layout version), that `workerId` has a
 * scratch record, and that this module's own static data ends below the layout. Called once per
 * instance by instantiateEngine. Returns INIT_OK or the INIT_* code of the first problem.
 */
export function init(workerId: u32): u32 {
  if (atomic.load<u32>(HEADER_OFFSET + H_MAGIC) != MAGIC) return INIT_BAD_MAGIC;
  if (load<u32>(HEADER_OFFSET + H_VERSION) != LAYOUT_VERSION) return INIT_BAD_VERSION;
  if (workerId >= MAX_WORKERS) return INIT_BAD_WORKER;
  if (<usize>__heap_base > <usize>LAYOUT_BASE) return INIT_HEAP_OVERLAP;
  setWorker(workerId);
  setTreeOwner(workerId);
  clearTried();
  // Distinct per worker; the JavaScript side reseeds with real entropy through seedRandom.
  seedRandom((workerId + 1) * 0x9e3779b1 ^ atomic.load<u32>(HEADER_OFFSET + H_GENERATION));
  return INIT_OK;
}

/** Dispatches to the service's algorithm. Hot path: once per pick. */
@inline function pick(s: u32, hash: u32): i32 {
  const alg = load<u32>(serviceAt(s) + S_ALGORITHM);
  if (alg == ALG_LEASTCONN) return leastconnPick(s);
  if (alg == ALG_MAGLEV) return maglevPick(s, hash);
  if (alg == ALG_ROUNDROBIN) return roundrobinPick(s);
  if (alg == ALG_RANDOM) return randomPick(s);
  return leastconnPick(s);
}

/**
 * Tells queued connections (any worker) that a slot came free: bumps the service's release
 * sequence and wakes every agent waiting on it. Both are skipped while S_QUEUED is 0 (the common
 * case: one load instead of a contended add and a call into the host). That is safe because a
 * waiter increments S_QUEUED before it reads S_RELEASE_SEQ, tries to acquire, and waits on the
 * value read, and our caller gave the slot back before this load: with sequentially consistent
 * atomics, either this load sees the waiter's increment (and we bump and notify), or the waiter's
 * acquire comes after our release (and succeeds without waiting).
 */
@inline function signalRelease(sa: usize): void {
  if (atomic.load<i32>(sa + S_QUEUED) == 0) return;
  atomic.add<i32>(sa + S_RELEASE_SEQ, 1);
  atomic.notify(sa + S_RELEASE_SEQ, i32.MAX_VALUE);
}

/**
 * Admits one new connection to service `s` and picks its backend. Hot path: once per accepted
 * connection, in the worker that accepted it. Returns the backend id (a slot taken on it and on the
 * service), or PICK_SERVICE_FULL (queue), PICK_BACKENDS_FULL (queue), PICK_NO_BACKEND (close),
 * PICK_BAD_SERVICE (close). On a negative result no slot is held.
 */
export function acquire(s: u32, hash: u32): i32 {
  if (s >= MAX_SERVICES) return PICK_BAD_SERVICE;
  const sa = serviceAt(s);
  if (atomic.load<u32>(sa + S_STATE) != SERVICE_ACTIVE) return PICK_BAD_SERVICE;
  clearTried();
  // Service admission: a CAS loop so that workers together never exceed max_connections.
  const max = load<i32>(sa + S_MAX_CONN);
  if (max > 0) {
    let cur = atomic.load<i32>(sa + S_ACTIVE);
    while (true) {
      if (cur >= max) return PICK_SERVICE_FULL;
      const seen = atomic.cmpxchg<i32>(sa + S_ACTIVE, cur, cur + 1);
      if (seen == cur) break;
      cur = seen;
    }
  } else {
    atomic.add<i32>(sa + S_ACTIVE, 1);
  }
  const b = pick(s, hash);
  if (b < 0) {
    const before = atomic.sub<i32>(sa + S_ACTIVE, 1);
    // While we held it, that slot may have been the last: someone may have queued on it.
    if (max > 0 && before >= max) signalRelease(sa);
  } else {
    tallyService(s, 1);
    tallyBackend(<u32>b, 1);
  }
  return b;
}

/**
 * After a failed connect to `failed`: gives back its slot and picks another backend of `s` that
 * this connection has not tried. The connection's own tried list is the caller's: it writes the
 * backends that failed before into this worker's scratch (W_TRIED, see src/balancer/engine.ts
 * `triedList`) and passes how many (`tried`; MAX_TRIED at most count); `failed` is added to them.
 * Other connections' acquires overwrite the scratch meanwhile, so it is never trusted across
 * calls. Hot path: once per retry (`retries`). The service slot stays held whatever the result;
 * on a negative result the caller calls release(s, -1).
 */
export function reacquire(s: u32, hash: u32, failed: u32, tried: u32): i32 {
  keepTried(tried);
  if (failed < MAX_BACKENDS) {
    const a = backendAt(failed);
    giveSlot(s, failed);
    tallyBackend(failed, -1);
    addTried(failed);
    // Its slot may unblock a connection queued because every backend was full.
    if (s < MAX_SERVICES && load<i32>(a + B_MAX_CONN) > 0) signalRelease(serviceAt(s));
  }
  if (s >= MAX_SERVICES) return PICK_BAD_SERVICE;
  if (atomic.load<u32>(serviceAt(s) + S_STATE) != SERVICE_ACTIVE) return PICK_BAD_SERVICE;
  const b = pick(s, hash);
  if (b >= 0) tallyBackend(<u32>b, 1);
  return b;
}

/**
 * Ends a session: gives back the backend slot (when `backend` ≥ 0) and the service slot, and, when
 * connections are queued, bumps S_RELEASE_SEQ and notifies it so they retry (any worker). Hot path:
 * once per closed connection. Works on a service already removed by a reload (its counters still drain).
 */
export function release(s: u32, backend: i32): void {
  if (backend >= 0 && <u32>backend < MAX_BACKENDS) {
    giveSlot(s, <u32>backend);
    tallyBackend(<u32>backend, -1);
  }
  if (s >= MAX_SERVICES) return;
  const sa = serviceAt(s);
  atomic.sub<i32>(sa + S_ACTIVE, 1);
  tallyService(s, -1);
  signalRelease(sa);
}

/**
 * Control plane only, once a worker thread has died (its sockets died with it): gives back every
 * service, queue and backend slot that worker still held, from its tallies, and zeroes them, so
 * the restarted worker (same id) starts clean and limits and least-connections counts stay true.
 * Returns how many slots were given back. Cold: once per worker death.
 */
export function reclaim(workerId: u32): u32 {
  if (workerId >= MAX_WORKERS) return 0;
  const t = tallyAt(workerId);
  let total: u32 = 0;
  for (let b: u32 = 0; b < MAX_BACKENDS; b++) {
    const at = t + <usize>T_BACKEND_HELD + (<usize>b << 2);
    const n = load<i32>(at);
    if (n == 0) continue;
    atomic.sub<i32>(backendAt(b) + B_ACTIVE, n);
    store<i32>(at, 0);
    total += <u32>abs<i32>(n);
  }
  for (let s: u32 = 0; s < MAX_SERVICES; s++) {
    const held = t + <usize>T_SERVICE_HELD + (<usize>s << 2);
    const queued = t + <usize>T_SERVICE_QUEUED + (<usize>s << 2);
    const h = load<i32>(held);
    const q = load<i32>(queued);
    if (h == 0 && q == 0) continue;
    const sa = serviceAt(s);
    if (h != 0) atomic.sub<i32>(sa + S_ACTIVE, h);
    if (q != 0) atomic.sub<i32>(sa + S_QUEUED, q);
    store<i32>(held, 0);
    store<i32>(queued, 0);
    total += <u32>(abs<i32>(h) + abs<i32>(q));
    // Freed slots may serve connections queued in the other workers.
    signalRelease(sa);
  }
  // The counts under the leastconn trees changed (and the dead worker may have held a tree's lock).
  treeReclaim(workerId);
  return total;
}

/**
 * Control plane only, after any change to service `s`'s members, states or weights: recounts the
 * up tiers, builds the algorithm's ring into the inactive ring, then publishes it by flipping
 * S_ACTIVE_RING with one atomic store (pickers read the index once per pick, see maglevPick for the
 * race argument) and bumps the header generation; a leastconn service's tree is brought up to date
 * instead (tree.ts treeRefresh: O(log n) per changed member). Cost: a Maglev build, O(M log M), or a schedule.
 */
export function rebuild(s: u32): void {
  if (s >= MAX_SERVICES) return;
  const sa = serviceAt(s);
  countUp(s);
  treeRefresh(s);
  const next = (atomic.load<u32>(sa + S_ACTIVE_RING) & 1) ^ 1;
  const alg = load<u32>(sa + S_ALGORITHM);
  let len: u32 = 0;
  if (alg == ALG_MAGLEV) len = maglevBuild(s, next);
  else if (alg == ALG_ROUNDROBIN || alg == ALG_RANDOM) len = scheduleBuild(s, next);
  atomic.store<u32>(sa + S_RING_LEN + (next << 2), len);
  atomic.store<u32>(sa + S_ACTIVE_RING, next);
  atomic.add<u32>(HEADER_OFFSET + H_GENERATION, 1);
}
