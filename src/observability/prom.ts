/**
 * Prometheus metrics. The ONLY module that imports prom-client: everything else hands this one
 * plain figures (Stats snapshots, probe results, role changes), so the metrics library could be
 * swapped without touching the data plane or the admin server.
 *
 * Data-plane figures are not pushed here per connection. At scrape time `text()` takes one
 * snapshot of shared memory (Stats sums the per-worker counters) and each metric's collect()
 * copies its part of that snapshot into prom-client's series. Series of services and backends
 * that disappeared on a reload disappear from the next scrape, because every collect() starts
 * from reset().
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { BACKEND_STATES, TERM_REASONS, UDP_BACKEND_DROP_REASONS, UDP_DROP_REASONS } from '../shm/layout.ts';
import type { DirectoryService, ServiceStats, Stats } from './stats.ts';
import { buildInfo } from '../version.ts';

export const METRICS_PREFIX = 'fulcrum_';

/** Failover roles, as VRRP names them. */
export const FAILOVER_ROLES = ['init', 'backup', 'master', 'fault'] as const;
/** Why a failover instance is in fault: its VIP could not be held, or its track fails. */
export const FAULT_KINDS = ['vip', 'track'] as const;
/** fulcrum_failover_vip_errors_total's kind for each VIP command error code. */
export const VIP_ERROR_KINDS = { FULCRUM_ERR_VIP_ADD: 'add', FULCRUM_ERR_VIP_REMOVE: 'remove', FULCRUM_ERR_GARP: 'garp' } as const;

/** One probe result: the health monitor's 'probe' event has this shape. */
export interface ProbeObservation {
  service: string;
  /** Backend "host:port". */
  address: string;
  ok: boolean;
  /** How long the probe took, in milliseconds. */
  latency_ms: number;
  /** The probe could not be made here (out of files…): counted as result "skipped", nothing else. */
  skipped?: string;
}

/** Roles a database check can report (the label values of fulcrum_backend_role). */
export const BACKEND_ROLES = ['primary', 'replica'] as const;

/** The role a backend last reported (the health monitor keeps it; read per scrape). */
export interface RoleObservation {
  service: string;
  /** Backend "host:port". */
  address: string;
  reported: (typeof BACKEND_ROLES)[number];
  /** Epoch milliseconds of the probe that reported it. */
  at: number;
  /** The service routes to this role. */
  eligible: boolean;
  /** Replicas of a check with max_lag: the lag the last probe read, in ms (null: unknown). */
  lag_ms?: number | null;
}

/** What the BGP metrics read from src/bgp's status (its shape, kept narrow here). */
export interface BgpStatusView {
  speaker: string;
  sessions_up: number | null;
  vips: readonly { vip: string; announced: boolean }[];
  counts: { announce: number; withdraw: number; failed: number };
}

export interface MetricsSources {
  stats: Stats;
  /** The Balancer's directory of services and backends (`balancer.describe()`), read per scrape. */
  directory: () => readonly DirectoryService[];
  /**
   * Failover's current role and failover count, when `ha` is configured; why it is in fault, and
   * its failed VIP commands by code (FailoverStatus, src/failover/index.ts).
   */
  failover?: () => { role: string; transitions: number; fault?: { kind: string } | null; errors?: Record<string, number> } | undefined;
  /** The BGP speaker's sessions and announcements, when `bgp` is configured. */
  bgp?: () => BgpStatusView;
  /** Reloads applied and refused since start. */
  reloads?: () => { applied: number; refused: number };
  /** The role each backend with a database check last reported. */
  roles?: () => readonly RoleObservation[];
  /** The data path's descriptor reserve (proxy/descriptors.ts): held, accepting, pauses, the stop mark. */
  descriptors?: () => { held: number; accepting: boolean; pauses: number; stop: number };
  /** The data path the workers run (the pool's): fulcrum_build_info's relay label. */
  dataPath?: () => 'relay' | 'javascript';
}

