/**
 * The shared-memory contract between the control plane, the data-plane workers and the
 * WebAssembly engine. This file is the single source of truth: `build/gen-layout.ts`
 * generates `assembly/generated/layout.ts` from the constants exported here, and
 * `checkHeader()` verifies the magic and version when any party attaches to the memory.
 *
 * One fixed-size shared `WebAssembly.Memory` (initial = maximum, it never grows, so no
 * party ever holds a stale buffer). All multi-byte fields are little-endian and aligned to
 * their size; every region starts on a 64-byte boundary (a cache line) so that records
 * written by different threads do not share a line.
 *
 * ```
 *  0 ───────────────────────────────────────────────────────────────────────────────
 *    AssemblyScript's own static data (page 0, never touched by the layout)
 *  LAYOUT_BASE = 65536
 *    ┌──────────── header (64 B) ───────────────────────────────────────────────┐
 *    │ 0 magic u32 │ 4 version u32 │ 8 generation u32* │ 12..63 reserved              │
 *    ├──────────── services: MAX_SERVICES × 64 B ────────────────────────────────┤
 *    │ 0 state │ 4 algorithm │ 8 maxConn i32 │ 12 active i32* │ 16 activeRing u32* │
 *    │ 20 ringLen[0] │ 24 ringLen[1] │ 28 memberCount │ 32 cursor u32* │ 36 queued i32* │
 *    │ 40 queueMax │ 44 releaseSeq i32* │ 48 primaryUp │ 52 backupUp │ 56 tableSize u32 │
 *    │ 60 balanceFactor u32 (maglev bounded load, percent; 0 = off)                 │
 *    ├──────────── backends: MAX_BACKENDS × 64 B (one global pool) ──────────────┤
 *    │ 0 state u32 │ 4 flags u32 │ 8 weight i32 │ 12 effWeight i32 │ 16 maxConn i32 │
 *    │ 20 active i32* │ 24 hashOffset u32 │ 28 hashSkip u32 │ 32 service u32 │
 *    │ 36 memberPos u32 (its leaf in the leastconn tree) │ 40..63 reserved            │
 *    ├──────────── members: MAX_SERVICES × MAX_MEMBERS × u16 ────────────────────┤
 *    │ backend ids of a service, sorted by "address:port" (the Maglev build order) │
 *    ├──────────── worker scratch: MAX_WORKERS × 64 B ──────────────────────────┤
 *    │ 0 triedCount u32 │ 4..35 tried u16[16] (backends already tried by this conn) │
 *    ├──────────── worker tallies: MAX_WORKERS × 16,896 B ───────────────────────┤
 *    │ 0 held i32[MAX_SERVICES] │ 256 queued i32[MAX_SERVICES] │ 512 held i32[MAX_BACKENDS] │
 *    │ slots this worker holds now (one writer: its worker); on a worker's death the    │
 *    │ control plane subtracts them from S_ACTIVE / S_QUEUED / B_ACTIVE (`reclaim`)     │
 *    ├──────────── service counters: MAX_WORKERS × MAX_SERVICES × 24 × f64 ──────┤
 *    ├──────────── backend counters: MAX_WORKERS × MAX_BACKENDS × 16 × f64 ──────┤
 *    │ one writer per slot (its worker, plain stores); the control plane sums     │
 *    ├──────────── build scratch: MAX_MEMBERS × 16 B (control plane only) ────────┤
 *    │ one record per eligible backend while a ring is built (tier.ts fills it):  │
 *    │ 0 u32 (maglev: next slot; schedule: current i32) │ 4 u32 (maglev: skip;     │
 *    │ schedule: scaled weight) │ 8 id u16 │ 10 effWeight u16 │ 12 maglev credit u32 │
 *    ├──────────── rings: MAX_SERVICES × 2 × RING_CAPACITY × u16 ─────────────────┤
 *    │ ring A / ring B per service: the Maglev lookup table or the weighted       │
 *    │ round-robin schedule; picks read the ring named by `activeRing`            │
 *    ├──────────── leastconn trees: MAX_SERVICES × 37,056 B (assembly/tree.ts) ──┤
 *    │ 0 lock u32* (0 or holder's worker id + 1) │ 4 leaves u32 (a power of two, 0 = │
 *    │ no tree) │ 8 count u32 │ 12 dirty u32* │ 16 masked u16[16] (the holder's)  │
 *    │ 64 staged bits u32[32]*                                                     │
 *    │ 192 nodes u16[2 × MAX_MEMBERS] (node i: the best member position of its     │
 *    │ subtree) │ 4288 keys f64[MAX_MEMBERS] ((active + 1) / weight, +∞ when full) │
 *    │ 12480 leaf records MAX_MEMBERS × 16 B: 0 backend id u16 │ 2 effWeight u16  │
 *    │ (0 = not eligible) │ 4 maxConn i32 │ 8 active i32 (the tree's copy of        │
 *    │ B_ACTIVE) │ 28864 staged leaves MAX_MEMBERS × 8 B (id, weight, max: written │
 *    │ by the control plane, applied by the next lock holder)                      │
 *    │ (*) atomics; nodes and leaf records are written only by the lock's holder   │
 *    └──────────────────────────────────────────────────────────────────────────┘
 *  (*) written by the data plane with atomics; every other field has one writer:
 *      the control plane.
 * ```
 */

