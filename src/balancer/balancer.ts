/**
 * The control plane's writer of the shared memory: the only code that writes service and backend
 * records, member lists and rings (through the engine's `rebuild`). Written for clarity: it runs on
 * config loads, health transitions, admin commands and slow-start steps, never per connection.
 *
 * What it keeps:
 * - Slots: services take one of MAX_SERVICES records, backends one of the global pool of
 *   MAX_BACKENDS records, lowest free index first. A slot is reused only when its live count is 0,
 *   so a late `release` from an old session can never decrement a new occupant's count.
 * - Members of a service sorted by "host:port" (plain code-unit order, never locale order), so that
 *   two instances with the same backends build byte-identical Maglev tables.
 * - Record state = admin state × health: maint > drain > (health up ? up : down). A backend starts
 *   with health up, with or without a health check (as HAProxy, a server is assumed up until a check
 *   proves it down), so traffic flows from the first second — except in a service that routes by
 *   role (`routedRole`: a redis/postgres/mysql check with role primary or replica): there a backend
 *   starts down, "awaiting its role", until its first probe reports it — at start-up, when added
 *   (reload, runtime API) and when a reload changes the service's role — so no connection reaches
 *   a server whose role nobody has seen. That first verdict is not a recovery (no slow start) and
 *   the down is not a verdict (on_marked_down does not apply; see BackendStateEvent.awaiting_role).
 * - Effective weight = weight × WEIGHT_SCALE, or during slow start weight × step, where step goes
 *   1 → WEIGHT_SCALE over `slow_start` (one step every slow_start / WEIGHT_SCALE, each rebuilding the
 *   ring), after a transition into up from any other state — not at start-up.
 */
import { EventEmitter } from 'node:events';
import type { BackendStateEvent, BalancerEvents } from '../events.ts';
import type { Logger } from '../observability/log.ts';
import { realClock, type Clock, type ClockTimer } from '../util/clock.ts';
import type { Engine } from './engine.ts';
import { SharedRecords } from './records.ts';
import { backendHashes } from './hash.ts';
import { UnknownServiceError, UnknownBackendError, BalancerArgumentError, CapacityError } from './errors.ts';
import {
  ALGORITHMS, BACKEND_DOWN, BACKEND_DRAIN, BACKEND_FREE, BACKEND_MAINT, BACKEND_UP, BF_BACKUP,
  B_EFF_WEIGHT, B_MAX_CONN, B_WEIGHT, B_FLAGS, MAX_BACKENDS, MAX_MEMBERS, MAX_SERVICES, MAX_WEIGHT, SERVICE_ACTIVE,
  SERVICE_FREE, S_PRIMARY_UP, S_BACKUP_UP, WEIGHT_SCALE, type AlgorithmName, type BackendStateName,
} from '../shm/layout.ts';
import { formatHostPort, parseHostPort, routedRole, type BackendConfig, type Config, type HostPort, type ServiceConfig } from '../config/schema.ts';

export type AdminState = 'ready' | 'drain' | 'maint';

export type { BackendStateEvent } from '../events.ts';

export interface BackendDescription {
  index: number;
  address: string;
  weight: number;
  /** In weight units: weight while not ramping, weight × step / WEIGHT_SCALE during slow start. */
  effective_weight: number;
  state: BackendStateName;
  admin_state: AdminState;
  health: 'up' | 'down';
  /** Down until a probe reports its role (a service that routes by role; see the header). */
  awaiting_role: boolean;
  backup: boolean;
  active: number;
  /** 0 = unlimited. */
  max_connections: number;
  /** Removed from the config (or by removeBackend) and still draining its open sessions. */
  removed: boolean;
}

export interface ServiceDescription {
  name: string;
  index: number;
  /** tcp: connections; udp: flows (counted as connections are). */
  protocol: 'tcp' | 'udp';
  algorithm: AlgorithmName;
  table_size: number;
  max_connections: number;
  active: number;
  queued: number;
  primary_up: number;
  backup_up: number;
  backends: BackendDescription[];
}

export interface ApplySummary {
  servicesAdded: string[];
  servicesRemoved: string[];
  servicesChanged: string[];
  backendsAdded: number;
  backendsRemoved: number;
}

