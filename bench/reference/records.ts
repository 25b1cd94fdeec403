/**
 * Plain-TypeScript reference of the engine's record access (assembly/records.ts), over the same
 * shared memory through typed arrays, for the benchmark's WASM-vs-TS comparison. Not used in
 * production. Indices are in element units (u32/i32: byte >> 2, u16: byte >> 1).
 */
import {
  SERVICES_OFFSET, SERVICE_SIZE, BACKENDS_OFFSET, BACKEND_SIZE, MEMBERS_OFFSET, MAX_MEMBERS, RINGS_OFFSET, RING_BYTES,
  SCRATCH_OFFSET, WORKER_SCRATCH_SIZE, MAX_BACKENDS, MAX_TRIED, B_STATE, B_SERVICE, B_FLAGS, B_EFF_WEIGHT, B_MAX_CONN,
  B_ACTIVE, BACKEND_UP, BF_BACKUP, S_PRIMARY_UP, S_MEMBER_COUNT, W_TRIED_COUNT, W_TRIED,
} from '../../src/shm/layout.ts';

export let u32: Uint32Array<ArrayBufferLike> = new Uint32Array(0);
export let i32: Int32Array<ArrayBufferLike> = new Int32Array(0);
export let u16: Uint16Array<ArrayBufferLike> = new Uint16Array(0);
let scratch = 0;

export function bind(memory: WebAssembly.Memory, workerId: number): void {
  u32 = new Uint32Array(memory.buffer);
  i32 = new Int32Array(memory.buffer);
  u16 = new Uint16Array(memory.buffer);
  scratch = SCRATCH_OFFSET + workerId * WORKER_SCRATCH_SIZE;
}

export const serviceAt = (s: number): number => SERVICES_OFFSET + s * SERVICE_SIZE;
export const backendAt = (b: number): number => BACKENDS_OFFSET + b * BACKEND_SIZE;
export const membersAt = (s: number): number => MEMBERS_OFFSET + s * MAX_MEMBERS * 2;
export const ringAt = (s: number, r: number): number => RINGS_OFFSET + (s * 2 + r) * RING_BYTES;
export const memberCount = (sa: number): number => Math.min(u32[(sa + S_MEMBER_COUNT) >> 2], MAX_MEMBERS);
export const wantedTier = (sa: number): number => (u32[(sa + S_PRIMARY_UP) >> 2] !== 0 ? 0 : BF_BACKUP);

export function clearTried(): void {
  u32[(scratch + W_TRIED_COUNT) >> 2] = 0;
}

export function addTried(b: number): void {
  const n = u32[(scratch + W_TRIED_COUNT) >> 2];
  if (n >= MAX_TRIED) return;
  u16[(scratch + W_TRIED + n * 2) >> 1] = b;
  u32[(scratch + W_TRIED_COUNT) >> 2] = n + 1;
}

function isTried(b: number): boolean {
  const n = Math.min(u32[(scratch + W_TRIED_COUNT) >> 2], MAX_TRIED);
  for (let i = 0; i < n; i++) if (u16[(scratch + W_TRIED + i * 2) >> 1] === b) return true;
  return false;
}

export function eligible(b: number, s: number, tier: number): boolean {
  if (b >= MAX_BACKENDS) return false;
  const a = backendAt(b);
  if (u32[(a + B_STATE) >> 2] !== BACKEND_UP) return false;
  if (u32[(a + B_SERVICE) >> 2] !== s) return false;
  if ((u32[(a + B_FLAGS) >> 2] & BF_BACKUP) !== tier) return false;
  if (i32[(a + B_EFF_WEIGHT) >> 2] <= 0) return false;
  return !isTried(b);
}

export function hasRoom(b: number): boolean {
  const a = backendAt(b);
  const max = i32[(a + B_MAX_CONN) >> 2];
  return max <= 0 || i32[(a + B_ACTIVE) >> 2] < max;
}

export function takeSlot(b: number): boolean {
  const a = backendAt(b);
  const max = i32[(a + B_MAX_CONN) >> 2];
  const at = (a + B_ACTIVE) >> 2;
  if (max <= 0) {
    Atomics.add(i32, at, 1);
    return true;
  }
  let cur = Atomics.load(i32, at);
  while (cur < max) {
    const seen = Atomics.compareExchange(i32, at, cur, cur + 1);
    if (seen === cur) return true;
    cur = seen;
  }
  return false;
}

/** (activeA + 1) / weightA < (activeB + 1) / weightB, exactly (products stay below 2^53). */
export const lighter = (activeA: number, weightA: number, activeB: number, weightB: number): boolean =>
  (Math.max(activeA, 0) + 1) * weightB < (Math.max(activeB, 0) + 1) * weightA;