import { FulcrumError } from '../errors.ts';

/** "FULC" read as a little-endian u32. */
export const MAGIC = 0x434c5546;
/**
 * Bump on any change to this file's offsets or meanings. 5: the header keeps magic, version and
 * generation only (flags, workers and the capacities were written and never read), and the
 * backend record drops connectFailStreak and incarnation (never read). 6: the leastconn trees
 * (one per service, after the rings), S_BALANCE_FACTOR and B_MEMBER_POS. 7: the UDP counters (service
 * counters 18–23), SC_QUEUED_NO_BACKEND (24; SERVICE_COUNTERS 24 → 32, 25–31 reserved), and a
 * rebuild bumps S_RELEASE_SEQ (and notifies it) while connections are queued, so connections
 * waiting for a backend (queue.when_down) see one come up. 8: BACKEND_COUNTERS 8 → 16, the UDP
 * counters per backend (BC_DGRAMS_IN/OUT, BC_DROP_OVERSIZED/UNREACHABLE; 11–15 reserved).
 */
export const LAYOUT_VERSION = 8;

export const PAGE = 65536;
export const LAYOUT_BASE = PAGE;

export const MAX_SERVICES = 64;
export const MAX_BACKENDS = 4096;
export const MAX_MEMBERS = 1024;
export const MAX_WORKERS = 16;
/** Largest Maglev table (a prime) or round-robin schedule, in u16 slots. */
export const RING_CAPACITY = 65537;
/** Up to this many backends are remembered per connection as already tried. */
export const MAX_TRIED = 16;
/** Effective weights are the configured weight × WEIGHT_SCALE, so slow start can ramp smoothly. */
export const WEIGHT_SCALE = 16;
/** Configured weights are 0..MAX_WEIGHT. */
export const MAX_WEIGHT = 256;
/** Marks an empty ring slot while a table is built, and "no backend" in u16 lists. */
export const NO_BACKEND_U16 = 0xffff;

// ── header ────────────────────────────────────────────────────────────────────
export const HEADER_SIZE = 64;
export const H_MAGIC = 0;
export const H_VERSION = 4;
/** Bumped by every rebuild (any service): a connection waiting for a backend picks again only once it moved. */
export const H_GENERATION = 8;

// ── service record ───────────────────────────────────────────────────────────
export const SERVICE_SIZE = 64;
export const S_STATE = 0;
export const S_ALGORITHM = 4;
export const S_MAX_CONN = 8;
export const S_ACTIVE = 12;
export const S_ACTIVE_RING = 16;
export const S_RING_LEN = 20; // two u32: ring 0 at +20, ring 1 at +24
export const S_MEMBER_COUNT = 28;
export const S_CURSOR = 32;
export const S_QUEUED = 36;
export const S_QUEUE_MAX = 40;
/**
 * Bumped and notified (Atomics.notify) while S_QUEUED > 0, whenever a queued connection may now
 * get a backend: a slot was given back (release, reacquire, reclaim) or the eligible set changed
 * (rebuild). Queued connections wait on it (src/proxy/core.ts pumpQueue).
 */