interface ServiceEntry {
  name: string;
  index: number;
  config: ServiceConfig;
  backends: Map<string, BackendEntry>;
}

interface BackendEntry {
  service: ServiceEntry;
  index: number;
  address: string;
  /** Where the workers connect (the config's address, never parsed back from `address`). */
  target: HostPort;
  weight: number;
  maxConnections: number;
  backup: boolean;
  /** The admin state in effect (config at load, then admin commands). */
  admin: AdminState;
  /** The admin state the config last asked for: a reload changes `admin` only when this changes. */
  configAdmin: AdminState;
  healthUp: boolean;
  /**
   * Down until a first probe answers (healthUp is false): in a service that routes by role, until
   * one reports the role; in any service with health checks, a backend that joined it running.
   */
  awaitingRole: boolean;
  /** 0 when at full weight, else the slow-start step 1..WEIGHT_SCALE-1. */
  rampStep: number;
  rampTimer: ClockTimer | undefined;
  state: BackendStateName;
}

/** A backend slot on its way out: removed, waiting for its active count to reach 0. */
interface Retiring {
  index: number;
  service: string;
  serviceIndex: number;
  address: string;
  target: HostPort;
  /** Its record already says 'free' (forced removal); only the slot's reuse waits. */
  freed: boolean;
  waiters: Array<() => void>;
}

const STATE_CODE: Record<BackendStateName, number> = {
  free: BACKEND_FREE, up: BACKEND_UP, down: BACKEND_DOWN, drain: BACKEND_DRAIN, maint: BACKEND_MAINT,
};

/** How often draining slots are checked while any exists. */
const DRAIN_POLL_MS = 100;

const SLOT_FREE = 0;
const SLOT_USED = 1;
/** Removed but its live count is not 0 yet: not reusable. */
const SLOT_RETIRING = 2;

export class Balancer extends EventEmitter<BalancerEvents> {
  readonly records: SharedRecords;
  private readonly engine: Engine;
  private readonly log: Logger;
  private readonly services = new Map<string, ServiceEntry>();
  private readonly serviceSlots = new Uint8Array(MAX_SERVICES);
  private readonly backendSlots = new Uint8Array(MAX_BACKENDS);
  private readonly byIndex = new Map<number, BackendEntry>();
  private readonly retiring: Retiring[] = [];
  /** Removed services whose S_ACTIVE has not reached 0. */
  private readonly retiringServices: number[] = [];
  private reaper: ClockTimer | undefined;
  /** Paces the slow-start steps and the drain reaper; tests drive one by hand. */
  private readonly clock: Clock;

  constructor(memory: WebAssembly.Memory, engine: Engine, logger: Logger, clock: Clock = realClock) {
    super();
    this.records = new SharedRecords(memory);
    this.engine = engine;
    this.log = logger.child({ component: 'balancer' });
    this.clock = clock;
  }

  // ── configuration ──────────────────────────────────────────────────────────

