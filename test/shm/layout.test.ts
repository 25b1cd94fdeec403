import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { renderLayout, renderRelayHeader, GENERATED_LAYOUT, GENERATED_RELAY_HEADER } from '../../build/gen-layout.ts';
import {
  createSharedMemory, checkHeader, LayoutMismatchError, MEMORY_PAGES, HEADER_OFFSET, H_MAGIC, H_VERSION, MAGIC,
  LAYOUT_VERSION, MAX_WORKERS, INIT_OK, INIT_BAD_MAGIC, INIT_BAD_VERSION, INIT_BAD_WORKER, LAYOUT_END,
  SERVICES_OFFSET, BACKENDS_OFFSET, MEMBERS_OFFSET, SCRATCH_OFFSET, SERVICE_COUNTERS_OFFSET, BACKEND_COUNTERS_OFFSET,
  BUILD_SCRATCH_OFFSET, RINGS_OFFSET, ENGINE_CONSTANTS, S_TABLE_SIZE, SERVICE_SIZE,
  RELAY_CONSTANTS, RELAY_EVENTS, RELAY_MAX_EVENTS, RELAY_MAX_ACCEPT, EV_ADDR, EV_FIELDS, BUILD_SCRATCH_SIZE, MAX_MEMBERS,
  BS_RECORD_SIZE, BS_ID, BS_WEIGHT, BS_MAGLEV_POS, BS_MAGLEV_SKIP, BS_MAGLEV_CREDIT, BS_RR_CURRENT, BS_RR_SCALED,
} from '../../src/shm/layout.ts';
import { loadEngineModule, instantiateEngine, type Engine } from '../../src/balancer/engine.ts';
import { EngineMismatchError } from '../../src/errors.ts';

const module = loadEngineModule();

function rawInstance(memory: WebAssembly.Memory): Engine {
  return new WebAssembly.Instance(module, { env: { memory } }).exports as unknown as Engine;
}

