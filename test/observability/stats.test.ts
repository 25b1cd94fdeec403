/**
 * Stats and the Prometheus registry over a shared memory written directly, as workers would:
 * counters in several worker slots must be summed, gauges read from the records, and every
 * series named fulcrum_… with the exact values.
 */
import { describe, expect, it } from 'vitest';
import {
  BACKEND_DRAIN, BACKEND_UP, BC_BYTES_IN, BC_BYTES_OUT, BC_CONNECTIONS, BF_BACKUP, B_ACTIVE, B_EFF_WEIGHT, B_FLAGS, B_STATE, B_WEIGHT,
  SC_ACCEPTED, SC_BYTES_IN, SC_TERM_BASE, S_ACTIVE, S_QUEUED, TERM_CLIENT_CLOSED, TERM_IDLE_TIMEOUT, WEIGHT_SCALE,
  backendAddr, backendCounterIndex, createSharedMemory, serviceAddr, serviceCounterIndex,
} from '../../src/shm/layout.ts';
import { Stats } from '../../src/observability/stats.ts';
import { Metrics } from '../../src/observability/prom.ts';

function setup() {
  const memory = createSharedMemory();
  const f64 = new Float64Array(memory.buffer);
  const i32 = new Int32Array(memory.buffer);
  const u32 = new Uint32Array(memory.buffer);
  // service 3 with backends 10 (up, weight 2, slow-starting at 1.5) and 11 (drain, backup)
  i32[(serviceAddr(3) + S_ACTIVE) >> 2] = 5;
  i32[(serviceAddr(3) + S_QUEUED) >> 2] = 2;
  u32[(backendAddr(10) + B_STATE) >> 2] = BACKEND_UP;
  i32[(backendAddr(10) + B_WEIGHT) >> 2] = 2;
  i32[(backendAddr(10) + B_EFF_WEIGHT) >> 2] = 1.5 * WEIGHT_SCALE;
  i32[(backendAddr(10) + B_ACTIVE) >> 2] = 4;
  u32[(backendAddr(11) + B_STATE) >> 2] = BACKEND_DRAIN;
  u32[(backendAddr(11) + B_FLAGS) >> 2] = BF_BACKUP;
  i32[(backendAddr(11) + B_ACTIVE) >> 2] = 1;
  // worker 0 and worker 5 both served connections
  f64[serviceCounterIndex(0, 3, SC_ACCEPTED)] = 7;
  f64[serviceCounterIndex(5, 3, SC_ACCEPTED)] = 4;
  f64[serviceCounterIndex(0, 3, SC_BYTES_IN)] = 1000;
  f64[serviceCounterIndex(5, 3, SC_BYTES_IN)] = 234;
  f64[serviceCounterIndex(0, 3, SC_TERM_BASE + TERM_CLIENT_CLOSED)] = 3;
  f64[serviceCounterIndex(15, 3, SC_TERM_BASE + TERM_IDLE_TIMEOUT)] = 2;
  f64[backendCounterIndex(0, 10, BC_CONNECTIONS)] = 6;
  f64[backendCounterIndex(5, 10, BC_CONNECTIONS)] = 3;
  f64[backendCounterIndex(5, 10, BC_BYTES_OUT)] = 4096;
  f64[backendCounterIndex(2, 11, BC_BYTES_IN)] = 17;
  // another service's slot must not leak in
  f64[serviceCounterIndex(0, 4, SC_ACCEPTED)] = 99;
  const directory = [{ name: 'redis', index: 3, backends: [{ address: '127.5.1.1:7001', index: 10 }, { address: '127.5.1.2:7001', index: 11 }] }];
  return { memory, directory };
}

describe('Stats', () => {
  it('sums per-worker counters and reads gauges from the records', () => {
    const { memory, directory } = setup();
    const [s] = new Stats(memory).snapshot(directory);
    expect(s.name).toBe('redis');
    expect(s.active).toBe(5);
    expect(s.queued).toBe(2);
    expect(s.counters.accepted).toBe(11);
    expect(s.counters.bytes_in).toBe(1234);
    expect(s.counters.terminations.client_closed).toBe(3);
    expect(s.counters.terminations.idle_timeout).toBe(2);
    expect(s.counters.terminations.server_closed).toBe(0);
    const [b0, b1] = s.backends;
    expect(b0).toMatchObject({ address: '127.5.1.1:7001', state: 'up', weight: 2, effective_weight: 1.5, backup: false, active: 4 });
    expect(b0.counters.connections).toBe(9);
    expect(b0.counters.bytes_out).toBe(4096);
    expect(b1).toMatchObject({ state: 'drain', backup: true, active: 1 });
    expect(b1.counters.bytes_in).toBe(17);
    expect(b1.counters.connections).toBe(0);
  });
});

