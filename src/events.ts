/**
 * Every event the control plane's parts emit, one payload type each (as src/errors.ts is the one
 * list of error codes). The parts emit; none listens to another: src/control/routes.ts is the one
 * place that connects them, and re-publishes what observers (src/admin's metrics, tests) read on
 * the handle's bus (FulcrumEvents). An event nobody routes or reads is not declared.
 *
 * Type-only: importing this module pulls in no code, so any part may import it without depending
 * on another part.
 */
import type { Role } from './failover/fsm.ts';
import type { ProbeResult } from './health/probes/probe.ts';
import type { BackendStateName } from './shm/layout.ts';

/** A backend's record changed state (health, admin command, reload, removal). Emitted by the Balancer. */
export interface BackendStateEvent {
  service: string;
  address: string;
  /** The backend's slot index (the id the engine returns). */
  backend: number;
  from: BackendStateName;
  to: BackendStateName;
  cause: string;
  /**
   * Down only because no probe has reported the backend's role yet (start-up, added, the service's
   * role changed): not a health verdict, so its open sessions are not closed (on_marked_down).
   */
  awaiting_role?: true;
}

/** A data-plane worker failed to connect to a backend (passive health). Emitted by the WorkerPool, once per attempt. */
export interface ConnectFailedEvent {
  service: string;
  backend: number;
  address: string;
  error: string;
}

/** A data-plane worker exited (crash or retirement). Emitted by the WorkerPool. */
export interface WorkerExitEvent {
  workerId: number;
  code: number;
  /** Shared-memory slots it held that were given back. */
  reclaimed: number;
  retired: boolean;
}

/** One health probe's result. Emitted by the HealthMonitor. */
export interface ProbeEvent extends ProbeResult {
  service: string;
  address: string;
}

/**
 * A change of health. Emitted by the HealthMonitor. `initial`: the deciding first result, emitted
 * even when it agrees with what the balancer assumed, so the receiver never guesses the start state.
 */
export interface TransitionEvent {
  service: string;
  address: string;
  up: boolean;
  cause: string;
  initial: boolean;
  /**
   * Down because the replica lags (over health.max_lag): its sessions are closed when
   * health.lag_action is close, whatever on_marked_down says (src/control/routes.ts).
   */
  lagging?: true;
}

/**
 * A service's discovered set changed (a source's new answer, or `hold` ran out). Emitted by the
 * Discovery; the set itself is read when the reload sequence applies (Discovery.compose).
 */
export interface DiscoveredEvent {
  service: string;
  source: 'dns' | 'redis_sentinel' | 'patroni';
  /** Backends in the set now. */
  backends: number;
  cause: string;
}

/** A failover role change. Emitted by the Failover. */
export interface RoleChange {
  from: Role;
  to: Role;
  cause: string;
}

/** A VIP announced or withdrawn through the BGP speaker. Emitted by src/bgp's Bgp once the speaker did it. */
export interface BgpRouteEvent {
  vip: string;
  action: 'announce' | 'withdraw';
  /** Why: "ready: web 3/3 backends up", "web has 0 backends up (needs 1)", "stopping", "drained by ctl"… */
  cause: string;
}

/** A BGP session changed state (as the speaker reports it: idle, active, established…). Emitted by src/bgp's Bgp. */
export interface BgpSessionEvent {
  neighbor: string;
  from: string;
  to: string;
}

// ── each part's events (EventEmitter<Map> type parameters) ──

export interface BalancerEvents {
  'backend-state': [event: BackendStateEvent];
}

export interface HealthEvents {
  probe: [event: ProbeEvent];
  transition: [event: TransitionEvent];
}

export interface PoolEvents {
  'connect-failed': [event: ConnectFailedEvent];
  'worker-exit': [event: WorkerExitEvent];
}

export interface DiscoveryEvents {
  backends: [event: DiscoveredEvent];
}

export interface FailoverEvents {
  role: [change: RoleChange];
}

export interface BgpEvents {
  route: [event: BgpRouteEvent];
  session: [event: BgpSessionEvent];
}

/**
 * The handle's bus (FulcrumHandle.events): what the routes table publishes for observers —
 * src/admin's metrics and stats, and tests. Nothing in the control plane listens to it to act.
 */
export interface FulcrumEvents {
  'backend-state': [event: BackendStateEvent];
  'connect-failed': [event: ConnectFailedEvent];
  'health-probe': [event: ProbeEvent];
  'health-transition': [event: TransitionEvent];
  'bgp-route': [event: BgpRouteEvent];
  'bgp-session': [event: BgpSessionEvent];
  /** A discovered set, applied (or refused: `error`). */
  'discovery-applied': [event: DiscoveredEvent & { error?: string }];
}