export const S_RELEASE_SEQ = 44;
export const S_PRIMARY_UP = 48;
export const S_BACKUP_UP = 52;
/**
 * Maglev table size M (a prime 7..RING_CAPACITY) the next rebuild uses; written by the control
 * plane from `table_size`. The built ring's length is in S_RING_LEN[ring]. (Added in version 2.)
 */
export const S_TABLE_SIZE = 56;
/**
 * Maglev's bounded load (`hash_balance_factor`, percent; 0 = off): a backend takes a new connection
 * only while its active count < ceil(factor × (service active + 1) / eligible backends). (Version 6.)
 */
export const S_BALANCE_FACTOR = 60;

/** Service states. */
export const SERVICE_FREE = 0;
export const SERVICE_ACTIVE = 1;

/** Algorithms: the value stored in S_ALGORITHM. */
export const ALG_MAGLEV = 0;
export const ALG_LEASTCONN = 1;
export const ALG_ROUNDROBIN = 2;
export const ALG_RANDOM = 3;
export const ALGORITHMS = { maglev: ALG_MAGLEV, leastconn: ALG_LEASTCONN, roundrobin: ALG_ROUNDROBIN, random: ALG_RANDOM } as const;
export type AlgorithmName = keyof typeof ALGORITHMS;

// ── backend record ───────────────────────────────────────────────────────────
export const BACKEND_SIZE = 64;
export const B_STATE = 0;
export const B_FLAGS = 4;
export const B_WEIGHT = 8;
export const B_EFF_WEIGHT = 12;
export const B_MAX_CONN = 16;
export const B_ACTIVE = 20;
export const B_HASH_OFFSET = 24;
export const B_HASH_SKIP = 28;
export const B_SERVICE = 32;
/** u32: the backend's member position, its leaf in the service's leastconn tree (written by the engine's rebuild). */
export const B_MEMBER_POS = 36;

/** Backend states. Only UP receives new connections; DRAIN and MAINT keep open ones. */
export const BACKEND_FREE = 0;
export const BACKEND_UP = 1;
export const BACKEND_DOWN = 2;
export const BACKEND_DRAIN = 3;
export const BACKEND_MAINT = 4;
export const BACKEND_STATES = ['free', 'up', 'down', 'drain', 'maint'] as const;
export type BackendStateName = (typeof BACKEND_STATES)[number];

/** Backend flag bits. */
export const BF_BACKUP = 1;

// ── worker scratch ───────────────────────────────────────────────────────────
export const WORKER_SCRATCH_SIZE = 64;
export const W_TRIED_COUNT = 0;
export const W_TRIED = 4;

// ── build scratch (control plane only: a ring build's working set, one record per backend) ──
export const BS_RECORD_SIZE = 16;
/** u16: the backend id (collectTier). */
export const BS_ID = 8;
/** u16: its effective weight (collectTier; ≤ MAX_WEIGHT × WEIGHT_SCALE = 4096). */
export const BS_WEIGHT = 10;
/** Maglev's build: u32 next slot of the backend's permutation, u32 its skip, u32 its turn credit. */
export const BS_MAGLEV_POS = 0;
export const BS_MAGLEV_SKIP = 4;
export const BS_MAGLEV_CREDIT = 12;
/** The smooth round-robin schedule's build: i32 current value, u32 weight scaled by the gcd. */
export const BS_RR_CURRENT = 0;
export const BS_RR_SCALED = 4;