describe('Metrics', () => {
  it('exposes fulcrum_ series with the summed values', async () => {
    const { memory, directory } = setup();
    const metrics = new Metrics({
      stats: new Stats(memory),
      directory: () => directory,
      failover: () => ({ role: 'backup', transitions: 3 }),
      reloads: () => ({ applied: 2, refused: 1 }),
    });
    metrics.observeProbe({ service: 'redis', address: '127.5.1.1:7001', ok: true, latency_ms: 3 });
    metrics.observeProbe({ service: 'redis', address: '127.5.1.1:7001', ok: false, latency_ms: 1000 });
    // Not made (fulcrum out of files): counted apart, in neither the durations nor the last result.
    metrics.observeProbe({ service: 'redis', address: '127.5.1.1:7001', ok: false, latency_ms: 0, skipped: 'EMFILE' });
    const text = await metrics.text();
    const line = (prefix: string): string | undefined => text.split('\n').find((l) => l.startsWith(prefix));
    expect(line('fulcrum_service_connections_total{service="redis"}')).toBe('fulcrum_service_connections_total{service="redis"} 11');
    expect(line('fulcrum_service_active_connections{service="redis"}')).toMatch(/ 5$/);
    expect(line('fulcrum_service_queue_length{service="redis"}')).toMatch(/ 2$/);
    expect(line('fulcrum_service_bytes_in_total{service="redis"}')).toMatch(/ 1234$/);
    expect(line('fulcrum_service_terminations_total{service="redis",reason="idle_timeout"}')).toMatch(/ 2$/);
    expect(line('fulcrum_backend_connections_total{service="redis",backend="127.5.1.1:7001"}')).toMatch(/ 9$/);
    expect(line('fulcrum_backend_bytes_out_total{service="redis",backend="127.5.1.1:7001"}')).toMatch(/ 4096$/);
    expect(line('fulcrum_backend_state{service="redis",backend="127.5.1.2:7001",state="drain"}')).toMatch(/ 1$/);
    expect(line('fulcrum_backend_state{service="redis",backend="127.5.1.2:7001",state="up"}')).toMatch(/ 0$/);
    expect(line('fulcrum_backend_up{service="redis",backend="127.5.1.1:7001"}')).toMatch(/ 1$/);
    expect(line('fulcrum_backend_effective_weight{service="redis",backend="127.5.1.1:7001"}')).toMatch(/ 1.5$/);
    expect(line('fulcrum_health_probes_total{service="redis",backend="127.5.1.1:7001",result="fail"}')).toMatch(/ 1$/);
    expect(line('fulcrum_health_probes_total{service="redis",backend="127.5.1.1:7001",result="skipped"}')).toMatch(/ 1$/);
    expect(line('fulcrum_health_probe_duration_seconds_count{service="redis",backend="127.5.1.1:7001"}')).toMatch(/ 2$/);
    expect(line('fulcrum_health_probe_last_success{service="redis",backend="127.5.1.1:7001"}')).toMatch(/ 0$/);
    expect(line('fulcrum_failover_role{role="backup"}')).toMatch(/ 1$/);
    expect(line('fulcrum_failover_role{role="master"}')).toMatch(/ 0$/);
    expect(line('fulcrum_failover_transitions_total')).toBe('fulcrum_failover_transitions_total 3');
    expect(line('fulcrum_reloads_total{result="refused"}')).toMatch(/ 1$/);
    expect(text).toMatch(/^fulcrum_nodejs_eventloop_lag_seconds \d/m);
    // No series without the prefix.
    for (const l of text.split('\n')) if (l && !l.startsWith('#')) expect(l.startsWith('fulcrum_')).toBe(true);

    // A backend gone from the directory (reload) disappears from the next scrape.
    directory[0].backends.pop();
    metrics.forgetBackend('redis', '127.5.1.2:7001');
    expect(await metrics.text()).not.toContain('127.5.1.2:7001');
  });
});

describe('Stats baselines', () => {
  it('starts a reused backend slot at 0 for its new owner', () => {
    const { memory, directory } = setup();
    const stats = new Stats(memory);
    const f64 = new Float64Array(memory.buffer);
    expect(stats.snapshot(directory)[0].backends[0].counters.connections).toBe(9);
    // Slot 10 is freed and given to another backend: the event-driven rebase and the first-sight
    // rebase (a new address in the directory) both start it at 0.
    stats.rebaseBackend(10, 'redis', '127.5.1.9:7001');
    f64[backendCounterIndex(1, 10, BC_CONNECTIONS)] += 2;
    const moved = [{ ...directory[0], backends: [{ address: '127.5.1.9:7001', index: 10 }] }];
    expect(stats.snapshot(moved)[0].backends[0].counters.connections).toBe(2);
    const again = [{ ...directory[0], backends: [{ address: '127.5.1.7:7001', index: 10 }] }];
    expect(stats.snapshot(again)[0].backends[0].counters.connections).toBe(0);
  });
});
