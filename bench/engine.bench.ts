/**
 * Engine micro-benchmark: ns per pick (acquire + release) per algorithm at 8 and 1,024 backends and
 * their ratio, the WebAssembly engine beside a plain-TypeScript implementation of the same
 * algorithms over the same shared memory (bench/reference/: its leastconn is the scan); the Maglev
 * build of 65,537 slots for 100 and 1,024 weighted backends; the control plane's cost of one weight
 * change at 1,024 backends; picks while another thread keeps changing weights and states (the
 * flip and the tree's per-member lock must not stall them); and Maglev's bounded load
 * (`hash_balance_factor`) under a skewed load: max / mean active connections per backend.
 *
 * Run: npm run bench:engine (or node bench/engine.bench.ts). Prints markdown and writes it to
 * bench/out/engine.md. Each timed task runs a batch of BATCH picks so timer overhead is spread out.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpus, loadavg } from 'node:os';
import { Worker } from 'node:worker_threads';
import { Bench } from 'tinybench';
import { createSharedMemory, S_ACTIVE_RING, B_EFF_WEIGHT, B_ACTIVE, backendAddr } from '../src/shm/layout.ts';
import { loadEngineModule, instantiateEngine, type Engine } from '../src/balancer/engine.ts';
import { Balancer } from '../src/balancer/balancer.ts';
import { configSchema } from '../src/config/schema.ts';
import { silentLogger } from '../src/observability/log.ts';
import { hashKey } from '../src/balancer/hash.ts';
import * as ref from './reference/index.ts';

const BATCH = 1000;
const ALGORITHMS = ['leastconn', 'maglev', 'roundrobin', 'random'] as const;
const SIZES = [8, 1024] as const;
const BIG = 1024;

// Two memories (each holds up to MAX_BACKENDS = 4,096 backends): A for three algorithms' picks,
// B for the other picks and the Maglev builds.
interface World { memory: WebAssembly.Memory; control: Engine; wasm: Engine; balancer: Balancer }
function world(): World {
  const memory = createSharedMemory();
  const control = instantiateEngine(module, memory, 0);
  return { memory, control, wasm: instantiateEngine(module, memory, 1), balancer: new Balancer(memory, control, silentLogger) };
}
const module = loadEngineModule();
const A = world();
const B = world();
const C = world();
const { memory, control, wasm, balancer } = A;
ref.bind(memory, 2);

const address = (svc: number, i: number): string => `10.${svc}.${i >> 8}.${i & 255}:5432`;
const fleet = (k: number, n: number) => Array.from({ length: n }, (_, i) => ({ address: address(k, i), weight: 1 + (i % 3) }));
const pickNames = [...ALGORITHMS, 'bounded'] as const;
const home = (alg: (typeof pickNames)[number]): World => (alg === 'random' || alg === 'bounded' ? B : A);
const configs = new Map<World, Array<Record<string, unknown>>>([[A, []], [B, []]]);
let k = 0;
for (const alg of pickNames) {
  for (const n of SIZES) {
    const extra = alg === 'bounded' ? { balance: 'maglev', hash_balance_factor: 125 } : { balance: alg };
    configs.get(home(alg))!.push({ name: `${alg}-${n}`, listen: `127.0.0.1:${7000 + k}`, ...extra, backends: fleet(k, n) });
    k++;
  }
}
configs.set(C, [
  { name: 'build-100', listen: '127.0.0.1:7998', balance: 'maglev', table_size: 65537, backends: fleet(40, 100) },
  { name: 'build-1024', listen: '127.0.0.1:7999', balance: 'maglev', table_size: 65537, backends: fleet(41, BIG) },
  // Weights without a common divisor: the schedule reaches its length cap (RING_CAPACITY − MAX_MEMBERS).
  { name: 'rr-odd', listen: '127.0.0.1:7997', balance: 'roundrobin', backends: fleet(42, BIG).map((b, i) => ({ ...b, weight: 1 + ((i * 37) % 256) })) },
]);
for (const [w, list] of configs) w.balancer.apply(configSchema.parse({ services: list }));
const buildBalancer = C.balancer;
const buildControl = C.control;
const buildMemory = C.memory;

const hashes = new Uint32Array(BATCH);
for (let i = 0; i < BATCH; i++) hashes[i] = hashKey(`198.51.${i >> 8}.${i & 255}`);

// Every pick service holds 3 connections per backend while it is measured (from other clients),
// so the counts differ as in service: ties are fewer and the leastconn tree walks further.
const HELD_PER_BACKEND = 3;
for (const alg of pickNames) {
  const w = home(alg);
  for (const n of SIZES) {
    const s = w.balancer.serviceIndex(`${alg}-${n}`);
    for (let i = 0; i < HELD_PER_BACKEND * n; i++) w.wasm.acquire(s, hashKey(`192.0.2.${i & 255}:${i >> 8}`));
  }
}

const bench = new Bench({ time: 300, warmup: true, warmupTime: 100 });
for (const alg of pickNames) {
  const w = home(alg);
  for (const n of SIZES) {
    const s = w.balancer.serviceIndex(`${alg}-${n}`);
    const engine = w.wasm;
    bench.add(`wasm ${alg} ${n}`, () => {
      for (let i = 0; i < BATCH; i++) {
        const b = engine.acquire(s, hashes[i]);
        engine.release(s, b);
      }
    });
    if (alg === 'bounded') continue;
    bench.add(`ts ${alg} ${n}`, () => {
      ref.bind(w.memory, 2);
      for (let i = 0; i < BATCH; i++) {
        const b = ref.acquire(s, hashes[i]);
        ref.release(s, b);
      }
    });
  }
}
// Builds into the inactive ring, so the published table stays as it is.
{
  const s = balancer.serviceIndex(`roundrobin-${BIG}`);
  const spare = balancer.records.serviceField(s, S_ACTIVE_RING) ^ 1;
  bench.add('wasm rr-1024', () => { control.scheduleBuild(s, spare); });
  const odd = buildBalancer.serviceIndex('rr-odd');
  const oddSpare = buildBalancer.records.serviceField(odd, S_ACTIVE_RING) ^ 1;
  bench.add('wasm rr-odd', () => { buildControl.scheduleBuild(odd, oddSpare); });
}
for (const name of ['build-100', 'build-1024']) {
  const s = buildBalancer.serviceIndex(name);
  const spare = buildBalancer.records.serviceField(s, S_ACTIVE_RING) ^ 1;
  bench.add(`wasm ${name}`, () => { buildControl.maglevBuild(s, spare); });
  bench.add(`ts ${name}`, () => {
    ref.bind(buildMemory, 2);
    ref.maglevBuild(s, spare);
    ref.bind(memory, 2);
  });
}
// One weight change at 1,024 backends: the control plane's rebuild (leastconn: the tree's changed
// leaf under its lock; maglev: the table build and the flip).
for (const alg of ['leastconn', 'maglev'] as const) {
  const s = balancer.serviceIndex(`${alg}-${BIG}`);
  const b = balancer.records.members(s)[17];
  let flip = 0;
  bench.add(`weight change ${alg}`, () => {
    balancer.records.setBackendField(b, B_EFF_WEIGHT, 16 * (1 + (flip++ & 1)));
    control.rebuild(s);
  });
}

await bench.run();

interface Latency { mean: number; p50: number; p99: number; max: number }
const latencyOf = (b: Bench, name: string): Latency => {
  const t = b.tasks.find((x) => x.name === name);
  const r = t?.result as { state: string; latency?: Latency } | undefined;
  if (!r || !r.latency) throw new Error(`benchmark task ${name} did not complete (${r?.state})`);
  return r.latency; // ms per task run
};
const task = (name: string): Latency => latencyOf(bench, name);
// The median batch: on a machine shared with other work, the mean mostly measures the neighbours.
const perPick = (name: string): number => (task(name).p50 * 1e6) / BATCH;

// ── picks while another thread changes weights and states at 1,024 backends ──
const churnServices = ['leastconn', 'maglev'].map((alg) => balancer.serviceIndex(`${alg}-${BIG}`));
const churnBackends = churnServices.map((s) => balancer.records.members(s));
const stop = new Int32Array(new SharedArrayBuffer(8));
const churner = new Worker(new URL('./lib/weight-churn.ts', import.meta.url), {
  workerData: { module, memory, services: churnServices, members: churnBackends, stop },
});
await new Promise((resolve) => churner.once('online', resolve));
const during = new Bench({ time: 300, warmup: true, warmupTime: 100 });
for (const alg of ['leastconn', 'maglev'] as const) {
  const s = balancer.serviceIndex(`${alg}-${BIG}`);
  during.add(`during ${alg}`, () => {
    for (let i = 0; i < BATCH; i++) {
      const b = wasm.acquire(s, hashes[i]);
      wasm.release(s, b);
    }
  });
}
await during.run();
Atomics.store(stop, 0, 1);
const rebuilds: number = await new Promise((resolve) => churner.once('message', resolve));
await churner.terminate();
const duringTask = (name: string): Latency => latencyOf(during, name);

// ── bounded load under a skewed load ──
// 20,000 connections held on 100 backends: 8 sources open 75 % of them, 5,000 others the rest.
function skewed(factor: number): { max: number; mean: number; moved: number } {
  const { memory: m, wasm: w, balancer: bal } = world();
  bal.apply(configSchema.parse({ services: [{ name: 'skew', listen: '127.0.0.1:7996', balance: 'maglev', hash_balance_factor: factor, backends: fleet(50, 100).map((b) => ({ ...b, weight: 1 })) }] }));
  const s = bal.serviceIndex('skew');
  let x = 12345;
  const random = (): number => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x / 0x100000000;
  };
  const hot = Array.from({ length: 8 }, (_, i) => hashKey(`203.0.113.${i + 1}`));
  const cold = Array.from({ length: 5000 }, (_, i) => hashKey(`198.18.${i >> 8}.${i & 255}`));
  for (let i = 0; i < 20000; i++) w.acquire(s, random() < 0.75 ? hot[Math.floor(random() * 8)] : cold[Math.floor(random() * 5000)]);
  const active = bal.records.members(s).map((b) => Atomics.load(new Int32Array(m.buffer), (backendAddr(b) + B_ACTIVE) >> 2));
  bal.close();
  const total = active.reduce((a, b) => a + b, 0);
  return { max: Math.max(...active), mean: total / active.length, moved: 0 };
}
const off = skewed(0);
const on = skewed(125);

const ns = (v: number): string => `${v.toFixed(0)} ns`;
const lines = [
  `Engine benchmark — ${new Date().toISOString().slice(0, 16)}Z, Node ${process.version}, ${cpus()[0]?.model ?? 'unknown CPU'} (${cpus().length} cores), load average ${loadavg().map((v) => v.toFixed(1)).join(' ')}; one thread unless said.`,
  '',
  '| pick (acquire + release) | 8 backends | 1,024 backends | 1,024 / 8 | plain TypeScript, 1,024 |',
  '|---|---:|---:|---:|---:|',
  ...pickNames.map((alg) => {
    const small = perPick(`wasm ${alg} 8`);
    const big = perPick(`wasm ${alg} ${BIG}`);
    const ts = alg === 'bounded' ? '–' : ns(perPick(`ts ${alg} ${BIG}`));
    const label = alg === 'bounded' ? 'maglev, hash_balance_factor 125' : alg;
    return `| ${label} | ${ns(small)} | ${ns(big)} | ${(big / small).toFixed(2)}× | ${ts} |`;
  }),
  '',
  '| control plane | WebAssembly | plain TypeScript |',
  '|---|---:|---:|',
  `| maglev build, 65,537 slots, 100 backends (weights 1:2:3) | ${task('wasm build-100').p50.toFixed(2)} ms | ${task('ts build-100').p50.toFixed(2)} ms |`,
  `| maglev build, 65,537 slots, 1,024 backends (weights 1:2:3) | ${task('wasm build-1024').p50.toFixed(2)} ms | ${task('ts build-1024').p50.toFixed(2)} ms |`,
  `| roundrobin schedule build, 1,024 backends (weights 1:2:3) | ${task('wasm rr-1024').p50.toFixed(2)} ms | – |`,
  `| roundrobin schedule build, 1,024 backends (weights 1–256, 64,513 slots) | ${task('wasm rr-odd').p50.toFixed(2)} ms | – |`,
  `| one weight change + rebuild, leastconn, 1,024 backends (staging; the lock is not taken) | ${(task('weight change leastconn').p50 * 1e3).toFixed(1)} µs | – |`,
  `| one weight change + rebuild, maglev, 1,024 backends (build + flip) | ${task('weight change maglev').p50.toFixed(2)} ms | – |`,
  '',
  `Picks at 1,024 backends while a second thread changes a weight and a state and rebuilds, in a loop (${rebuilds} rebuilds meanwhile):`,
  '',
  '| pick (acquire + release), 1,024 backends | quiet: median | during changes: median | quiet: p99 | during changes: p99 |',
  '|---|---:|---:|---:|---:|',
  ...(['leastconn', 'maglev'] as const).map((alg) => {
    const d = duringTask(`during ${alg}`);
    const q = task(`wasm ${alg} ${BIG}`);
    return `| ${alg} | ${ns((q.p50 * 1e6) / BATCH)} | ${ns((d.p50 * 1e6) / BATCH)} | ${ns((q.p99 * 1e6) / BATCH)} | ${ns((d.p99 * 1e6) / BATCH)} |`;
  }),
  '',
  'Bounded load (maglev, 100 backends of equal weight, 20,000 connections held: 8 sources open 75 % of them, 5,000 sources the rest):',
  '',
  '| hash_balance_factor | max active per backend | mean | max / mean |',
  '|---|---:|---:|---:|',
  `| 0 (off) | ${off.max} | ${off.mean.toFixed(0)} | ${(off.max / off.mean).toFixed(2)} |`,
  `| 125 | ${on.max} | ${on.mean.toFixed(0)} | ${(on.max / on.mean).toFixed(2)} |`,
  '',
  'Weights 1:2:3 repeating; a pick is acquire (admission + selection + slot CAS) and release (decrements + release-sequence notify), on a service holding 3 connections per backend.',
  'Batches of 1,000 picks per sample, medians unless said; the plain-TypeScript leastconn is the O(n) scan the tree replaced.',
];
const text = lines.join('\n') + '\n';
console.log(text);
const out = join(dirname(fileURLToPath(import.meta.url)), 'out', 'engine.md');
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, text);
for (const w of [A, B, C]) w.balancer.close();