  /**
   * Applies a whole config, first or reload, as a diff keyed by service name and backend
   * "host:port". Kept services keep their slot, live counters and queue; kept backends keep their
   * slot, active count, health and any admin state set at run time (unless the config's `state`
   * for it changed). Removed backends drain (their slots are freed once idle). Throws CapacityError
   * before changing anything if the new config does not fit the free slots.
   */
  apply(config: Config): ApplySummary {
    this.reap();
    const summary: ApplySummary = { servicesAdded: [], servicesRemoved: [], servicesChanged: [], backendsAdded: 0, backendsRemoved: 0 };
    const wanted = new Set(config.services.map((s) => s.name));

    let newServices = 0;
    let newBackends = 0;
    let freedBackends = 0;
    for (const s of config.services) {
      const existing = this.services.get(s.name);
      if (!existing) {
        newServices++;
        newBackends += s.backends.length;
        continue;
      }
      const keys = new Set(s.backends.map((b) => formatHostPort(b.address)));
      for (const b of s.backends) if (!existing.backends.has(formatHostPort(b.address))) newBackends++;
      for (const [key, e] of existing.backends) if (!keys.has(key) && this.records.backendActive(e.index) === 0) freedBackends++;
    }
    for (const [name, e] of this.services) {
      if (wanted.has(name)) continue;
      for (const b of e.backends.values()) if (this.records.backendActive(b.index) === 0) freedBackends++;
    }
    const freeServices = countFree(this.serviceSlots);
    const freeBackends = countFree(this.backendSlots) + freedBackends;
    if (newServices > freeServices) {
      throw new CapacityError(`services: ${newServices} new services need free slots, ${freeServices} of ${MAX_SERVICES} are free (removed services with open connections still hold theirs)`);
    }
    if (newBackends > freeBackends) {
      throw new CapacityError(`backends: ${newBackends} new backends need free slots, ${freeBackends} of ${MAX_BACKENDS} are free (removed backends with open connections still hold theirs)`);
    }

    for (const [name, e] of [...this.services]) {
      if (wanted.has(name)) continue;
      summary.backendsRemoved += e.backends.size;
      this.removeService(e);
      summary.servicesRemoved.push(name);
    }
    this.reap();
    for (const s of config.services) {
      const existing = this.services.get(s.name);
      if (existing) {
        const { added, removed } = this.updateService(existing, s);
        summary.backendsAdded += added;
        summary.backendsRemoved += removed;
        summary.servicesChanged.push(s.name);
      } else {
        this.addService(s);
        summary.servicesAdded.push(s.name);
        summary.backendsAdded += s.backends.length;
      }
    }
    this.log.info(summary, 'configuration applied');
    return summary;
  }

  private addService(config: ServiceConfig): ServiceEntry {
    const index = this.serviceSlots.indexOf(SLOT_FREE);
    this.serviceSlots[index] = SLOT_USED;
    const entry: ServiceEntry = { name: config.name, index, config, backends: new Map() };
    this.services.set(config.name, entry);
    this.records.resetServiceCounters(index);
    this.writeServiceFields(entry);
    for (const b of byAddress(config.backends)) this.createBackend(entry, b);
    this.writeMembers(entry);
    this.engine.rebuild(index);
    // Published last: until now acquire answers PICK_BAD_SERVICE for this slot.
    this.records.setServiceState(index, SERVICE_ACTIVE);
    return entry;
  }

  private updateService(entry: ServiceEntry, config: ServiceConfig): { added: number; removed: number } {
    const hadHealth = entry.config.health !== undefined;
    const role = routedRole(config.health);
    // A new role to route to (or a new check that sees roles): what probes saw before says nothing
    // about it, so kept backends wait for their next probe's answer, as new ones do.
    const roleChanged = role !== null && role !== routedRole(entry.config.health);
    entry.config = config;
    this.writeServiceFields(entry);
    const keys = new Set(config.backends.map((b) => formatHostPort(b.address)));
    let added = 0;
    let removed = 0;
    // Retire first, so slots of idle removed backends are free for the new ones.
    for (const [key, e] of [...entry.backends]) {
      if (keys.has(key)) continue;
      this.retire(e, false);
      removed++;
    }
    this.reap();
    for (const b of byAddress(config.backends)) {
      const e = entry.backends.get(formatHostPort(b.address));
      if (!e) {
        this.createBackend(entry, b, true);
        added++;
        continue;
      }
      e.weight = b.weight;
      e.maxConnections = b.max_connections;
      e.backup = b.backup;
      if (b.state !== e.configAdmin) {
        e.configAdmin = b.state;
        e.admin = b.state;
      }
      // Without health checks nothing would ever mark a backend up again.
      if (hadHealth && config.health === undefined) {
        e.healthUp = true;
        e.awaitingRole = false;
      }
      if (roleChanged) {
        e.healthUp = false;
        e.awaitingRole = true;
      }
      this.writeBackendFields(e);
      this.refresh(e, roleChanged ? `reload: role ${role} not yet seen` : 'reload');
    }
    this.writeMembers(entry);
    this.engine.rebuild(entry.index);
    return { added, removed };
  }

  private removeService(entry: ServiceEntry): void {
    // Unpublish first: new connections get PICK_BAD_SERVICE; open ones release normally.
    this.records.setServiceState(entry.index, SERVICE_FREE);
    for (const e of [...entry.backends.values()]) this.retire(e, false);
    this.writeMembers(entry);
    this.engine.rebuild(entry.index);
    this.services.delete(entry.name);
    this.serviceSlots[entry.index] = SLOT_RETIRING;
    this.retiringServices.push(entry.index);
    this.scheduleReaper();
  }

