/**
 * Plain-TypeScript reference of the engine's acquire/release (assembly/index.ts), over the same
 * shared memory, so the benchmark compares like with like. Benchmark only.
 */
import {
  MAX_SERVICES, MAX_BACKENDS, S_STATE, S_QUEUED, S_ALGORITHM, S_MAX_CONN, S_ACTIVE, S_RELEASE_SEQ, SERVICE_ACTIVE, ALG_MAGLEV,
  ALG_LEASTCONN, ALG_ROUNDROBIN, ALG_RANDOM, B_ACTIVE, PICK_SERVICE_FULL, PICK_BAD_SERVICE,
} from '../../src/shm/layout.ts';
import { u32, i32, serviceAt, backendAt, clearTried, bind } from './records.ts';
import { leastconnPick } from './leastconn.ts';
import { maglevPick, maglevBuild } from './maglev.ts';
import { roundrobinPick } from './roundrobin.ts';
import { randomPick } from './random.ts';

export { bind, leastconnPick, maglevPick, maglevBuild, roundrobinPick, randomPick };

function pick(s: number, hash: number): number {
  const alg = u32[(serviceAt(s) + S_ALGORITHM) >> 2];
  if (alg === ALG_LEASTCONN) return leastconnPick(s);
  if (alg === ALG_MAGLEV) return maglevPick(s, hash);
  if (alg === ALG_ROUNDROBIN) return roundrobinPick(s);
  if (alg === ALG_RANDOM) return randomPick(s);
  return leastconnPick(s);
}

export function acquire(s: number, hash: number): number {
  if (s >= MAX_SERVICES) return PICK_BAD_SERVICE;
  const sa = serviceAt(s);
  if (Atomics.load(u32, (sa + S_STATE) >> 2) !== SERVICE_ACTIVE) return PICK_BAD_SERVICE;
  clearTried();
  const max = i32[(sa + S_MAX_CONN) >> 2];
  const at = (sa + S_ACTIVE) >> 2;
  if (max > 0) {
    let cur = Atomics.load(i32, at);
    for (;;) {
      if (cur >= max) return PICK_SERVICE_FULL;
      const seen = Atomics.compareExchange(i32, at, cur, cur + 1);
      if (seen === cur) break;
      cur = seen;
    }
  } else {
    Atomics.add(i32, at, 1);
  }
  const b = pick(s, hash);
  if (b < 0) Atomics.sub(i32, at, 1);
  return b;
}

export function release(s: number, backend: number): void {
  if (backend >= 0 && backend < MAX_BACKENDS) Atomics.sub(i32, (backendAt(backend) + B_ACTIVE) >> 2, 1);
  if (s >= MAX_SERVICES) return;
  const sa = serviceAt(s);
  Atomics.sub(i32, (sa + S_ACTIVE) >> 2, 1);
  Atomics.add(i32, (sa + S_RELEASE_SEQ) >> 2, 1);
  if (Atomics.load(i32, (sa + S_QUEUED) >> 2) > 0) Atomics.notify(i32, (sa + S_RELEASE_SEQ) >> 2);
}
