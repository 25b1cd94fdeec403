/**
 * Loading and instantiating the WebAssembly selection engine (assembly/ → build/out/engine.wasm).
 *
 * The main thread compiles the module once (`loadEngineModule`) and passes the Module and the
 * shared Memory to each worker thread through workerData (both are structured-cloneable); every
 * thread then makes its own instance over the same memory (`instantiateEngine`). Instantiation is
 * synchronous, so a worker is ready before it accepts its first connection.
 */
import { readFileSync, existsSync } from 'node:fs';
import { randomInt } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { EngineMismatchError } from '../errors.ts';
import {
  checkHeader, INIT_OK, INIT_BAD_MAGIC, INIT_BAD_VERSION, INIT_BAD_WORKER, INIT_HEAP_OVERLAP,
  MAGIC, LAYOUT_VERSION, MAX_WORKERS, LAYOUT_BASE, HEADER_OFFSET, H_MAGIC, H_VERSION, MAX_TRIED, W_TRIED, scratchAddr,
} from '../shm/layout.ts';

export const ENGINE_WASM_PATH = fileURLToPath(new URL('../../build/out/engine.wasm', import.meta.url));

/**
 * The engine's exports. All arguments and results are 32-bit integers; negative pick results are
 * the PICK_* codes of src/shm/layout.ts.
 */
export interface Engine {
  /** Checks the memory's header and binds the instance to a worker's scratch. Returns INIT_*. */
  init(workerId: number): number;
  /** Hot path, once per accepted connection: admission + pick. Backend id ≥ 0 or PICK_*. */
  acquire(service: number, hash: number): number;
  /**
   * After a failed connect: gives back `failed` and picks a backend this connection has not tried:
   * neither `failed` nor the first `tried` entries of the worker's tried list, which the caller
   * writes first (`triedList`). The service slot stays held.
   */
  reacquire(service: number, hash: number, failed: number, tried: number): number;
  /** At session end: gives back the backend (if ≥ 0) and service slots; bumps and notifies S_RELEASE_SEQ when connections are queued. */
  release(service: number, backend: number): void;
  /** Control plane only: recounts up tiers, rebuilds and flips the service's ring. */
  rebuild(service: number): void;
  /**
   * Control plane only, after worker `workerId` died: gives back the service, queue and backend
   * slots it still held (from its tallies in shared memory). Returns how many.
   */
  reclaim(workerId: number): number;
  /** Per-algorithm entries (tests, benchmarks). Picks take a backend slot like acquire does. */
  maglevBuild(service: number, ring: number): number;
  maglevPick(service: number, hash: number): number;
  leastconnPick(service: number): number;
  scheduleBuild(service: number, ring: number): number;
  roundrobinPick(service: number): number;
  randomPick(service: number): number;
  seedRandom(seed: number): void;
}

/** Compiles build/out/engine.wasm synchronously (once per process, on the main thread). */
export function loadEngineModule(path: string = ENGINE_WASM_PATH): WebAssembly.Module {
  if (!existsSync(path)) {
    throw new EngineMismatchError(`engine: ${path} does not exist; run npm run build:wasm`);
  }
  return new WebAssembly.Module(readFileSync(path));
}

function describeInit(code: number, memory: WebAssembly.Memory, workerId: number): string {
  const u32 = new Uint32Array(memory.buffer);
  const h = HEADER_OFFSET >> 2;
  const hex = (n: number): string => `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
  switch (code) {
    case INIT_BAD_MAGIC: return `engine: expected magic ${hex(MAGIC)}, got ${hex(Atomics.load(u32, h + (H_MAGIC >> 2)))}`;
    case INIT_BAD_VERSION: return `engine: expected layout version ${LAYOUT_VERSION}, got ${u32[h + (H_VERSION >> 2)]} (rebuild with npm run build:wasm)`;
    case INIT_BAD_WORKER: return `engine: expected a worker id below ${MAX_WORKERS}, got ${workerId}`;
    case INIT_HEAP_OVERLAP: return `engine: expected the module's static data to end at or below ${LAYOUT_BASE}, got more (it would overlap the layout)`;
    default: return `engine: init expected ${INIT_OK}, got ${code}`;
  }
}

/**
 * Instantiates the engine over the shared `memory` for worker `workerId` (0..MAX_WORKERS-1; the
 * control plane uses its own id, conventionally 0 — it never calls acquire). Throws
 * LayoutMismatchError (FULCRUM_ERR_LAYOUT_MISMATCH) when the memory lacks the layout, and
 * EngineMismatchError (FULCRUM_ERR_ENGINE_MISMATCH) when the compiled engine disagrees with it.
 */
export function instantiateEngine(module: WebAssembly.Module, memory: WebAssembly.Memory, workerId: number): Engine {
  checkHeader(memory);
  const instance = new WebAssembly.Instance(module, { env: { memory } });
  const engine = instance.exports as unknown as Engine;
  const code = engine.init(workerId);
  if (code !== INIT_OK) throw new EngineMismatchError(describeInit(code, memory, workerId));
  engine.seedRandom(randomInt(1, 0x7fffffff));
  return engine;
}

/**
 * Worker `workerId`'s tried list in the shared memory (MAX_TRIED backend ids): a connection about
 * to retry writes the backends it tried into it and passes their count to `reacquire`. Made once
 * per worker; the list is only valid for the call that follows the write.
 */
export function triedList(memory: WebAssembly.Memory, workerId: number): Uint16Array {
  return new Uint16Array(memory.buffer, scratchAddr(workerId) + W_TRIED, MAX_TRIED);
}