  private writeServiceFields(entry: ServiceEntry): void {
    const c = entry.config;
    this.records.writeService(entry.index, {
      algorithm: ALGORITHMS[c.balance],
      maxConnections: c.max_connections,
      queueMax: c.queue.max,
      tableSize: c.table_size,
      balanceFactor: c.hash_balance_factor,
    });
  }

  private writeMembers(entry: ServiceEntry): void {
    const sorted = [...entry.backends.values()].sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
    this.records.setMembers(entry.index, sorted.map((e) => e.index));
  }

  /**
   * `joining`: the backend joins a running service (a reload, the runtime API, discovery). In a
   * service with health checks it then takes no connection until its first probe has answered
   * (down, awaiting it: not a health verdict, see BackendStateEvent.awaiting_role), as a server
   * added to a running HAProxy waits for its checks. At start-up, and in a service a reload adds,
   * backends start up until their first probe says otherwise (HAProxy's rule), but where the
   * service routes by role: there they await the role, always.
   */
  private createBackend(service: ServiceEntry, config: BackendConfig, joining = false): BackendEntry {
    if (service.backends.size >= MAX_MEMBERS) {
      throw new CapacityError(`service ${JSON.stringify(service.name)}: at most ${MAX_MEMBERS} backends, got one more`);
    }
    const index = this.backendSlots.indexOf(SLOT_FREE);
    if (index < 0) throw new CapacityError(`backends: all ${MAX_BACKENDS} slots are in use (removed backends with open connections still hold theirs)`);
    this.backendSlots[index] = SLOT_USED;
    const address = formatHostPort(config.address);
    const role = routedRole(service.config.health);
    const e: BackendEntry = {
      service, index, address,
      target: { host: config.address.host, port: config.address.port },
      weight: config.weight,
      maxConnections: config.max_connections,
      backup: config.backup,
      admin: config.state,
      configAdmin: config.state,
      healthUp: role === null && !(joining && service.config.health !== undefined),
      awaitingRole: role !== null || (joining && service.config.health !== undefined),
      rampStep: 0,
      rampTimer: undefined,
      state: 'free',
    };
    service.backends.set(address, e);
    this.byIndex.set(index, e);
    this.records.claimBackend(index);
    const { offset, skip } = backendHashes(address);
    this.records.writeBackend(index, {
      service: service.index,
      flags: e.backup ? BF_BACKUP : 0,
      weight: e.weight,
      effectiveWeight: this.effectiveWeight(e),
      maxConnections: e.maxConnections,
      hashOffset: offset,
      hashSkip: skip,
    });
    this.refresh(e, role !== null ? `added: role ${role} not yet seen` : e.awaitingRole ? 'added: not yet probed' : 'added', true);
    return e;
  }

  private writeBackendFields(e: BackendEntry): void {
    this.records.setBackendField(e.index, B_WEIGHT, e.weight);
    this.records.setBackendField(e.index, B_MAX_CONN, e.maxConnections);
    this.records.setBackendField(e.index, B_FLAGS, e.backup ? BF_BACKUP : 0);
    this.records.setBackendField(e.index, B_EFF_WEIGHT, this.effectiveWeight(e));
  }

  private effectiveWeight(e: BackendEntry): number {
    return e.weight * (e.rampStep > 0 ? e.rampStep : WEIGHT_SCALE);
  }

  private stateOf(e: BackendEntry): BackendStateName {
    if (e.admin === 'maint') return 'maint';
    if (e.admin === 'drain') return 'drain';
    return e.healthUp ? 'up' : 'down';
  }

