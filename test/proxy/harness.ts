/**
 * Starting a real fulcrum (shared memory, engine, balancer, worker threads) for proxy tests, and
 * reading its counters. Every test file stops what it starts in afterAll.
 */
import { parseConfig } from '../../src/config/load.ts';
import { startFulcrum, type FulcrumHandle } from '../../src/main.ts';
import { silentLogger } from '../../src/observability/log.ts';
import { sumBackendCounters, sumServiceCounters } from '../../src/observability/stats.ts';
import { B_ACTIVE, backendAddr, serviceAddr, S_ACTIVE, S_QUEUED, SC_TERM_BASE, TERM_REASONS, type TerminationReason } from '../../src/shm/layout.ts';

/** Starts fulcrum from YAML text (logging silenced unless the YAML says otherwise). */
export async function startProxy(yaml: string): Promise<FulcrumHandle> {
  const config = parseConfig(yaml, '<test>');
  return startFulcrum(config, { logger: silentLogger });
}

export function serviceCounter(h: FulcrumHandle, service: string, counter: number): number {
  return sumServiceCounters(h.memory, h.balancer.serviceIndex(service))[counter];
}

export function backendCounter(h: FulcrumHandle, service: string, address: string, counter: number): number {
  return sumBackendCounters(h.memory, h.balancer.backendIndex(service, address))[counter];
}

export function reasons(h: FulcrumHandle, service: string): Record<TerminationReason, number> {
  const sums = sumServiceCounters(h.memory, h.balancer.serviceIndex(service));
  return Object.fromEntries(TERM_REASONS.map((r, i) => [r, sums[SC_TERM_BASE + i]])) as Record<TerminationReason, number>;
}

/** Live S_ACTIVE / S_QUEUED of a service and B_ACTIVE of its backends, straight from the shared memory. */
export function activeCounts(h: FulcrumHandle, service: string, backends: string[]): { active: number; queued: number; backends: number[] } {
  const i32 = new Int32Array(h.memory.buffer);
  const s = h.balancer.serviceIndex(service);
  return {
    active: Atomics.load(i32, (serviceAddr(s) + S_ACTIVE) >> 2),
    queued: Atomics.load(i32, (serviceAddr(s) + S_QUEUED) >> 2),
    backends: backends.map((a) => Atomics.load(i32, (backendAddr(h.balancer.backendIndex(service, a)) + B_ACTIVE) >> 2)),
  };
}
