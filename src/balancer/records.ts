/**
 * Typed access to the service and backend records of the shared memory, for the control plane
 * (the only writer of these records), tests and benchmarks. The data plane never uses this: it
 * goes through the engine.
 *
 * Publication order matters to racing readers (see assembly/records.ts): fields first, then the
 * state word with Atomics.store, which makes them visible to any reader that sees the state.
 */
import {
  serviceAddr, backendAddr, membersAddr, MAX_MEMBERS, HEADER_OFFSET, H_GENERATION,
  S_STATE, S_ALGORITHM, S_MAX_CONN, S_ACTIVE, S_ACTIVE_RING, S_RING_LEN, S_MEMBER_COUNT, S_CURSOR, S_QUEUED,
  S_QUEUE_MAX, S_RELEASE_SEQ, S_PRIMARY_UP, S_BACKUP_UP, S_TABLE_SIZE, S_BALANCE_FACTOR, ringAddr,
  B_STATE, B_FLAGS, B_WEIGHT, B_EFF_WEIGHT, B_MAX_CONN, B_ACTIVE, B_HASH_OFFSET, B_HASH_SKIP, B_SERVICE,
} from '../shm/layout.ts';

export interface ServiceFields {
  algorithm: number;
  maxConnections: number;
  queueMax: number;
  tableSize: number;
  /** Maglev's bounded load, percent (0 = off). */
  balanceFactor: number;
}

export interface BackendFields {
  service: number;
  flags: number;
  weight: number;
  effectiveWeight: number;
  maxConnections: number;
  hashOffset: number;
  hashSkip: number;
}

export class SharedRecords {
  readonly i32: Int32Array;
  readonly u32: Uint32Array;
  readonly u16: Uint16Array;

  constructor(memory: WebAssembly.Memory) {
    this.i32 = new Int32Array(memory.buffer);
    this.u32 = new Uint32Array(memory.buffer);
    this.u16 = new Uint16Array(memory.buffer);
  }

  // ── services ──
  /** Writes a service's configuration fields (not its live counters). */
  writeService(s: number, f: ServiceFields): void {
    const w = serviceAddr(s) >> 2;
    this.u32[w + (S_ALGORITHM >> 2)] = f.algorithm;
    this.i32[w + (S_MAX_CONN >> 2)] = f.maxConnections;
    this.i32[w + (S_QUEUE_MAX >> 2)] = f.queueMax;
    this.u32[w + (S_TABLE_SIZE >> 2)] = f.tableSize;
    this.u32[w + (S_BALANCE_FACTOR >> 2)] = f.balanceFactor;
  }

  /** Resets a service slot's counters; only for a slot nobody uses (S_ACTIVE 0). Keeps S_RELEASE_SEQ monotonic. */
  resetServiceCounters(s: number): void {
    const w = serviceAddr(s) >> 2;
    Atomics.store(this.i32, w + (S_ACTIVE >> 2), 0);
    Atomics.store(this.i32, w + (S_QUEUED >> 2), 0);
    Atomics.store(this.u32, w + (S_CURSOR >> 2), 0);
    this.u32[w + (S_MEMBER_COUNT >> 2)] = 0;
    this.u32[w + (S_RING_LEN >> 2)] = 0;
    this.u32[w + (S_RING_LEN >> 2) + 1] = 0;
    this.u32[w + (S_PRIMARY_UP >> 2)] = 0;
    this.u32[w + (S_BACKUP_UP >> 2)] = 0;
  }

  setServiceState(s: number, state: number): void {
    Atomics.store(this.u32, (serviceAddr(s) + S_STATE) >> 2, state);
  }

  /**
   * Replaces a service's member list. Ids are written before the count grows and the count shrinks
   * after, so a racing scan reads only ids that were members a moment ago (and validates them).
   */
  setMembers(s: number, ids: readonly number[]): void {
    if (ids.length > MAX_MEMBERS) throw new RangeError(`members: expected at most ${MAX_MEMBERS}, got ${ids.length}`);
    const base = membersAddr(s) >> 1;
    for (let i = 0; i < ids.length; i++) Atomics.store(this.u16, base + i, ids[i]);
    Atomics.store(this.u32, (serviceAddr(s) + S_MEMBER_COUNT) >> 2, ids.length);
  }

  members(s: number): number[] {
    const n = this.serviceField(s, S_MEMBER_COUNT);
    const base = membersAddr(s) >> 1;
    return Array.from(this.u16.subarray(base, base + n));
  }

  serviceField(s: number, field: number): number {
    return Atomics.load(this.u32, (serviceAddr(s) + field) >> 2);
  }

  serviceActive(s: number): number {
    return Atomics.load(this.i32, (serviceAddr(s) + S_ACTIVE) >> 2);
  }

  serviceQueued(s: number): number {
    return Atomics.load(this.i32, (serviceAddr(s) + S_QUEUED) >> 2);
  }

  /** Index (in i32 units) of S_RELEASE_SEQ, for Atomics.wait / waitAsync on an Int32Array of the memory. */
  releaseSeqIndex(s: number): number {
    return (serviceAddr(s) + S_RELEASE_SEQ) >> 2;
  }

  /** The active ring's slots (a copy). */
  activeRing(s: number): Uint16Array {
    const r = this.serviceField(s, S_ACTIVE_RING) & 1;
    const len = this.u32[((serviceAddr(s) + S_RING_LEN) >> 2) + r];
    const base = ringAddr(s, r) >> 1;
    return this.u16.slice(base, base + len);
  }

  /** A ring's slots (a copy) of length `len`. */
  ring(s: number, r: number, len: number): Uint16Array {
    const base = ringAddr(s, r) >> 1;
    return this.u16.slice(base, base + len);
  }

  generation(): number {
    return Atomics.load(this.u32, (HEADER_OFFSET + H_GENERATION) >> 2);
  }

  // ── backends ──
  /** Writes every configuration field of a backend record (not B_STATE, not B_ACTIVE). */
  writeBackend(b: number, f: BackendFields): void {
    const w = backendAddr(b) >> 2;
    this.u32[w + (B_SERVICE >> 2)] = f.service;
    this.u32[w + (B_FLAGS >> 2)] = f.flags;
    this.i32[w + (B_WEIGHT >> 2)] = f.weight;
    this.i32[w + (B_EFF_WEIGHT >> 2)] = f.effectiveWeight;
    this.i32[w + (B_MAX_CONN >> 2)] = f.maxConnections;
    this.u32[w + (B_HASH_OFFSET >> 2)] = f.hashOffset >>> 0;
    this.u32[w + (B_HASH_SKIP >> 2)] = f.hashSkip >>> 0;
  }

  /** Prepares a slot for a new occupant: no active connections. */
  claimBackend(b: number): void {
    Atomics.store(this.i32, (backendAddr(b) + B_ACTIVE) >> 2, 0);
  }

  setBackendState(b: number, state: number): void {
    Atomics.store(this.u32, (backendAddr(b) + B_STATE) >> 2, state);
  }

  setBackendField(b: number, field: number, value: number): void {
    Atomics.store(this.i32, (backendAddr(b) + field) >> 2, value | 0);
  }

  backendField(b: number, field: number): number {
    return Atomics.load(this.i32, (backendAddr(b) + field) >> 2);
  }

  backendActive(b: number): number {
    return Atomics.load(this.i32, (backendAddr(b) + B_ACTIVE) >> 2);
  }
}
