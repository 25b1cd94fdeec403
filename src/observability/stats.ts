/**
 * Reading the data plane's figures out of shared memory, for the metrics, the admin API and the
 * status page. The control plane never receives a message per connection: each worker adds to its
 * own f64 counter slots (one writer per slot), and this module sums the slots over the workers
 * when somebody asks (a Prometheus scrape, an API call, the status page's poll — about once a
 * second, never per connection). Live gauges (active, queued, state, weights) are read straight
 * from the service and backend records.
 *
 * Names and addresses are not in shared memory: the caller passes the Balancer's directory
 * (`describe()`), which maps service names and backend "host:port" to their record indexes.
 */
import {
  BACKEND_COUNTERS, BACKEND_STATES, BC_BYTES_IN, BC_BYTES_OUT, BC_CONNECT_FAILURES, BC_CONNECT_TIME_MS, BC_CONNECTIONS,
  BC_DGRAMS_IN, BC_DGRAMS_OUT, BC_DROP_BASE, BC_KILLED, BC_RETRIES, B_EFF_WEIGHT, B_FLAGS, B_MAX_CONN, B_STATE, B_WEIGHT, BF_BACKUP, MAX_WORKERS,
  SC_ACCEPTED, SC_BYTES_IN, SC_BYTES_OUT, SC_CONNECT_TIME_MS, SC_QUEUED, SC_QUEUED_NO_BACKEND, SC_QUEUE_TIME_MS, SC_QUEUE_TIMEOUTS, SC_RETRIES,
  SC_DGRAMS_IN, SC_DGRAMS_OUT, SC_DROP_BASE, SC_TERM_BASE, SERVICE_COUNTERS, S_MAX_CONN, S_QUEUE_MAX, TERM_REASONS,
  UDP_BACKEND_DROP_REASONS, UDP_DROP_REASONS, WEIGHT_SCALE,
  backendCounterIndex, serviceCounterIndex,
  type BackendStateName, type TerminationReason,
} from '../shm/layout.ts';
import { SharedRecords } from '../balancer/records.ts';

/** The part of `Balancer.describe()` this module needs: names, addresses and record indexes. */
export interface DirectoryService {
  name: string;
  index: number;
  /** Absent: tcp. */
  protocol?: 'tcp' | 'udp';
  backends: readonly { address: string; index: number }[];
}

export interface ServiceCounters {
  /** Connections accepted by the service's listener. */
  accepted: number;
  /** Connections that had to wait in the queue. */
  queued: number;
  /** Of those, connections that waited because no backend was eligible (queue.when_down). */
  queued_no_backend: number;
  queue_timeouts: number;
  /** Connect attempts redispatched to another backend. */
  retries: number;
  /** Client → backend. */
  bytes_in: number;
  /** Backend → client. */
  bytes_out: number;
  connect_time_ms: number;
  queue_time_ms: number;
  /** Closed connections (UDP: ended flows; idle_timeout = expired) by termination reason. */
  terminations: Record<TerminationReason, number>;
  /** UDP: datagrams client → backend and back (0 for TCP services). */
  datagrams_in: number;
  datagrams_out: number;
  /** UDP: datagrams dropped, by reason (no_backend, limit, oversized, unreachable). */
  drops: Record<UdpDropReason, number>;
}

export type UdpDropReason = (typeof UDP_DROP_REASONS)[number];
export type UdpBackendDropReason = (typeof UDP_BACKEND_DROP_REASONS)[number];

export interface BackendCounters {
  /** Sessions established to this backend. */
  connections: number;
  connect_failures: number;
  bytes_in: number;
  bytes_out: number;
  /** Attempts that failed here and were redispatched. */
  retries: number;
  /** Sessions closed because the backend was marked down. */
  killed: number;
  connect_time_ms: number;
  /** UDP: datagrams client → backend and back through this backend's flows (0 for TCP). */
  datagrams_in: number;
  datagrams_out: number;
  /** UDP: datagrams this backend's flows dropped, by reason (oversized replies, ICMP unreachable). */
  drops: Record<UdpBackendDropReason, number>;
}

