/**
 * What `fulcrum upgrade` carries from the old process to the new one besides the sockets
 * (./upgrade.ts), so the new one starts where the old one is instead of from the file alone:
 *
 * - membership changed at run time (backends added or removed through the admin API): the
 *   difference between the config in force and the file the old process last loaded. Services
 *   with `discover` are left out: the new process's discovery finds their set again.
 * - per backend, what the admin API changed (weight, admin state) where it differs from the file:
 *   a value the file changed since is the file's unless the API changed it too (as a reload keeps it).
 * - health: each probed backend's state as the old one's dampener holds it, and the role a
 *   database check last saw, so no backend starts cold (down until probed, or up while it is down)
 *   and the first probes go through rise/fall instead of deciding alone.
 *
 * - failover (config.ha): the role the old one had when it handed the sockets (`ha_role`: a
 *   master's successor adopts the listeners on the VIP instead of starting them paused), then,
 *   once the new one is ready to run it, the failover itself (`ha`, src/failover/index.ts
 *   FailoverCarry: role, heartbeat epoch and counter, peer): the old one abandons it (silent, no
 *   priority 0, VIP left in place) and the new one continues it (./upgrade.ts says when).
 *
 * - BGP (`bgp`, built by src/bgp/index.ts Bgp.carry): the speaker, the VIPs on lo and the ones
 *   announced, and for gobgp the running daemon the new process adopts (state directory, API
 *   socket, pids, the config it runs); its liveness pipe and stderr travel as descriptors beside
 *   this (UpgradeSource.handles). Nothing is withdrawn on the way.
 *
 * Plain data (it crosses the IPC channel as JSON).
 */
import { formatHostPort, type BackendConfig, type Config } from '../config/schema.ts';
import type { AdminState, ServiceDescription } from '../balancer/balancer.ts';
import type { BackendHealth, RoleSeen } from '../health/monitor.ts';
import type { FailoverCarry } from '../failover/index.ts';
import type { Role } from '../failover/fsm.ts';
import type { CarriedBgp } from '../bgp/speaker.ts';

export interface CarriedBackend {
  service: string;
  address: string;
  /** Set when the admin API changed it (differs from the file's). */
  weight?: number;
  admin_state?: AdminState;
  /** The balancer's health view: 'down' also for a backend awaiting its role. */
  health: 'up' | 'down';
  awaiting_role: boolean;
}

export interface CarriedState {
  from_pid: number;
  membership: { service: string; added: BackendConfig[]; removed: string[] }[];
  backends: CarriedBackend[];
  health: { service: string; address: string; state: 'up' | 'down'; pending: boolean; role?: RoleSeen }[];
  /** The failover's role when the sockets were handed (config.ha); what the listeners on the VIP start as. */
  ha_role?: Role;
  /** The failover itself, set in the new process when the old one abandons it (Handover.takeFailover). */
  ha?: FailoverCarry;
  /** Set when the old process announces by BGP (src/bgp/index.ts Bgp.carry). */
  bgp?: CarriedBgp;
}

export interface CarryParts {
  /** The file as the old process last loaded it (ReloadSequence.fileConfig). */
  fileConfig: Config;
  /** The config in force (runtime edits included). */
  inForce: Config;
  describe(): readonly ServiceDescription[];
  health(): readonly BackendHealth[];
  /** The failover's role now, when config.ha is set. */
  haRole?: () => Role;
}

const key = (b: BackendConfig): string => formatHostPort(b.address);

/** The old process's side: what it knows beyond the file. */
export function carryState(parts: CarryParts): CarriedState {
  const membership: CarriedState['membership'] = [];
  for (const s of parts.inForce.services) {
    if (s.discover) continue;
    const file = parts.fileConfig.services.find((f) => f.name === s.name);
    if (file === undefined) continue;
    const inFile = new Set(file.backends.map(key));
    const inForce = new Set(s.backends.map(key));
    const added = s.backends.filter((b) => !inFile.has(key(b)));
    const removed = [...inFile].filter((a) => !inForce.has(a));
    if (added.length > 0 || removed.length > 0) membership.push({ service: s.name, added, removed });
  }
  const backends: CarriedBackend[] = [];
  for (const s of parts.describe()) {
    const configured = new Map(parts.inForce.services.find((c) => c.name === s.name)?.backends.map((b) => [key(b), b]) ?? []);
    for (const b of s.backends) {
      if (b.removed) continue;
      const c = configured.get(b.address);
      backends.push({
        service: s.name,
        address: b.address,
        ...(c !== undefined && c.weight !== b.weight ? { weight: b.weight } : {}),
        ...(c !== undefined && c.state !== b.admin_state ? { admin_state: b.admin_state } : {}),
        health: b.health,
        awaiting_role: b.awaiting_role,
      });
    }
  }
  const health = parts.health().map((h) => ({ service: h.service, address: h.address, state: h.state, pending: h.pending, ...(h.role ? { role: h.role } : {}) }));
  return { from_pid: process.pid, membership, backends, health, ...(parts.haRole ? { ha_role: parts.haRole() } : {}) };
}

/** The new process's side: the file's config with the membership changed at run time applied again. */
export function withCarriedMembership(config: Config, state: CarriedState): Config {
  if (state.membership.length === 0) return config;
  return {
    ...config,
    services: config.services.map((s) => {
      const m = state.membership.find((x) => x.service === s.name);
      if (m === undefined || s.discover) return s;
      const removed = new Set(m.removed);
      const kept = s.backends.filter((b) => !removed.has(key(b)));
      const have = new Set(kept.map(key));
      return { ...s, backends: [...kept, ...m.added.filter((b) => !have.has(key(b)))] };
    }),
  };
}

export interface SeedTargets {
  config: Config;
  setWeight(service: string, address: string, weight: number): void;
  setAdminState(service: string, address: string, state: AdminState, cause: string): void;
  setHealth(service: string, address: string, up: boolean, cause: string): void;
  /** Whether the balancer has this backend (the new config may have dropped it). */
  has(service: string, address: string): boolean;
  seedHealth(states: CarriedState['health']): number;
}

/** Applies the carried weights, admin states and health to the new process's balancer and health monitor (before its listeners open). */
export function seedFromCarried(state: CarriedState, t: SeedTargets): { backends: number; probes: number } {
  const cause = `carried over from pid ${state.from_pid} (upgrade)`;
  let backends = 0;
  for (const b of state.backends) {
    if (!t.has(b.service, b.address)) continue;
    backends++;
    if (b.weight !== undefined) t.setWeight(b.service, b.address, b.weight);
    if (b.admin_state !== undefined) t.setAdminState(b.service, b.address, b.admin_state, cause);
    // Health is the probes': only where the new config still checks this service, and not a
    // backend that was still waiting for its role (it waits here too).
    const checked = t.config.services.find((s) => s.name === b.service)?.health !== undefined;
    if (checked && !b.awaiting_role) t.setHealth(b.service, b.address, b.health === 'up', cause);
  }
  return { backends, probes: t.seedHealth(state.health) };
}
