/**
 * Reading the data plane's counters: each worker writes its own f64 slots (plain stores, one
 * writer per slot); a reader sums the slots of every worker. Control path only (metrics, status,
 * tests); the values may be a moment old, never torn (aligned f64 stores).
 */
import { backendCounterIndex, MAX_WORKERS, serviceCounterIndex, SC_TERM_BASE, TERM_REASONS, type TerminationReason } from '../shm/layout.ts';

export function sumServiceCounter(memory: WebAssembly.Memory, service: number, counter: number): number {
  const f64 = new Float64Array(memory.buffer);
  let sum = 0;
  for (let w = 0; w < MAX_WORKERS; w++) sum += f64[serviceCounterIndex(w, service, counter)];
  return sum;
}

export function sumBackendCounter(memory: WebAssembly.Memory, backend: number, counter: number): number {
  const f64 = new Float64Array(memory.buffer);
  let sum = 0;
  for (let w = 0; w < MAX_WORKERS; w++) sum += f64[backendCounterIndex(w, backend, counter)];
  return sum;
}

/** Connections closed per termination reason, for one service. */
export function terminations(memory: WebAssembly.Memory, service: number): Record<TerminationReason, number> {
  const out = {} as Record<TerminationReason, number>;
  TERM_REASONS.forEach((r, i) => (out[r] = sumServiceCounter(memory, service, SC_TERM_BASE + i)));
  return out;
}
