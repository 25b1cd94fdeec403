/**
 * The engine benchmark's second thread: the control plane's part of a weight or state change,
 * in a loop (write the effective weight and the state of one member, then rebuild the service),
 * over the benchmark's shared memory, until told to stop. Reports how many rebuilds it made.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { instantiateEngine } from '../../src/balancer/engine.ts';
import { B_EFF_WEIGHT, B_STATE, BACKEND_UP, BACKEND_DOWN, backendAddr } from '../../src/shm/layout.ts';

const { module, memory, services, members, stop } = workerData as {
  module: WebAssembly.Module; memory: WebAssembly.Memory; services: number[]; members: number[][]; stop: Int32Array;
};
// Worker id 3: its own scratch and tallies (it never acquires).
const engine = instantiateEngine(module, memory, 3);
const u32 = new Uint32Array(memory.buffer);
const i32 = new Int32Array(memory.buffer);
let n = 0;
while (Atomics.load(stop, 0) === 0) {
  const k = n % services.length;
  const list = members[k];
  const b = list[(n >> 1) % list.length];
  Atomics.store(i32, (backendAddr(b) + B_EFF_WEIGHT) >> 2, 16 * (1 + (n % 3)));
  Atomics.store(u32, (backendAddr(b) + B_STATE) >> 2, n % 4 === 0 ? BACKEND_DOWN : BACKEND_UP);
  engine.rebuild(services[k]);
  // Put it back up at the next turn of this service (a state change is a short outage).
  if (n % 4 === 0) {
    Atomics.store(u32, (backendAddr(b) + B_STATE) >> 2, BACKEND_UP);
    engine.rebuild(services[k]);
  }
  n++;
}
parentPort?.postMessage(n);