// ── leastconn trees (assembly/tree.ts; one per service, guarded by its lock word) ──
export const LT_LOCK = 0;
export const LT_LEAVES = 4;
export const LT_COUNT = 8;
/** u32: 1 when the control plane staged leaf changes that no lock holder has applied yet. */
export const LT_DIRTY = 12;
/** u16[LT_MAX_MASKED]: the lock holder's scratch, the positions a retry's pick set aside as tried. */
export const LT_MASKED = 16;
export const LT_MAX_MASKED = MAX_TRIED;
/** u32[MAX_MEMBERS / 32]: one bit per member position whose staged leaf awaits the next lock holder. */
export const LT_BITS = 64;
export const LT_NODES = LT_BITS + MAX_MEMBERS / 8;
/** f64[MAX_MEMBERS]: each member position's key (active + 1) / weight, +Infinity when full or not eligible. */
export const LT_KEYS = LT_NODES + MAX_MEMBERS * 2 * 2;
export const LT_LEAF_RECORDS = LT_KEYS + MAX_MEMBERS * 8;
export const LT_LEAF_SIZE = 16;
export const LTL_ID = 0;
export const LTL_WEIGHT = 2;
export const LTL_MAX = 4;
/** i32: the tree's copy of B_ACTIVE, written under the lock from the atomic operation's result. */
export const LTL_ACTIVE = 8;
/** The staged leaves (control plane → next lock holder): MAX_MEMBERS × 8 B, id u16, weight u16, max i32 at the LTL_ offsets. */
export const LT_STAGED = LT_LEAF_RECORDS + MAX_MEMBERS * LT_LEAF_SIZE;
export const LT_STAGED_SIZE = 8;
export const LT_SIZE = LT_STAGED + MAX_MEMBERS * LT_STAGED_SIZE;
/** Marks "no eligible member in this subtree" in a tree node. */
export const LT_NONE = 0xffff;

// ── worker tallies (i32, one writer: the worker; read back by `reclaim` after it died) ──
export const WORKER_TALLY_SIZE = MAX_SERVICES * 4 * 2 + MAX_BACKENDS * 4;
export const T_SERVICE_HELD = 0;
export const T_SERVICE_QUEUED = MAX_SERVICES * 4;
export const T_BACKEND_HELD = MAX_SERVICES * 4 * 2;

// ── counters (f64, one writer per worker slot) ──────────────────────────────
export const SERVICE_COUNTERS = 32;
export const SC_ACCEPTED = 0; // connections accepted by the listener
export const SC_QUEUED = 1; // connections that had to wait in the queue
export const SC_QUEUE_TIMEOUTS = 2;
export const SC_RETRIES = 3; // connect attempts redispatched to another backend
export const SC_BYTES_IN = 4; // client → backend
export const SC_BYTES_OUT = 5; // backend → client
export const SC_CONNECT_TIME_MS = 6; // summed, for averages
export const SC_QUEUE_TIME_MS = 7; // summed
export const SC_TERM_BASE = 8; // 10 termination reasons follow, indexed by TERM_*
// UDP services (transport-udp.ts): datagrams forwarded each way, and datagrams dropped by reason.
// A flow is counted as a connection is: SC_ACCEPTED when created, its end under SC_TERM_BASE.
export const SC_DGRAMS_IN = 18; // client → backend
export const SC_DGRAMS_OUT = 19; // backend → client
export const SC_DROP_NO_BACKEND = 20; // a new flow found no backend up
export const SC_DROP_LIMIT = 21; // a new flow found max_connections reached (service or backends)
export const SC_DROP_OVERSIZED = 22; // longer than udp.max_datagram, either way
export const SC_DROP_UNREACHABLE = 23; // answered by ICMP port unreachable (the flow's socket saw ECONNREFUSED)
/** The drop counters in order, with the names metrics and the API give them. */
export const UDP_DROP_REASONS = ['no_backend', 'limit', 'oversized', 'unreachable'] as const;
export const SC_DROP_BASE = SC_DROP_NO_BACKEND;
export const SC_QUEUED_NO_BACKEND = 24; // of SC_QUEUED: waited because no backend was eligible (queue.when_down); 25..31 reserved

/** Termination reasons, in the order of their counters. */
export const TERM_REASONS = [
  'client_closed',
  'server_closed',
  'idle_timeout',
  'connect_failed',
  'no_backend',
  'queue_timeout',
  'shutdown',
  'backend_down',
  'queue_full',
  'bad_proxy_header',
] as const;
export type TerminationReason = (typeof TERM_REASONS)[number];
export const TERM_CLIENT_CLOSED = 0;
export const TERM_SERVER_CLOSED = 1;
export const TERM_IDLE_TIMEOUT = 2;
export const TERM_CONNECT_FAILED = 3;
export const TERM_NO_BACKEND = 4;
export const TERM_QUEUE_TIMEOUT = 5;
export const TERM_SHUTDOWN = 6;
export const TERM_BACKEND_DOWN = 7;
export const TERM_QUEUE_FULL = 8;
export const TERM_BAD_PROXY_HEADER = 9;