export interface BackendStats {
  address: string;
  index: number;
  /** The record's state as the engine sees it: up, down, drain or maint. */
  state: BackendStateName;
  weight: number;
  /** The weight the engine uses now (lower than `weight` during slow start), in weight units. */
  effective_weight: number;
  backup: boolean;
  active: number;
  /** 0 = unlimited. */
  max_connections: number;
  counters: BackendCounters;
}

export interface ServiceStats {
  name: string;
  index: number;
  protocol: 'tcp' | 'udp';
  active: number;
  /** Connections waiting in the queue now. */
  queued: number;
  /** 0 = unlimited. */
  max_connections: number;
  queue_max: number;
  counters: ServiceCounters;
  backends: BackendStats[];
}

/**
 * A service's counters summed over every worker slot, indexed by SC_*: slots of workers that never
 * existed stay zero, those of retired or crashed workers keep what they counted (so the sums never
 * go back). The one place that sums them.
 */
export function sumServiceCounters(memory: WebAssembly.Memory, service: number): Float64Array {
  const f64 = new Float64Array(memory.buffer);
  const sums = new Float64Array(SERVICE_COUNTERS);
  for (let w = 0; w < MAX_WORKERS; w++) {
    const base = serviceCounterIndex(w, service, 0);
    for (let c = 0; c < SERVICE_COUNTERS; c++) sums[c] += f64[base + c];
  }
  return sums;
}

/** A backend's counters summed over the workers' slots, indexed by BC_*. */
export function sumBackendCounters(memory: WebAssembly.Memory, backend: number): Float64Array {
  const f64 = new Float64Array(memory.buffer);
  const sums = new Float64Array(BACKEND_COUNTERS);
  for (let w = 0; w < MAX_WORKERS; w++) {
    const base = backendCounterIndex(w, backend, 0);
    for (let c = 0; c < BACKEND_COUNTERS; c++) sums[c] += f64[base + c];
  }
  return sums;
}

/** Which backend or service a counter slot belonged to when its baseline was taken. */
interface Owner {
  key: string;
  base: Float64Array;
}

export class Stats {
  readonly #memory: WebAssembly.Memory;
  /** The service and backend records, read through the balancer's typed view (one reader of the layout). */
  readonly #records: SharedRecords;
  /**
   * Counter slots are reused when a removed backend's (or service's) slot goes to a new one, and
   * the data plane never zeroes counters (a worker's plain add would race a reset). So each slot
   * remembers its owner and the sums at the moment it changed hands; figures are reported
   * relative to that baseline, and a new backend starts at 0 as Prometheus expects.
   */
  readonly #backendOwners = new Map<number, Owner>();
  readonly #serviceOwners = new Map<number, Owner>();

  /**
   * Every worker slot is summed (MAX_WORKERS): a reload can add workers under new ids, and the
   * slots of retired workers keep what they counted.
   */
  constructor(memory: WebAssembly.Memory) {
    this.#memory = memory;
    this.#records = new SharedRecords(memory);
  }

  #sumService(service: number): Float64Array {
    return sumServiceCounters(this.#memory, service);
  }

  #sumBackend(backend: number): Float64Array {
    return sumBackendCounters(this.#memory, backend);
  }