type ServiceLabels = 'service';
type BackendLabels = 'service' | 'backend';

/** How often the main thread's event-loop delay is sampled (ms). */
export const EVENT_LOOP_SAMPLE_MS = 100;

export class Metrics {
  readonly registry = new Registry();
  readonly #sources: MetricsSources;
  /** The snapshot the collect() callbacks of a scrape read; taken at the start of text(). */
  #snapshot: ServiceStats[] = [];
  readonly #probeDuration: Histogram<BackendLabels>;
  readonly #probes: Counter<BackendLabels | 'result'>;
  readonly #probeLast: Gauge<BackendLabels>;
  readonly #probeLastOk: Gauge<BackendLabels>;
  /** Last probe of each backend: kept here so the gauges can drop backends that were removed. */
  readonly #lastProbe = new Map<string, ProbeObservation>();

  constructor(sources: MetricsSources) {
    this.#sources = sources;
    const registers = [this.registry];
    // Process metrics, among them fulcrum_nodejs_eventloop_lag_seconds and its percentiles
    // (prom-client samples them with perf_hooks.monitorEventLoopDelay). Sampled every 100 ms, not
    // prom-client's default 10: each sample wakes the main thread, which on a busy machine takes
    // a core from the data-plane workers; 10 wakes a second serve a lag gauge as well as 100.
    collectDefaultMetrics({ register: this.registry, prefix: METRICS_PREFIX, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });

    // What is running, as Prometheus's own *_build_info: always 1, the facts in the labels, so a
    // dashboard joins on it and an upgrade shows as a label change. relay: "native" when the
    // workers move bytes with the C relay, "none" on the JavaScript path; commit "" when unknown.
    const dataPath = sources.dataPath;
    new Gauge<'version' | 'commit' | 'node' | 'relay'>({
      name: METRICS_PREFIX + 'build_info', help: 'Always 1; labels: the fulcrum version, the commit it was built from, the Node.js version, and whether the native relay is in use (native, none).',
      labelNames: ['version', 'commit', 'node', 'relay'], registers,
      collect() {
        this.reset();
        const { version, commit } = buildInfo();
        this.set({ version, commit: commit ?? '', node: process.version, relay: dataPath?.() === 'relay' ? 'native' : 'none' }, 1);
      },
    });

    const snap = (): ServiceStats[] => this.#snapshot;
    const serviceGauge = (name: string, help: string, value: (s: ServiceStats) => number): void => {
      new Gauge<ServiceLabels>({
        name: METRICS_PREFIX + name, help, labelNames: ['service'], registers,
        collect() {
          this.reset();
          for (const s of snap()) this.set({ service: s.name }, value(s));
        },
      });
    };
    const serviceCounter = (name: string, help: string, value: (s: ServiceStats) => number): void => {
      new Counter<ServiceLabels>({
        name: METRICS_PREFIX + name, help, labelNames: ['service'], registers,
        collect() {
          this.reset();
          for (const s of snap()) this.inc({ service: s.name }, value(s));
        },
      });
    };
    type B = ServiceStats['backends'][number];
    const backendGauge = (name: string, help: string, value: (b: B) => number): void => {
      new Gauge<BackendLabels>({
        name: METRICS_PREFIX + name, help, labelNames: ['service', 'backend'], registers,
        collect() {
          this.reset();
          for (const s of snap()) for (const b of s.backends) this.set({ service: s.name, backend: b.address }, value(b));
        },
      });
    };
    /** `udpOnly`: the series exist for UDP services' backends only (datagrams mean nothing for TCP). */
    const backendCounter = (name: string, help: string, value: (b: B) => number, udpOnly = false): void => {
      new Counter<BackendLabels>({
        name: METRICS_PREFIX + name, help, labelNames: ['service', 'backend'], registers,
        collect() {
          this.reset();
          for (const s of snap()) {
            if (udpOnly && s.protocol !== 'udp') continue;
            for (const b of s.backends) this.inc({ service: s.name, backend: b.address }, value(b));
          }
        },
      });
    };

    // ── services ──
    serviceGauge('service_active_connections', 'Connections open now (admitted, not yet closed).', (s) => s.active);
    serviceGauge('service_queue_length', 'Connections waiting in the queue now.', (s) => s.queued);
    serviceGauge('service_max_connections', 'Configured max_connections (0 = unlimited).', (s) => s.max_connections);
    serviceCounter('service_connections_total', 'Connections accepted by the listener.', (s) => s.counters.accepted);
    serviceCounter('service_queued_total', 'Connections that had to wait in the queue.', (s) => s.counters.queued);
    serviceCounter('service_queued_no_backend_total', 'Connections that waited because no backend was eligible (queue.when_down); those none came for end no_backend.', (s) => s.counters.queued_no_backend);
    serviceCounter('service_queue_timeouts_total', 'Connections closed after waiting queue.timeout.', (s) => s.counters.queue_timeouts);
    serviceCounter('service_retries_total', 'Connect attempts redispatched to another backend.', (s) => s.counters.retries);
    serviceCounter('service_bytes_in_total', 'Bytes from clients to backends.', (s) => s.counters.bytes_in);
    serviceCounter('service_bytes_out_total', 'Bytes from backends to clients.', (s) => s.counters.bytes_out);
    serviceCounter('service_queue_time_seconds_total', 'Time connections spent queued, summed.', (s) => s.counters.queue_time_ms / 1000);
    new Counter<ServiceLabels | 'reason'>({
      name: METRICS_PREFIX + 'service_terminations_total',
      help: `Closed connections by termination reason (${TERM_REASONS.join(', ')}).`,
      labelNames: ['service', 'reason'], registers,
      collect() {
        this.reset();
        for (const s of snap()) for (const reason of TERM_REASONS) this.inc({ service: s.name, reason }, s.counters.terminations[reason]);
      },
    });

    // ── UDP services (flows are counted as connections above: active, total, terminations{idle_timeout} = expired) ──
    const udpCounter = (name: string, help: string, value: (s: ServiceStats) => number): void => {
      new Counter<ServiceLabels>({
        name: METRICS_PREFIX + name, help, labelNames: ['service'], registers,
        collect() {
          this.reset();
          for (const s of snap()) if (s.protocol === 'udp') this.inc({ service: s.name }, value(s));
        },
      });
    };
    udpCounter('service_datagrams_in_total', 'UDP: datagrams from clients forwarded to backends.', (s) => s.counters.datagrams_in);
    udpCounter('service_datagrams_out_total', 'UDP: datagrams from backends forwarded to clients.', (s) => s.counters.datagrams_out);
    new Counter<ServiceLabels | 'reason'>({
      name: METRICS_PREFIX + 'service_datagram_drops_total',
      help: `UDP: datagrams dropped, by reason (${UDP_DROP_REASONS.join(', ')}).`,
      labelNames: ['service', 'reason'], registers,
      collect() {
        this.reset();
        for (const s of snap()) if (s.protocol === 'udp') for (const reason of UDP_DROP_REASONS) this.inc({ service: s.name, reason }, s.counters.drops[reason]);
      },
    });
    // ── backends ──
    backendGauge('backend_active_connections', 'Sessions open to this backend now.', (b) => b.active);
    backendGauge('backend_up', '1 when the backend takes new connections (state up), else 0.', (b) => (b.state === 'up' ? 1 : 0));
    backendGauge('backend_weight', 'Configured weight.', (b) => b.weight);
    backendGauge('backend_effective_weight', 'Weight in use now (lower during slow start).', (b) => b.effective_weight);
    backendGauge('backend_max_connections', 'Configured max_connections (0 = unlimited).', (b) => b.max_connections);
    new Gauge<BackendLabels | 'state'>({
      name: METRICS_PREFIX + 'backend_state',
      help: 'The backend state: 1 for the current one of up, down, drain, maint.',
      labelNames: ['service', 'backend', 'state'], registers,
      collect() {
        this.reset();
        for (const s of snap()) for (const b of s.backends) {
          for (const state of BACKEND_STATES) if (state !== 'free') this.set({ service: s.name, backend: b.address, state }, b.state === state ? 1 : 0);
        }
      },
    });
    backendCounter('backend_connections_total', 'Sessions established to this backend.', (b) => b.counters.connections);
    backendCounter('backend_connect_failures_total', 'Failed connect attempts to this backend.', (b) => b.counters.connect_failures);
    backendCounter('backend_retries_total', 'Attempts that failed on this backend and were redispatched.', (b) => b.counters.retries);
    backendCounter('backend_bytes_in_total', 'Bytes from clients to this backend.', (b) => b.counters.bytes_in);
    backendCounter('backend_bytes_out_total', 'Bytes from this backend to clients.', (b) => b.counters.bytes_out);
    backendCounter('backend_killed_sessions_total', 'Sessions closed because the backend was marked down.', (b) => b.counters.killed);
    backendCounter('backend_connect_time_seconds_total', 'Time spent establishing sessions, summed.', (b) => b.counters.connect_time_ms / 1000);
    // UDP backends: flows are sessions above (connections_total = flows created, active_connections
    // = flows now, bytes each way); datagrams each way and the drops a backend causes, here.
    backendCounter('backend_datagrams_in_total', 'UDP: datagrams from clients forwarded to this backend.', (b) => b.counters.datagrams_in, true);
    backendCounter('backend_datagrams_out_total', 'UDP: datagrams from this backend forwarded to clients.', (b) => b.counters.datagrams_out, true);
    new Counter<BackendLabels | 'reason'>({
      name: METRICS_PREFIX + 'backend_datagram_drops_total',
      help: `UDP: datagrams of this backend's flows dropped, by reason (${UDP_BACKEND_DROP_REASONS.join(', ')}).`,
      labelNames: ['service', 'backend', 'reason'], registers,
      collect() {
        this.reset();
        for (const s of snap()) {
          if (s.protocol !== 'udp') continue;
          for (const b of s.backends) for (const reason of UDP_BACKEND_DROP_REASONS) this.inc({ service: s.name, backend: b.address, reason }, b.counters.drops[reason]);
        }
      },
    });

    // ── health probes (pushed by the health monitor's 'probe' events: a few per second at most) ──
    this.#probeDuration = new Histogram<BackendLabels>({
      name: METRICS_PREFIX + 'health_probe_duration_seconds', help: 'Health probe durations.',
      labelNames: ['service', 'backend'], buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5], registers,
    });
    this.#probes = new Counter<BackendLabels | 'result'>({
      name: METRICS_PREFIX + 'health_probes_total', help: 'Health probes by result (ok, fail; skipped: not made, fulcrum out of files, memory or local ports).',
      labelNames: ['service', 'backend', 'result'], registers,
    });
    const lastProbe = this.#lastProbe;
    this.#probeLast = new Gauge<BackendLabels>({
      name: METRICS_PREFIX + 'health_probe_last_duration_seconds', help: 'Duration of the last health probe.',
      labelNames: ['service', 'backend'], registers,
      collect() {
        this.reset();
        for (const p of lastProbe.values()) this.set({ service: p.service, backend: p.address }, p.latency_ms / 1000);
      },
    });
    this.#probeLastOk = new Gauge<BackendLabels>({
      name: METRICS_PREFIX + 'health_probe_last_success', help: '1 when the last health probe succeeded, else 0.',
      labelNames: ['service', 'backend'], registers,
      collect() {
        this.reset();
        for (const p of lastProbe.values()) this.set({ service: p.service, backend: p.address }, p.ok ? 1 : 0);
      },
    });

    // ── roles (read from the health monitor per scrape: backends it no longer probes disappear) ──
    const roles = sources.roles;
    new Gauge<BackendLabels | 'role'>({
      name: METRICS_PREFIX + 'backend_role',
      help: `1 for the role the backend last reported (${BACKEND_ROLES.join(', ')}), 0 for the other; absent until a database check reports one.`,
      labelNames: ['service', 'backend', 'role'], registers,
      collect() {
        this.reset();
        for (const r of roles?.() ?? []) {
          for (const role of BACKEND_ROLES) this.set({ service: r.service, backend: r.address, role }, r.reported === role ? 1 : 0);
        }
      },
    });
    // Lets an alert tell a healthy server in the wrong role (down by design) from a failed one.
    new Gauge<BackendLabels>({
      name: METRICS_PREFIX + 'backend_role_eligible',
      help: '1 when the role the backend last reported is one its service routes to, 0 when it is not (down by design: a replica of a role: primary service); absent until a database check reports one.',
      labelNames: ['service', 'backend'], registers,
      collect() {
        this.reset();
        for (const r of roles?.() ?? []) this.set({ service: r.service, backend: r.address }, r.eligible ? 1 : 0);
      },
    });
    new Gauge<BackendLabels>({
      name: METRICS_PREFIX + 'backend_role_reported_timestamp_seconds', help: 'When the backend last reported its role (Unix time).',
      labelNames: ['service', 'backend'], registers,
      collect() {
        this.reset();
        for (const r of roles?.() ?? []) this.set({ service: r.service, backend: r.address }, r.at / 1000);
      },
    });
    new Gauge<BackendLabels>({
      name: METRICS_PREFIX + 'backend_replication_lag_seconds',
      help: 'How far the replica was behind its primary at its last probe (+Inf: behind by an unknown amount); only for checks with max_lag.',
      labelNames: ['service', 'backend'], registers,
      collect() {
        this.reset();
        for (const r of roles?.() ?? []) {
          if (r.lag_ms !== undefined) this.set({ service: r.service, backend: r.address }, r.lag_ms === null ? Infinity : r.lag_ms / 1000);
        }
      },
    });

    // ── the descriptor reserve ──
    const descriptors = sources.descriptors;
    new Gauge({
      name: METRICS_PREFIX + 'accepting', help: '1 while the data path accepts connections; 0 while it holds the descriptor reserve\'s stop mark (new connections wait in the listen backlog).',
      registers,
      collect() {
        this.reset();
        const d = descriptors?.();
        if (d) this.set(d.accepting ? 1 : 0);
      },
    });
    new Counter({
      name: METRICS_PREFIX + 'accept_pauses_total', help: 'Times the data path stopped accepting at the descriptor reserve\'s mark.', registers,
      collect() {
        this.reset();
        const d = descriptors?.();
        if (d) this.inc(d.pauses);
      },
    });
    new Gauge({
      name: METRICS_PREFIX + 'data_path_descriptors', help: 'Descriptors the data path\'s sessions hold (client and backend sockets), all workers.', registers,
      collect() {
        this.reset();
        const d = descriptors?.();
        if (d) this.set(d.held);
      },
    });

    // ── failover and reloads ──
    const failover = sources.failover;
    new Gauge<'role' | 'cause'>({
      name: METRICS_PREFIX + 'failover_role',
      help: `1 for this instance's current role (${FAILOVER_ROLES.join(', ')}); in fault, cause says why (${FAULT_KINDS.join(', ')}); absent without ha.`,
      labelNames: ['role', 'cause'], registers,
      collect() {
        this.reset();
        const f = failover?.();
        if (!f) return;
        // cause only on the fault series while in fault: {role="fault",cause="vip"} 1.
        for (const role of FAILOVER_ROLES) this.set(role === 'fault' && f.role === 'fault' && f.fault ? { role, cause: f.fault.kind } : { role }, f.role === role ? 1 : 0);
      },
    });
    new Counter<'kind'>({
      name: METRICS_PREFIX + 'failover_vip_errors_total',
      help: `Failed VIP commands by kind (${Object.values(VIP_ERROR_KINDS).join(', ')}): a failed add or the first arping after it puts the instance in fault.`,
      labelNames: ['kind'], registers,
      collect() {
        this.reset();
        const f = failover?.();
        if (!f) return;
        for (const [code, kind] of Object.entries(VIP_ERROR_KINDS)) this.inc({ kind }, f.errors?.[code] ?? 0);
      },
    });
    new Counter({
      name: METRICS_PREFIX + 'failover_transitions_total', help: 'Role changes of this instance since start.', registers,
      collect() {
        this.reset();
        const f = failover?.();
        if (f) this.inc(f.transitions);
      },
    });
    // ── bgp (absent without a bgp section) ──
    const bgp = sources.bgp;
    new Gauge<'speaker'>({
      name: METRICS_PREFIX + 'bgp_sessions_up', help: 'BGP sessions established (absent without bgp, or with speaker: command, which cannot tell).',
      labelNames: ['speaker'], registers,
      collect() {
        this.reset();
        const b = bgp?.();
        if (b && b.sessions_up !== null) this.set({ speaker: b.speaker }, b.sessions_up);
      },
    });
    new Gauge<'vip'>({
      name: METRICS_PREFIX + 'bgp_vip_announced', help: '1 while this node announces the VIP by BGP, 0 while it is withdrawn.', labelNames: ['vip'], registers,
      collect() {
        this.reset();
        for (const v of bgp?.().vips ?? []) this.set({ vip: v.vip }, v.announced ? 1 : 0);
      },
    });
    new Counter<'action'>({
      name: METRICS_PREFIX + 'bgp_routes_total', help: 'VIP announcements and withdrawals done (action: announce, withdraw, failed).', labelNames: ['action'], registers,
      collect() {
        this.reset();
        const c = bgp?.().counts;
        if (!c) return;
        this.inc({ action: 'announce' }, c.announce);
        this.inc({ action: 'withdraw' }, c.withdraw);
        this.inc({ action: 'failed' }, c.failed);
      },
    });
    const reloads = sources.reloads;
    new Counter<'result'>({
      name: METRICS_PREFIX + 'reloads_total', help: 'Config reloads by result (applied, refused).', labelNames: ['result'], registers,
      collect() {
        this.reset();
        const r = reloads?.() ?? { applied: 0, refused: 0 };
        this.inc({ result: 'applied' }, r.applied);
        this.inc({ result: 'refused' }, r.refused);
      },
    });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** Records one health probe result (from the health monitor's 'probe' event). */
  observeProbe(p: ProbeObservation): void {
    const labels = { service: p.service, backend: p.address };
    if (p.skipped !== undefined) {
      this.#probes.inc({ ...labels, result: 'skipped' });
      return;
    }
    this.#probeDuration.observe(labels, p.latency_ms / 1000);
    this.#probes.inc({ ...labels, result: p.ok ? 'ok' : 'fail' });
    // Copy the four fields: the event object may carry more and must not be kept alive whole.
    this.#lastProbe.set(`${p.service}\u0000${p.address}`, { service: p.service, address: p.address, ok: p.ok, latency_ms: p.latency_ms });
  }

  /** Drops the probe series of backends no longer configured (after a reload or a removal). */
  forgetBackend(service: string, backend: string): void {
    this.#lastProbe.delete(`${service}\u0000${backend}`);
    this.#probeDuration.remove({ service, backend });
    this.#probes.remove({ service, backend, result: 'ok' });
    this.#probes.remove({ service, backend, result: 'fail' });
    this.#probes.remove({ service, backend, result: 'skipped' });
  }

  /** The Prometheus text exposition of everything, read now. */
  async text(): Promise<string> {
    // Kept after the scrape (not cleared): two overlapping scrapes then both read a whole snapshot.
    this.#snapshot = this.#sources.stats.snapshot(this.#sources.directory());
    return await this.registry.metrics();
  }
}