export const BACKEND_COUNTERS = 16;
export const BC_CONNECTIONS = 0; // sessions established to this backend
export const BC_CONNECT_FAILURES = 1;
export const BC_BYTES_IN = 2; // client → backend
export const BC_BYTES_OUT = 3; // backend → client
export const BC_RETRIES = 4; // attempts that failed here and were redispatched
export const BC_KILLED = 5; // sessions closed because the backend was marked down
export const BC_CONNECT_TIME_MS = 6;
// UDP flows to this backend (a flow is counted as a session: BC_CONNECTIONS when created, its bytes
// in BC_BYTES_IN/OUT): the service's datagram counters and the drops a backend causes, per backend.
export const BC_DGRAMS_IN = 7; // client → backend
export const BC_DGRAMS_OUT = 8; // backend → client
export const BC_DROP_OVERSIZED = 9; // a reply longer than udp.max_datagram
export const BC_DROP_UNREACHABLE = 10; // a datagram answered by ICMP port unreachable
/** The per-backend drop counters in order (BC_DROP_BASE + i), with the names metrics and the API give them. */
export const UDP_BACKEND_DROP_REASONS = ['oversized', 'unreachable'] as const;
export const BC_DROP_BASE = BC_DROP_OVERSIZED; // 11..15 reserved

// ── engine return codes (negative results of acquire/reacquire) ─────────────
export const PICK_SERVICE_FULL = -1; // service max_connections reached: queue
export const PICK_NO_BACKEND = -2; // nothing up (nor any backup): close at once
export const PICK_BACKENDS_FULL = -3; // backends up but all at max_connections: queue
export const PICK_BAD_SERVICE = -4; // no such service (reload raced the connection)

// ── engine ↔ layout check codes (result of the engine's `init`) ─────────────
export const INIT_OK = 0;
export const INIT_BAD_MAGIC = 1;
export const INIT_BAD_VERSION = 2;
export const INIT_BAD_WORKER = 3;
export const INIT_HEAP_OVERLAP = 4;

// ── regions ──────────────────────────────────────────────────────────────────
const align64 = (n: number): number => Math.ceil(n / 64) * 64;

export const HEADER_OFFSET = LAYOUT_BASE;
export const SERVICES_OFFSET = align64(HEADER_OFFSET + HEADER_SIZE);
export const BACKENDS_OFFSET = align64(SERVICES_OFFSET + MAX_SERVICES * SERVICE_SIZE);
export const MEMBERS_OFFSET = align64(BACKENDS_OFFSET + MAX_BACKENDS * BACKEND_SIZE);
export const SCRATCH_OFFSET = align64(MEMBERS_OFFSET + MAX_SERVICES * MAX_MEMBERS * 2);
export const TALLY_OFFSET = align64(SCRATCH_OFFSET + MAX_WORKERS * WORKER_SCRATCH_SIZE);
export const SERVICE_COUNTERS_OFFSET = align64(TALLY_OFFSET + MAX_WORKERS * WORKER_TALLY_SIZE);
export const BACKEND_COUNTERS_OFFSET = align64(SERVICE_COUNTERS_OFFSET + MAX_WORKERS * MAX_SERVICES * SERVICE_COUNTERS * 8);
export const BUILD_SCRATCH_OFFSET = align64(BACKEND_COUNTERS_OFFSET + MAX_WORKERS * MAX_BACKENDS * BACKEND_COUNTERS * 8);
export const BUILD_SCRATCH_SIZE = MAX_MEMBERS * BS_RECORD_SIZE;
export const RING_BYTES = align64(RING_CAPACITY * 2);
export const RINGS_OFFSET = align64(BUILD_SCRATCH_OFFSET + BUILD_SCRATCH_SIZE);
export const TREES_OFFSET = align64(RINGS_OFFSET + MAX_SERVICES * 2 * RING_BYTES);
export const LAYOUT_END = TREES_OFFSET + MAX_SERVICES * LT_SIZE;
export const MEMORY_PAGES = Math.ceil(LAYOUT_END / PAGE);

