/** Shared set-up for the balancer tests: one memory, a control-plane engine, a worker engine, a Balancer. */
import { createSharedMemory } from '../../src/shm/layout.ts';
import { loadEngineModule, instantiateEngine, type Engine } from '../../src/balancer/engine.ts';
import { Balancer } from '../../src/balancer/balancer.ts';
import { configSchema, type Config } from '../../src/config/schema.ts';
import { silentLogger } from '../../src/observability/log.ts';
import { realClock, type Clock } from '../../src/util/clock.ts';

export const engineModule = loadEngineModule();

export interface Env {
  memory: WebAssembly.Memory;
  control: Engine;
  worker: Engine;
  balancer: Balancer;
}

/** A fresh memory, engines and Balancer; its slow start and drain reaper run on `clock`. */
export function makeEnv(clock: Clock = realClock): Env {
  const memory = createSharedMemory();
  const control = instantiateEngine(engineModule, memory, 0);
  const worker = instantiateEngine(engineModule, memory, 1);
  const balancer = new Balancer(memory, control, silentLogger, clock);
  return { memory, control, worker, balancer };
}

const open: Env[] = [];

/** A fresh env with `services` applied; closed by closeEnvs (each test file's afterEach). */
export function env(...services: ServiceSpec[]): Env {
  return envOn(realClock, ...services);
}

/** As env, with the balancer's timers on `clock` (a TestClock, for the slow-start and drain timing). */
export function envOn(clock: Clock, ...services: ServiceSpec[]): Env {
  const e = makeEnv(clock);
  open.push(e);
  e.balancer.apply(config(...services));
  return e;
}

/** Stops the timers of every env made by `env` since the last call. */
export function closeEnvs(): void {
  for (const e of open.splice(0)) e.balancer.close();
}

export interface BackendSpec {
  address: string;
  weight?: number;
  max_connections?: number;
  backup?: boolean;
  state?: 'ready' | 'drain' | 'maint';
}

export interface ServiceSpec {
  name?: string;
  listen?: string;
  balance?: 'maglev' | 'leastconn' | 'roundrobin' | 'random';
  table_size?: number;
  hash_balance_factor?: number;
  max_connections?: number;
  slow_start?: string | number;
  health?: Record<string, unknown>;
  backends: BackendSpec[];
}

/** A validated config of the given services (names s0, s1… and listen ports by default). */
export function config(...services: ServiceSpec[]): Config {
  return configSchema.parse({
    services: services.map((s, i) => ({
      name: s.name ?? `s${i}`,
      listen: s.listen ?? `127.1.9.1:${5000 + i}`,
      ...s,
    })),
  });
}

/** `n` backends "10.0.<i/250>.<i%250>:5432" with weight 1 (or as `f` says). */
export function backends(n: number, f: (i: number) => Partial<BackendSpec> = () => ({})): BackendSpec[] {
  return Array.from({ length: n }, (_, i) => ({ address: `10.0.${Math.floor(i / 250)}.${(i % 250) + 1}:5432`, ...f(i) }));
}

/** Slot counts per backend id in a ring. */
export function ownership(ring: Uint16Array): Map<number, number> {
  const m = new Map<number, number>();
  for (const b of ring) m.set(b, (m.get(b) ?? 0) + 1);
  return m;
}

/** xorshift32: a seeded sequence in [0, 1), so a failure replays. */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}