  /**
   * Writes `e`'s combined state (and its effective weight), starting or stopping slow start, and
   * emits 'backend-state' when the state changed. The caller rebuilds the service's ring.
   */
  private refresh(e: BackendEntry, cause: string, initial = false): void {
    const to = this.stateOf(e);
    const from = e.state;
    if (to === from) return;
    e.state = to;
    const slowStart = e.service.config.slow_start;
    if (to === 'up' && !initial && slowStart > 0 && e.weight > 0) this.startRamp(e);
    else if (to !== 'up') this.stopRamp(e);
    this.records.setBackendField(e.index, B_EFF_WEIGHT, this.effectiveWeight(e));
    this.records.setBackendState(e.index, STATE_CODE[to]);
    this.emitState(e.service.name, e.address, e.index, from, to, cause, to === 'down' && e.awaitingRole);
  }

  private emitState(service: string, address: string, backend: number, from: BackendStateName, to: BackendStateName, cause: string, awaitingRole = false): void {
    const event: BackendStateEvent = { service, address, backend, from, to, cause, ...(awaitingRole ? { awaiting_role: true as const } : {}) };
    this.log.info(event, 'backend state');
    this.emit('backend-state', event);
  }

  // ── slow start ─────────────────────────────────────────────────────────────

  private startRamp(e: BackendEntry): void {
    this.stopRamp(e);
    e.rampStep = 1;
    const stepMs = Math.max(1, Math.floor(e.service.config.slow_start / WEIGHT_SCALE));
    e.rampTimer = this.clock.setInterval(() => {
      if (!this.byIndex.has(e.index) || this.byIndex.get(e.index) !== e) return this.stopRamp(e);
      e.rampStep++;
      if (e.rampStep >= WEIGHT_SCALE) this.stopRamp(e);
      this.records.setBackendField(e.index, B_EFF_WEIGHT, this.effectiveWeight(e));
      this.engine.rebuild(e.service.index);
    }, stepMs);
    e.rampTimer.unref();
  }

  private stopRamp(e: BackendEntry): void {
    e.rampStep = 0;
    this.clock.clearInterval(e.rampTimer);
    e.rampTimer = undefined;
  }

  // ── run-time changes (health, admin API) ───────────────────────────────────

  /** Health result from a probe (or passive failures): marks the backend up or down. */
  setHealth(service: string, address: string | HostPort, up: boolean, cause: string): void {
    const e = this.find(service, address);
    // The first verdict on a backend awaiting its role: up is its start, not a recovery (no slow start).
    const first = e.awaitingRole;
    e.awaitingRole = false;
    if (e.healthUp === up) return;
    e.healthUp = up;
    this.refresh(e, cause, first);
    this.engine.rebuild(e.service.index);
  }

  /** HAProxy's `set server state ready|drain|maint`. */
  setAdminState(service: string, address: string | HostPort, state: AdminState, cause: string): void {
    if (state !== 'ready' && state !== 'drain' && state !== 'maint') {
      throw new BalancerArgumentError(`state: must be ready | drain | maint, got ${JSON.stringify(state)}`);
    }
    const e = this.find(service, address);
    if (e.admin === state) return;
    e.admin = state;
    this.refresh(e, cause);
    this.engine.rebuild(e.service.index);
  }

  /**
   * A backend's admin state, or undefined when there is none: the balancer is its one owner (the
   * config's `state` at load, then admin commands); the health monitor asks here.
   */
  adminState(service: string, address: string | HostPort): AdminState | undefined {
    return this.services.get(service)?.backends.get(normalizeAddress(address))?.admin;
  }

  /**
   * A backend's weight in force, or undefined when there is none: the config's, or what
   * setWeight set at run time since (a reload's report says when it puts the config's back).
   */
  weightOf(service: string, address: string | HostPort): number | undefined {
    return this.services.get(service)?.backends.get(normalizeAddress(address))?.weight;
  }

  /** HAProxy's `set server weight`: 0..MAX_WEIGHT, effective at once (a slow-start ramp scales it). */
  setWeight(service: string, address: string | HostPort, weight: number): void {
    if (!Number.isInteger(weight) || weight < 0 || weight > MAX_WEIGHT) {
      throw new BalancerArgumentError(`weight: must be an integer 0–${MAX_WEIGHT}, got ${JSON.stringify(weight)}`);
    }
    const e = this.find(service, address);
    e.weight = weight;
    this.writeBackendFields(e);
    this.engine.rebuild(e.service.index);
  }