// ── address helpers (control path and tests; the engine has its own generated copies) ──
export const serviceAddr = (s: number): number => SERVICES_OFFSET + s * SERVICE_SIZE;
export const backendAddr = (b: number): number => BACKENDS_OFFSET + b * BACKEND_SIZE;
export const membersAddr = (s: number): number => MEMBERS_OFFSET + s * MAX_MEMBERS * 2;
export const scratchAddr = (w: number): number => SCRATCH_OFFSET + w * WORKER_SCRATCH_SIZE;
export const tallyAddr = (w: number): number => TALLY_OFFSET + w * WORKER_TALLY_SIZE;
export const ringAddr = (s: number, ring: number): number => RINGS_OFFSET + (s * 2 + ring) * RING_BYTES;
export const treeAddr = (s: number): number => TREES_OFFSET + s * LT_SIZE;
/** Index (in f64 units) of a worker's counter for a service. */
export const serviceCounterIndex = (w: number, s: number, c: number): number =>
  (SERVICE_COUNTERS_OFFSET >> 3) + (w * MAX_SERVICES + s) * SERVICE_COUNTERS + c;
/** Index (in f64 units) of a worker's counter for a backend. */
export const backendCounterIndex = (w: number, b: number, c: number): number =>
  (BACKEND_COUNTERS_OFFSET >> 3) + (w * MAX_BACKENDS + b) * BACKEND_COUNTERS + c;

/** Creates the one shared memory, sized for this layout, with its header written. */
export function createSharedMemory(): WebAssembly.Memory {
  const memory = new WebAssembly.Memory({ initial: MEMORY_PAGES, maximum: MEMORY_PAGES, shared: true });
  const u32 = new Uint32Array(memory.buffer);
  const h = HEADER_OFFSET >> 2;
  u32[h + (H_VERSION >> 2)] = LAYOUT_VERSION;
  // The magic goes last: a reader that sees it sees a complete header.
  Atomics.store(u32, h + (H_MAGIC >> 2), MAGIC);
  return memory;
}

/** The shared memory does not carry this layout (magic, version or size): "expected X, got Y". */
export class LayoutMismatchError extends FulcrumError {
  constructor(message: string) {
    super('FULCRUM_ERR_LAYOUT_MISMATCH', message);
  }
}

