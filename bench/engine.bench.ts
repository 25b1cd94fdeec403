/**
 * Engine micro-benchmark: ns per pick (acquire + release) per algorithm with 10 and 1,000 backends,
 * the WebAssembly engine beside a plain-TypeScript implementation of the same algorithms over the
 * same shared memory (bench/reference/), and the Maglev build of 65,537 slots × 100 backends.
 *
 * Run: npm run bench:engine (or node bench/engine.bench.ts). Prints a markdown table and writes it
 * to bench/out/engine.md. Each timed task runs a batch of BATCH picks so timer overhead is spread out.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpus } from 'node:os';
import { Bench } from 'tinybench';
import { createSharedMemory, S_ACTIVE_RING } from '../src/shm/layout.ts';
import { loadEngineModule, instantiateEngine } from '../src/balancer/engine.ts';
import { Balancer } from '../src/balancer/balancer.ts';
import { configSchema } from '../src/config/schema.ts';
import { silentLogger } from '../src/observability/log.ts';
import { hashKey } from '../src/balancer/hash.ts';
import * as ref from './reference/index.ts';

const BATCH = 1000;
const ALGORITHMS = ['leastconn', 'maglev', 'roundrobin', 'random'] as const;
const SIZES = [10, 1000] as const;

const memory = createSharedMemory();
const module = loadEngineModule();
const control = instantiateEngine(module, memory, 0);
const wasm = instantiateEngine(module, memory, 1);
ref.bind(memory, 2);
const balancer = new Balancer(memory, control, silentLogger);

const address = (svc: number, i: number): string => `10.${svc}.${i >> 8}.${i & 255}:5432`;
const services: Array<Record<string, unknown>> = [];
for (const alg of ALGORITHMS) {
  for (const n of SIZES) {
    const k: number = services.length;
    services.push({
      name: `${alg}-${n}`, listen: `127.0.0.1:${7000 + k}`, balance: alg,
      backends: Array.from({ length: n }, (_, i) => ({ address: address(k, i), weight: 1 + (i % 3) })),
    });
  }
}
balancer.apply(configSchema.parse({ services }));

// The Maglev build gets its own memory: the pick services above fill most of the backend pool.
const buildMemory = createSharedMemory();
const buildControl = instantiateEngine(module, buildMemory, 0);
const buildBalancer = new Balancer(buildMemory, buildControl, silentLogger);
buildBalancer.apply(configSchema.parse({ services: [{
  name: 'build', listen: '127.0.0.1:7999', balance: 'maglev', table_size: 65537,
  backends: Array.from({ length: 100 }, (_, i) => ({ address: address(40, i) })),
}] }));

const hashes = new Uint32Array(BATCH);
for (let i = 0; i < BATCH; i++) hashes[i] = hashKey(`198.51.${i >> 8}.${i & 255}`);

const bench = new Bench({ time: 300, warmup: true, warmupTime: 100 });
const rows: Array<{ what: string; n: string; wasm?: number; ts?: number; unit: string }> = [];

for (const alg of ALGORITHMS) {
  for (const n of SIZES) {
    const s = balancer.serviceIndex(`${alg}-${n}`);
    bench.add(`wasm ${alg} ${n}`, () => {
      for (let i = 0; i < BATCH; i++) {
        const b = wasm.acquire(s, hashes[i]);
        wasm.release(s, b);
      }
    });
    bench.add(`ts ${alg} ${n}`, () => {
      for (let i = 0; i < BATCH; i++) {
        const b = ref.acquire(s, hashes[i]);
        ref.release(s, b);
      }
    });
  }
}
const build = buildBalancer.serviceIndex('build');
// Build into the inactive ring, so the published table stays as it is.
const spare = buildBalancer.records.serviceField(build, S_ACTIVE_RING) ^ 1;
bench.add('wasm maglev build', () => {
  buildControl.maglevBuild(build, spare);
});
bench.add('ts maglev build', () => {
  ref.bind(buildMemory, 2);
  ref.maglevBuild(build, spare);
  ref.bind(memory, 2);
});

await bench.run();

const mean = (name: string): number => {
  const t = bench.tasks.find((x) => x.name === name);
  const r = t?.result as { state: string; latency?: { mean: number } } | undefined;
  if (!r || !r.latency) throw new Error(`benchmark task ${name} did not complete (${r?.state})`);
  return r.latency.mean; // ms per task run
};
for (const alg of ALGORITHMS) {
  for (const n of SIZES) {
    rows.push({ what: `${alg} pick (acquire + release)`, n: `${n} backends`, wasm: (mean(`wasm ${alg} ${n}`) * 1e6) / BATCH, ts: (mean(`ts ${alg} ${n}`) * 1e6) / BATCH, unit: 'ns' });
  }
}
rows.push({ what: 'maglev build, 65,537 slots', n: '100 backends', wasm: mean('wasm maglev build'), ts: mean('ts maglev build'), unit: 'ms' });

const fmt = (v: number | undefined, unit: string): string => (v === undefined ? '–' : unit === 'ns' ? `${v.toFixed(0)} ns` : `${v.toFixed(2)} ms`);
const lines = [
  `Engine benchmark — ${new Date().toISOString().slice(0, 10)}, Node ${process.version}, ${cpus()[0]?.model ?? 'unknown CPU'} (${cpus().length} cores); one thread, no contention.`,
  '',
  '| operation | size | WebAssembly | plain TypeScript | TS / WASM |',
  '|---|---|---:|---:|---:|',
  ...rows.map((r) => `| ${r.what} | ${r.n} | ${fmt(r.wasm, r.unit)} | ${fmt(r.ts, r.unit)} | ${r.wasm && r.ts ? (r.ts / r.wasm).toFixed(2) + '×' : '–'} |`),
  '',
  'Weights 1:2:3 repeating; a pick is acquire (admission + selection + slot CAS) and release (decrements + release-sequence notify).',
  'Leastconn scans every member on each pick, so its cost grows with the backend count. Batches of 1,000 picks per sample.',
];
const text = lines.join('\n') + '\n';
console.log(text);
const out = join(dirname(fileURLToPath(import.meta.url)), 'out', 'engine.md');
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, text);
balancer.close();
buildBalancer.close();