  /** Adds a backend at run time (until the next reload, which follows the config file). */
  addBackend(service: string, config: BackendConfig): BackendDescription {
    this.reap();
    const s = this.services.get(service);
    if (!s) throw new UnknownServiceError(service);
    const address = formatHostPort(config.address);
    if (s.backends.has(address)) throw new BalancerArgumentError(`service ${JSON.stringify(service)}: backend ${JSON.stringify(address)} already exists`);
    const e = this.createBackend(s, config, true);
    this.writeMembers(s);
    this.engine.rebuild(s.index);
    return this.describeBackend(e);
  }

  /**
   * Removes a backend: it leaves the member list at once (no new connections) and drains; the
   * promise resolves when its last connection is released and its slot is free. With `force` the
   * record is freed and the promise resolved at once; the slot itself is reused only after the
   * open sessions (which the proxy should close) have released it.
   */
  removeBackend(service: string, address: string | HostPort, options: { force?: boolean } = {}): Promise<void> {
    const e = this.find(service, address);
    const done = this.retire(e, options.force === true);
    this.writeMembers(e.service);
    this.engine.rebuild(e.service.index);
    this.reap();
    return done;
  }

  private retire(e: BackendEntry, force: boolean): Promise<void> {
    this.stopRamp(e);
    e.service.backends.delete(e.address);
    this.byIndex.delete(e.index);
    this.backendSlots[e.index] = SLOT_RETIRING;
    const r: Retiring = { index: e.index, service: e.service.name, serviceIndex: e.service.index, address: e.address, target: e.target, freed: false, waiters: [] };
    const done = new Promise<void>((resolve) => r.waiters.push(resolve));
    if (force) {
      this.freeRecord(r, e.state, 'removed (forced)');
    } else if (e.state !== 'drain') {
      this.records.setBackendState(e.index, BACKEND_DRAIN);
      this.emitState(r.service, r.address, r.index, e.state, 'drain', 'removed');
    }
    this.retiring.push(r);
    this.scheduleReaper();
    return done;
  }

  private freeRecord(r: Retiring, from: BackendStateName, cause: string): void {
    r.freed = true;
    this.records.setBackendState(r.index, BACKEND_FREE);
    this.emitState(r.service, r.address, r.index, from, 'free', cause);
    for (const w of r.waiters.splice(0)) w();
  }

  /** Frees retiring slots whose live count reached 0. Called on a timer while any exist, and on changes. */
  private reap(): void {
    for (let i = this.retiring.length - 1; i >= 0; i--) {
      const r = this.retiring[i];
      if (this.records.backendActive(r.index) > 0) continue;
      if (!r.freed) this.freeRecord(r, 'drain', 'drained');
      this.backendSlots[r.index] = SLOT_FREE;
      this.retiring.splice(i, 1);
    }
    for (let i = this.retiringServices.length - 1; i >= 0; i--) {
      const s = this.retiringServices[i];
      if (this.records.serviceActive(s) > 0) continue;
      this.serviceSlots[s] = SLOT_FREE;
      this.retiringServices.splice(i, 1);
    }
    if (this.retiring.length === 0 && this.retiringServices.length === 0 && this.reaper) {
      this.clock.clearInterval(this.reaper);
      this.reaper = undefined;
    }
  }

  private scheduleReaper(): void {
    if (this.reaper) return;
    this.reaper = this.clock.setInterval(() => this.reap(), DRAIN_POLL_MS);
    this.reaper.unref();
  }

  /** Stops the slow-start and drain timers (at shutdown, and in tests). */
  close(): void {
    this.clock.clearInterval(this.reaper);
    this.reaper = undefined;
    for (const s of this.services.values()) for (const e of s.backends.values()) this.stopRamp(e);
  }

  // ── lookups and description ────────────────────────────────────────────────

  /** The slot index of a service (what acquire takes), or -1 when there is none of that name. */
  serviceIndex(name: string): number {
    return this.services.get(name)?.index ?? -1;
  }

  /** The slot index of a backend (what acquire returns), or -1. */
  backendIndex(serviceName: string, address: string | HostPort): number {
    return this.services.get(serviceName)?.backends.get(normalizeAddress(address))?.index ?? -1;
  }