/** Verifies that `memory` carries this layout; throws naming what was expected and found. */
export function checkHeader(memory: WebAssembly.Memory): void {
  const u32 = new Uint32Array(memory.buffer);
  const h = HEADER_OFFSET >> 2;
  const hex = (n: number): string => `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
  if (memory.buffer.byteLength < LAYOUT_END) {
    throw new LayoutMismatchError(`shared memory: expected at least ${LAYOUT_END} bytes, got ${memory.buffer.byteLength}`);
  }
  const magic = Atomics.load(u32, h + (H_MAGIC >> 2));
  if (magic !== MAGIC) throw new LayoutMismatchError(`shared memory: expected magic ${hex(MAGIC)}, got ${hex(magic)}`);
  const version = u32[h + (H_VERSION >> 2)];
  if (version !== LAYOUT_VERSION) {
    throw new LayoutMismatchError(`shared memory: expected layout version ${LAYOUT_VERSION}, got ${version}`);
  }
}

/**
 * Every constant the engine may use, by name. `build/gen-layout.ts` writes these into
 * `assembly/generated/layout.ts`; nothing in assembly/ spells an offset by hand.
 */
export const ENGINE_CONSTANTS: Record<string, number> = {
  MAGIC, LAYOUT_VERSION, LAYOUT_BASE,
  MAX_SERVICES, MAX_BACKENDS, MAX_MEMBERS, MAX_WORKERS, RING_CAPACITY, MAX_TRIED, WEIGHT_SCALE, MAX_WEIGHT, NO_BACKEND_U16,
  H_MAGIC, H_VERSION, H_GENERATION,
  SERVICE_SIZE, S_STATE, S_ALGORITHM, S_MAX_CONN, S_ACTIVE, S_ACTIVE_RING, S_RING_LEN, S_MEMBER_COUNT, S_CURSOR,
  S_QUEUED, S_QUEUE_MAX, S_RELEASE_SEQ, S_PRIMARY_UP, S_BACKUP_UP, S_TABLE_SIZE, S_BALANCE_FACTOR,
  SERVICE_FREE, SERVICE_ACTIVE, ALG_MAGLEV, ALG_LEASTCONN, ALG_ROUNDROBIN, ALG_RANDOM,
  BACKEND_SIZE, B_STATE, B_FLAGS, B_WEIGHT, B_EFF_WEIGHT, B_MAX_CONN, B_ACTIVE, B_HASH_OFFSET, B_HASH_SKIP, B_SERVICE, B_MEMBER_POS,
  BACKEND_FREE, BACKEND_UP, BACKEND_DOWN, BACKEND_DRAIN, BACKEND_MAINT, BF_BACKUP,
  WORKER_SCRATCH_SIZE, W_TRIED_COUNT, W_TRIED,
  TALLY_OFFSET, WORKER_TALLY_SIZE, T_SERVICE_HELD, T_SERVICE_QUEUED, T_BACKEND_HELD,
  PICK_SERVICE_FULL, PICK_NO_BACKEND, PICK_BACKENDS_FULL, PICK_BAD_SERVICE,
  INIT_OK, INIT_BAD_MAGIC, INIT_BAD_VERSION, INIT_BAD_WORKER, INIT_HEAP_OVERLAP,
  HEADER_OFFSET, SERVICES_OFFSET, BACKENDS_OFFSET, MEMBERS_OFFSET, SCRATCH_OFFSET,
  BUILD_SCRATCH_OFFSET, BUILD_SCRATCH_SIZE, RING_BYTES, RINGS_OFFSET, TREES_OFFSET, LAYOUT_END, MEMORY_PAGES,
  LT_LOCK, LT_LEAVES, LT_COUNT, LT_DIRTY, LT_MASKED, LT_MAX_MASKED, LT_BITS, LT_STAGED, LT_STAGED_SIZE, LT_NODES, LT_KEYS, LT_LEAF_RECORDS, LT_LEAF_SIZE, LTL_ID, LTL_WEIGHT, LTL_MAX, LTL_ACTIVE, LT_SIZE, LT_NONE,
  BS_RECORD_SIZE, BS_ID, BS_WEIGHT, BS_MAGLEV_POS, BS_MAGLEV_SKIP, BS_MAGLEV_CREDIT, BS_RR_CURRENT, BS_RR_SCALED,
};

// ── the relay's events (not shared memory: the Int32Array relay.c fills and the worker reads) ──
//
// relay.c includes these as a generated C header (build/gen-layout.ts, RELAY_CONSTANTS), so the C
// and the JavaScript sides of the event layout cannot drift; relay.ts also checks a built relay
// against them (constants()) in case relay.node is older than this file.
//
//   events: EV_FIELDS int32 per event
//   ┌────────────────┬─────────────┬──────────────┬─────────────────────┬─────────────────────────┐
//   │ EV_TYPE        │ EV_ID       │ EV_A         │ EV_B                │ EV_ADDR .. +3           │
//   ├────────────────┼─────────────┼──────────────┼─────────────────────┼─────────────────────────┤
//   │ ACCEPT         │ listener    │ client fd    │ family << 16 | port │ address bytes (4 or 16) │
//   │ ACCEPT_ERROR   │ listener    │ -errno       │ (the listener is paused until resume(id))     │
//   │ CONNECTED      │ slot        │              │                                               │
//   │ CONNECT_FAILED │ slot        │ -errno       │ (backend socket closed, client socket kept)   │
//   │ ENDED          │ slot        │ END_*        │ (sockets closed, but a Node-owned client's)   │
//   │ CLIENT_GONE    │ slot        │              │ (a watched, queued client left; socket kept)  │
//   │ UDP_NEW        │ udp listener│ pending id   │ family << 16 | port │ address bytes (4 or 16) │
//   │ UDP_FAILED     │ slot        │ -errno       │ (ICMP unreachable: the flow waits for udpConnect or udpClose) │
//   │ UDP_ENDED      │ slot        │ END_SERVER (udp.responses reached), END_MOVED (its backend left) │
//   └────────────────┴─────────────┴──────────────┴───────────────────────────────────────────────┘
//   stats: Float64Array, STAT_FIELDS per slot (bytes in, bytes out, an activity count, and for a
//   UDP flow its datagrams in and out).
export const EV_FIELDS = 8;
export const EV_TYPE = 0;
export const EV_ID = 1;
export const EV_A = 2;
export const EV_B = 3;
export const EV_ADDR = 4;
export const EV_ACCEPT = 1;
export const EV_ACCEPT_ERROR = 2;
export const EV_CONNECTED = 3;
export const EV_CONNECT_FAILED = 4;
export const EV_ENDED = 5;
export const EV_CLIENT_GONE = 6;
/** UDP (relay/udp.c): the first datagram of a new client address and port, held until udpConnect or udpClose names its pending id. */
export const EV_UDP_NEW = 7;
export const EV_UDP_FAILED = 8;
export const EV_UDP_ENDED = 9;
/** EV_ENDED's EV_A: the client ended the session (its EOF came first, or it reset), or the server. */
export const END_CLIENT = 1;
export const END_SERVER = 2;
/** EV_UDP_ENDED's EV_A: the flow's backend is no longer up or draining (or was removed: udpMove); its datagram starts a new flow. */
export const END_MOVED = 3;
export const STAT_BYTES_IN = 0;
export const STAT_BYTES_OUT = 1;
export const STAT_ACTIVITY = 2;
export const STAT_DGRAMS_IN = 3;
export const STAT_DGRAMS_OUT = 4;
export const STAT_FIELDS = 5;
/** Datagrams per recvmmsg / sendmmsg at most (udpInit's batch: 1 = a system call per datagram, for comparison). */
export const UDP_MAX_BATCH = 64;
/** epoll events per wake. */
export const RELAY_MAX_EVENTS = 256;
/** Connections accepted per listener wake. */
export const RELAY_MAX_ACCEPT = 64;
/** Events per onEvents call at most (the JS array's size): two per epoll event, one spare, the accepts. */
export const RELAY_EVENTS = 1024;

/**
 * The options Int32Array of the relay's connect() and keepAlive(), OPT_FIELDS int32: flags
 * (OPT_PROPAGATE_RESET), then TCP keepalive's idle, interval (seconds; idle 0: off) and count.
 */
export const OPT_FLAGS = 0;
export const OPT_KEEP_IDLE = 1;
export const OPT_KEEP_INTERVAL = 2;
export const OPT_KEEP_COUNT = 3;
export const OPT_FIELDS = 4;
export const OPT_PROPAGATE_RESET = 1;

/** What build/gen-layout.ts writes into the relay's C header, by the names relay.c uses. */
export const RELAY_CONSTANTS: Record<string, number> = {
  OPT_FLAGS, OPT_KEEP_IDLE, OPT_KEEP_INTERVAL, OPT_KEEP_COUNT, OPT_FIELDS, OPT_PROPAGATE_RESET,
  EV_FIELDS, EV_TYPE, EV_ID, EV_A, EV_B, EV_ADDR,
  EV_ACCEPT, EV_ACCEPT_ERROR, EV_CONNECTED, EV_CONNECT_FAILED, EV_ENDED, EV_CLIENT_GONE, END_CLIENT, END_SERVER,
  EV_UDP_NEW, EV_UDP_FAILED, EV_UDP_ENDED, END_MOVED,
  STAT_BYTES_IN, STAT_BYTES_OUT, STAT_ACTIVITY, STAT_DGRAMS_IN, STAT_DGRAMS_OUT, STAT_FIELDS,
  MAX_EVENTS: RELAY_MAX_EVENTS, MAX_ACCEPT: RELAY_MAX_ACCEPT, UDP_MAX_BATCH,
  // What relay/udp.c counts in the shared memory itself (per datagram) and reads (a flow's backend state).
  SC_DGRAMS_IN, SC_DGRAMS_OUT, SC_DROP_LIMIT, SC_DROP_OVERSIZED, SC_DROP_UNREACHABLE,
  BC_DGRAMS_IN, BC_DGRAMS_OUT, BC_DROP_OVERSIZED, BC_DROP_UNREACHABLE, BACKEND_UP, BACKEND_DRAIN, SERVICE_COUNTERS, BACKEND_COUNTERS,
};