  /** `raw` minus the baseline of the slot's owner; a slot seen with a new owner is rebased first. */
  static #relative(owners: Map<number, Owner>, index: number, key: string, raw: Float64Array): Float64Array {
    let owner = owners.get(index);
    if (owner === undefined) {
      // First sight: the slot's counts so far are this owner's (fresh memory starts at 0).
      owner = { key, base: new Float64Array(raw.length) };
      owners.set(index, owner);
    } else if (owner.key !== key) {
      owner = { key, base: raw.slice() };
      owners.set(index, owner);
    }
    for (let c = 0; c < raw.length; c++) raw[c] -= owner.base[c];
    return raw;
  }

  /**
   * Marks backend slot `index` as now belonging to `address` of `service`, with its counts
   * starting at 0 from now. Called on the Balancer's 'backend-state' event for an added backend
   * (from 'free'), before any worker can reach it.
   */
  rebaseBackend(index: number, service: string, address: string): void {
    const key = `${service}\u0000${address}`;
    const owner = this.#backendOwners.get(index);
    if (owner?.key === key) return;
    this.#backendOwners.set(index, { key, base: this.#sumBackend(index) });
  }

  serviceCounters(service: number, name = ''): ServiceCounters {
    const sums = Stats.#relative(this.#serviceOwners, service, name, this.#sumService(service));
    const terminations = {} as Record<TerminationReason, number>;
    TERM_REASONS.forEach((reason, i) => { terminations[reason] = sums[SC_TERM_BASE + i]; });
    const drops = {} as Record<UdpDropReason, number>;
    UDP_DROP_REASONS.forEach((reason, i) => { drops[reason] = sums[SC_DROP_BASE + i]; });
    return {
      accepted: sums[SC_ACCEPTED],
      queued: sums[SC_QUEUED],
      queued_no_backend: sums[SC_QUEUED_NO_BACKEND],
      queue_timeouts: sums[SC_QUEUE_TIMEOUTS],
      retries: sums[SC_RETRIES],
      bytes_in: sums[SC_BYTES_IN],
      bytes_out: sums[SC_BYTES_OUT],
      connect_time_ms: sums[SC_CONNECT_TIME_MS],
      queue_time_ms: sums[SC_QUEUE_TIME_MS],
      terminations,
      datagrams_in: sums[SC_DGRAMS_IN],
      datagrams_out: sums[SC_DGRAMS_OUT],
      drops,
    };
  }

  backendCounters(backend: number, service = '', address = ''): BackendCounters {
    const sums = Stats.#relative(this.#backendOwners, backend, `${service}\u0000${address}`, this.#sumBackend(backend));
    const drops = {} as Record<UdpBackendDropReason, number>;
    UDP_BACKEND_DROP_REASONS.forEach((reason, i) => { drops[reason] = sums[BC_DROP_BASE + i]; });
    return {
      connections: sums[BC_CONNECTIONS],
      connect_failures: sums[BC_CONNECT_FAILURES],
      bytes_in: sums[BC_BYTES_IN],
      bytes_out: sums[BC_BYTES_OUT],
      retries: sums[BC_RETRIES],
      killed: sums[BC_KILLED],
      connect_time_ms: sums[BC_CONNECT_TIME_MS],
      datagrams_in: sums[BC_DGRAMS_IN],
      datagrams_out: sums[BC_DGRAMS_OUT],
      drops,
    };
  }

  /** Everything about every service and backend named in `directory`, read now. */
  snapshot(directory: readonly DirectoryService[]): ServiceStats[] {
    const r = this.#records;
    return directory.map((s) => ({
      name: s.name,
      index: s.index,
      protocol: s.protocol ?? 'tcp',
      active: r.serviceActive(s.index),
      queued: r.serviceQueued(s.index),
      max_connections: r.serviceField(s.index, S_MAX_CONN) | 0,
      queue_max: r.serviceField(s.index, S_QUEUE_MAX),
      counters: this.serviceCounters(s.index, s.name),
      backends: s.backends.map((b) => ({
        address: b.address,
        index: b.index,
        state: BACKEND_STATES[r.backendField(b.index, B_STATE)] ?? 'free',
        weight: r.backendField(b.index, B_WEIGHT),
        effective_weight: r.backendField(b.index, B_EFF_WEIGHT) / WEIGHT_SCALE,
        backup: (r.backendField(b.index, B_FLAGS) & BF_BACKUP) !== 0,
        active: r.backendActive(b.index),
        max_connections: r.backendField(b.index, B_MAX_CONN),
        counters: this.backendCounters(b.index, s.name, b.address),
      })),
    }));
  }

}