  /** Service name and address of a live backend slot (for logs), or undefined. */
  backendAt(index: number): { service: string; address: string } | undefined {
    const e = this.byIndex.get(index);
    if (e) return { service: e.service.name, address: e.address };
    const r = this.retiring.find((x) => x.index === index);
    return r ? { service: r.service, address: r.address } : undefined;
  }

  /**
   * Where the workers may connect for a service: its backends and those still draining, with
   * their slot index (what acquire returns). The workers' service table is built from this
   * (src/proxy/table.ts); empty when there is no such service.
   */
  targets(serviceName: string): Array<{ index: number; address: string; target: HostPort; removed?: boolean }> {
    this.reap();
    const s = this.services.get(serviceName);
    if (!s) return [];
    const out = [...s.backends.values()].sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0))
      .map((e): { index: number; address: string; target: HostPort; removed?: boolean } => ({ index: e.index, address: e.address, target: e.target }));
    for (const r of this.retiring) if (r.serviceIndex === s.index && !r.freed) out.push({ index: r.index, address: r.address, target: r.target, removed: true });
    return out;
  }

  describe(): ServiceDescription[] {
    this.reap();
    const out: ServiceDescription[] = [];
    for (const s of [...this.services.values()].sort((a, b) => a.index - b.index)) {
      const backends = [...s.backends.values()].sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0)).map((e) => this.describeBackend(e));
      for (const r of this.retiring) {
        if (r.serviceIndex !== s.index || r.freed) continue;
        backends.push({
          index: r.index, address: r.address,
          weight: this.records.backendField(r.index, B_WEIGHT),
          effective_weight: this.records.backendField(r.index, B_EFF_WEIGHT) / WEIGHT_SCALE,
          state: 'drain', admin_state: 'drain', health: 'up', awaiting_role: false,
          backup: (this.records.backendField(r.index, B_FLAGS) & BF_BACKUP) !== 0,
          active: this.records.backendActive(r.index),
          max_connections: this.records.backendField(r.index, B_MAX_CONN),
          removed: true,
        });
      }
      out.push({
        name: s.name,
        index: s.index,
        protocol: s.config.protocol,
        algorithm: s.config.balance,
        table_size: s.config.table_size,
        max_connections: s.config.max_connections,
        active: this.records.serviceActive(s.index),
        queued: this.records.serviceQueued(s.index),
        primary_up: this.records.serviceField(s.index, S_PRIMARY_UP),
        backup_up: this.records.serviceField(s.index, S_BACKUP_UP),
        backends,
      });
    }
    return out;
  }

  private describeBackend(e: BackendEntry): BackendDescription {
    return {
      index: e.index,
      address: e.address,
      weight: e.weight,
      effective_weight: this.effectiveWeight(e) / WEIGHT_SCALE,
      state: e.state,
      admin_state: e.admin,
      health: e.healthUp ? 'up' : 'down',
      awaiting_role: e.awaitingRole,
      backup: e.backup,
      active: this.records.backendActive(e.index),
      max_connections: e.maxConnections,
      removed: false,
    };
  }

  private find(service: string, address: string | HostPort): BackendEntry {
    const s = this.services.get(service);
    if (!s) throw new UnknownServiceError(service);
    const key = normalizeAddress(address);
    const e = s.backends.get(key);
    if (!e) throw new UnknownBackendError(service, key);
    return e;
  }
}

/**
 * Backends in "host:port" order: new slots are allocated in this order, so two fresh instances given
 * the same backends in any order number them alike and build byte-identical rings.
 */
function byAddress(list: readonly BackendConfig[]): BackendConfig[] {
  return list.map((b) => ({ b, key: formatHostPort(b.address) }))
    .sort((x, y) => (x.key < y.key ? -1 : x.key > y.key ? 1 : 0))
    .map((x) => x.b);
}

function countFree(slots: Uint8Array): number {
  let n = 0;
  for (const s of slots) if (s === SLOT_FREE) n++;
  return n;
}

/** "host:port" as the config formats it, whatever form the caller used. */
function normalizeAddress(address: string | HostPort): string {
  if (typeof address !== 'string') return formatHostPort(address);
  const hp = parseHostPort(address);
  return hp ? formatHostPort(hp) : address;
}

