/**
 * A data-plane worker for the leastconn tree's concurrency test: its own engine instance over the
 * shared memory, `rounds` random acquires and releases of its own connections; reports how many it
 * still holds at the end.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { instantiateEngine } from '../../src/balancer/engine.ts';

const { module, memory, id, service, rounds } = workerData as {
  module: WebAssembly.Module; memory: WebAssembly.Memory; id: number; service: number; rounds: number;
};
const engine = instantiateEngine(module, memory, id);
const held: number[] = [];
for (let i = 0; i < rounds; i++) {
  if (held.length === 0 || Math.random() < 0.52) {
    const b = engine.acquire(service, 0);
    if (b >= 0) held.push(b);
  } else {
    const k = Math.floor(Math.random() * held.length);
    engine.release(service, held[k]);
    held[k] = held[held.length - 1];
    held.pop();
  }
}
parentPort?.postMessage(held.length);