describe('shared-memory layout', () => {
  it('the generated AssemblyScript constants match src/shm/layout.ts', () => {
    expect(readFileSync(GENERATED_LAYOUT, 'utf8')).toBe(renderLayout());
    for (const [name, value] of Object.entries(ENGINE_CONSTANTS)) {
      expect(renderLayout()).toContain(`export const ${name}: ${value < 0 ? 'i32' : 'u32'} = ${value};`);
    }
  });

  it('the relay\'s generated C header carries the event layout of src/shm/layout.ts and this Node', () => {
    const header = readFileSync(GENERATED_RELAY_HEADER, 'utf8');
    expect(header).toBe(renderRelayHeader({ abi: Number(process.versions.modules), version: process.version }));
    for (const [name, value] of Object.entries(RELAY_CONSTANTS)) expect(header).toContain(`#define ${name} ${value}\n`);
    // The JavaScript side's event array has room for what one wake can report (relay.c checks it too).
    expect(RELAY_EVENTS).toBeGreaterThanOrEqual(2 * RELAY_MAX_EVENTS + 1 + RELAY_MAX_ACCEPT);
    expect(EV_ADDR + 4).toBeLessThanOrEqual(EV_FIELDS);
  });

  it('the build scratch record: every field inside it, the shared ones where collectTier writes them', () => {
    for (const [at, size] of [[BS_ID, 2], [BS_WEIGHT, 2], [BS_MAGLEV_POS, 4], [BS_MAGLEV_SKIP, 4], [BS_MAGLEV_CREDIT, 4], [BS_RR_CURRENT, 4], [BS_RR_SCALED, 4]]) {
      expect(at % size).toBe(0);
      expect(at + size).toBeLessThanOrEqual(BS_RECORD_SIZE);
    }
    // Each build's own fields do not overlap the id and weight, nor each other.
    const bytes = (fields: Array<[number, number]>) => fields.flatMap(([at, size]) => Array.from({ length: size }, (_, i) => at + i));
    for (const own of [[[BS_MAGLEV_POS, 4], [BS_MAGLEV_SKIP, 4], [BS_MAGLEV_CREDIT, 4]], [[BS_RR_CURRENT, 4], [BS_RR_SCALED, 4]]] as Array<Array<[number, number]>>) {
      const all = bytes([[BS_ID, 2], [BS_WEIGHT, 2], ...own]);
      expect(new Set(all).size).toBe(all.length);
    }
    expect(BUILD_SCRATCH_SIZE).toBe(MAX_MEMBERS * BS_RECORD_SIZE);
  });

  it('regions are 64-byte aligned, ordered and inside the memory', () => {
    const regions = [HEADER_OFFSET, SERVICES_OFFSET, BACKENDS_OFFSET, MEMBERS_OFFSET, SCRATCH_OFFSET,
      SERVICE_COUNTERS_OFFSET, BACKEND_COUNTERS_OFFSET, BUILD_SCRATCH_OFFSET, RINGS_OFFSET, LAYOUT_END];
    for (let i = 0; i < regions.length; i++) {
      if (i < regions.length - 1) expect(regions[i] % 64).toBe(0);
      if (i > 0) expect(regions[i]).toBeGreaterThan(regions[i - 1]);
    }
    expect(LAYOUT_END).toBeLessThanOrEqual(MEMORY_PAGES * 65536);
    expect(S_TABLE_SIZE + 4).toBeLessThanOrEqual(SERVICE_SIZE);
  });

  it('the engine accepts a memory made by createSharedMemory', () => {
    const memory = createSharedMemory();
    expect(() => checkHeader(memory)).not.toThrow();
    expect(rawInstance(memory).init(0)).toBe(INIT_OK);
    expect(rawInstance(memory).init(MAX_WORKERS - 1)).toBe(INIT_OK);
  });

  it('init rejects a memory without the magic', () => {
    const memory = new WebAssembly.Memory({ initial: MEMORY_PAGES, maximum: MEMORY_PAGES, shared: true });
    expect(rawInstance(memory).init(0)).toBe(INIT_BAD_MAGIC);
    expect(() => instantiateEngine(module, memory, 0)).toThrow(LayoutMismatchError);
    expect(() => checkHeader(memory)).toThrow(/expected magic 0x434c5546, got 0x00000000/);
  });

  it('init rejects another layout version, and instantiateEngine says expected and got', () => {
    const memory = createSharedMemory();
    const u32 = new Uint32Array(memory.buffer);
    u32[(HEADER_OFFSET + H_VERSION) >> 2] = LAYOUT_VERSION + 1;
    expect(rawInstance(memory).init(0)).toBe(INIT_BAD_VERSION);
    expect(() => instantiateEngine(module, memory, 0)).toThrow(`expected layout version ${LAYOUT_VERSION}, got ${LAYOUT_VERSION + 1}`);
    expect(u32[(HEADER_OFFSET + H_MAGIC) >> 2]).toBe(MAGIC);
  });

  it('init rejects a worker id without a scratch record', () => {
    const memory = createSharedMemory();
    expect(rawInstance(memory).init(MAX_WORKERS)).toBe(INIT_BAD_WORKER);
    let error: unknown;
    try {
      instantiateEngine(module, memory, MAX_WORKERS);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(EngineMismatchError);
    expect((error as EngineMismatchError).code).toBe('FULCRUM_ERR_ENGINE_MISMATCH');
    expect((error as Error).message).toBe(`engine: expected a worker id below ${MAX_WORKERS}, got ${MAX_WORKERS}`);
  });

  it('loadEngineModule names the build command when the file is missing', () => {
    expect(() => loadEngineModule('/nonexistent/engine.wasm')).toThrow(/run npm run build:wasm/);
  });

  it('the compiled engine imports only the memory and exports the contract', () => {
    expect(WebAssembly.Module.imports(module)).toEqual([{ module: 'env', name: 'memory', kind: 'memory' }]);
    const names = WebAssembly.Module.exports(module).map((e) => e.name);
    for (const n of ['init', 'acquire', 'reacquire', 'release', 'rebuild', 'maglevBuild', 'maglevPick', 'leastconnPick',
      'scheduleBuild', 'roundrobinPick', 'randomPick']) expect(names).toContain(n);
  });
});
