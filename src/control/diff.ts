/**
 * The one comparison of the config in force with the next one (a reload from the file, the admin
 * API, a runtime edit of backends). Computed once per reload by src/control/reload.ts, before
 * anything is applied; every step of the sequence reads the part it acts on (the listen check the
 * new addresses, the VIP steps `vip`, the pool `logging` and `workers`, the admin server `admin`),
 * and the words of `report` are what the log line, POST /api/reload and /api/status show.
 *
 * The balancer and the health monitor reconcile their own live state (slots, probers) with the
 * next config rather than with the previous one: runtime state (a backend still draining, a
 * probe in flight) is theirs, and the config in force does not hold it. The report reads the
 * balancer's runtime changes through LiveBackends: a weight set through the API is put back to
 * the file's by a reload (reported as a change from the runtime value), an admin state set
 * through the API is kept unless the file's `state` for that backend changed (reported as kept).
 */
import { formatHostPort, HA_RESTART_ONLY, type AdminConfig, type Config, type HaConfig, type ServiceConfig } from '../config/schema.ts';

/** What a reload does to the services on a VIP (they listen only while this instance is master). */
export interface VipReload {
  /** The services on a VIP after it (their address may not be on this host: the listen check skips them). */
  bound: Set<string>;
  /** Those it puts on a VIP. */
  onto: string[];
  /** Those it takes off one (not those it removes). */
  off: string[];
}

/** What a reload changed, in words (the log line, POST /api/reload's reply, /api/status). */
export interface ReloadReport {
  /** One line each ("service redis: backend 127.0.0.1:7004 added"). */
  changes: string[];
  /** Settings that changed in the file but need a restart to take effect. */
  restart_required: string[];
  /** Runtime changes the reload leaves in force (a backend drained through the API); absent when none. */
  kept?: string[];
}

/** What the balancer holds at run time, beside the config in force (src/balancer: the one owner). */
export interface LiveBackends {
  weightOf(service: string, address: string): number | undefined;
  adminState(service: string, address: string): string | undefined;
}

export interface ConfigDiff {
  /** Services of `next` whose listen address the running config does not listen on (the listen check binds these). */
  newListens: string[];
  vip: VipReload;
  /** `logging` changed: the workers get the new settings. */
  logging: boolean;
  /** `workers` changed: the pool starts or retires workers. */
  workers: boolean;
  /** The admin section: 'moved' when its listen address changed, was added or removed. */
  admin: 'same' | 'settings' | 'moved';
  /** What changed, in words an operator reads, and the settings that wait for a restart. */
  report: ReloadReport;
}

const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);

/** Names of the services bound to a VIP address: they start paused and follow the role. */
export function vipBoundServices(config: Config): string[] {
  const ha = config.ha;
  if (!ha) return [];
  const vips = new Set(ha.vip.map((v) => v.address));
  return config.services.filter((s) => vips.has(s.listen.host)).map((s) => s.name);
}

/** The VIP part of the diff, from the config in force and the next one given the running `ha` (the VIPs are restart-only). */
export function vipReload(prev: Config, next: Config): VipReload {
  const before = new Set(vipBoundServices(prev));
  const bound = new Set(vipBoundServices(next));
  return {
    bound,
    onto: [...bound].filter((s) => !before.has(s)),
    off: [...before].filter((s) => !bound.has(s) && next.services.some((x) => x.name === s)),
  };
}

/** The services of `next` that listen on an address `running` does not: none in most reloads and every runtime change of backends. */
export function newListens(running: Config | undefined, next: Config): string[] {
  // A protocol is part of the address: a service turned from tcp to udp binds a new socket.
  const key = (s: Config['services'][number]): string => `${s.protocol} ${formatHostPort(s.listen)}`;
  const keys = new Set(running?.services.map(key) ?? []);
  return next.services.filter((s) => !keys.has(key(s))).map((s) => s.name);
}

/** True when `next` listens on nothing that `running` does not: then there is nothing to check. */
export function sameListens(running: Config | undefined, next: Config): boolean {
  return newListens(running, next).length === 0;
}

/** The one diff of a reload (see the header comment); `live`: the balancer's runtime changes, for the report. */
export function diffConfigs(prev: Config, next: Config, live?: LiveBackends): ConfigDiff {
  return {
    newListens: newListens(prev, next),
    vip: vipReload(prev, { ...next, ha: prev.ha }),
    logging: !same(prev.logging, next.logging),
    workers: prev.workers !== next.workers,
    admin: adminChange(prev.admin, next.admin),
    report: describeChanges(prev, next, live),
  };
}

function adminChange(prev: AdminConfig | undefined, next: AdminConfig | undefined): ConfigDiff['admin'] {
  if (prev?.listen.host !== next?.listen.host || prev?.listen.port !== next?.listen.port) return 'moved';
  return same(prev, next) ? 'same' : 'settings';
}

/** What a reload from `prev` (and the runtime changes `live` holds) to `next` changes, in words an operator reads in the log. */
export function describeChanges(prev: Config, next: Config, live?: LiveBackends): ReloadReport {
  const changes: string[] = [];
  const restart: string[] = [];
  const kept: string[] = [];
  const prevServices = new Map(prev.services.map((s) => [s.name, s]));
  const nextServices = new Map(next.services.map((s) => [s.name, s]));
  for (const [name, s] of nextServices) {
    const p = prevServices.get(name);
    if (!p) {
      changes.push(`service ${name} added (listen ${formatHostPort(s.listen)}, ${s.backends.length} backends)`);
      continue;
    }
    describeService(p, s, changes, kept, live);
  }
  for (const name of prevServices.keys()) if (!nextServices.has(name)) changes.push(`service ${name} removed`);

  if (prev.workers !== next.workers) changes.push(`workers: ${prev.workers} → ${next.workers}`);
  if (!same(prev.admin, next.admin)) {
    if (!prev.admin) changes.push(`admin added (listen ${formatHostPort(next.admin!.listen)})`);
    else if (!next.admin) changes.push('admin removed');
    else if (!same(prev.admin.listen, next.admin.listen)) changes.push(`admin.listen ${formatHostPort(prev.admin.listen)} → ${formatHostPort(next.admin.listen)}`);
    else changes.push('admin settings');
  }
  if (prev.ha && next.ha) {
    for (const key of Object.keys(next.ha) as (keyof HaConfig)[]) {
      if (same(prev.ha[key], next.ha[key])) continue;
      if ((HA_RESTART_ONLY as readonly string[]).includes(key)) restart.push(`ha.${key}`);
      else changes.push(`ha.${key}: ${JSON.stringify(prev.ha[key])} → ${JSON.stringify(next.ha[key])}`);
    }
  } else if (prev.ha || next.ha) {
    restart.push(prev.ha ? 'ha (removed)' : 'ha (added)');
  }
  // bgp is read at start (src/bgp): the running section stays in force until a restart.
  if (!same(prev.bgp, next.bgp)) restart.push(prev.bgp && next.bgp ? 'bgp' : prev.bgp ? 'bgp (removed)' : 'bgp (added)');
  if (!same(prev.logging, next.logging)) changes.push(`logging: ${JSON.stringify(prev.logging)} → ${JSON.stringify(next.logging)}`);
  if (prev.shutdown_grace !== next.shutdown_grace) changes.push(`shutdown_grace: ${prev.shutdown_grace}ms → ${next.shutdown_grace}ms`);
  return { changes, restart_required: restart, ...(kept.length > 0 ? { kept } : {}) };
}

function describeService(p: ServiceConfig, s: ServiceConfig, changes: string[], kept: string[], live: LiveBackends | undefined): void {
  const at = `service ${s.name}`;
  for (const key of ['protocol', 'listen', 'balance', 'hash_key', 'table_size', 'hash_balance_factor', 'max_connections', 'queue', 'retries', 'timeouts', 'udp', 'health', 'on_marked_down', 'slow_start', 'discover'] as const) {
    if (!same(p[key], s[key])) {
      const show = (v: unknown): string => (key === 'listen' ? formatHostPort(v as ServiceConfig['listen']) : JSON.stringify(v));
      changes.push(`${at}: ${key} ${show(p[key])} → ${show(s[key])}`);
    }
  }
  const prevB = new Map(p.backends.map((b) => [formatHostPort(b.address), b]));
  const nextB = new Map(s.backends.map((b) => [formatHostPort(b.address), b]));
  for (const [addr, b] of nextB) {
    const old = prevB.get(addr);
    if (!old) {
      changes.push(`${at}: backend ${addr} added`);
      continue;
    }
    for (const key of ['weight', 'max_connections', 'backup', 'state'] as const) {
      // What is in force may be a runtime change (the API's weight or state), not the file's value.
      const now = key === 'weight' ? live?.weightOf(s.name, addr) : key === 'state' ? live?.adminState(s.name, addr) : undefined;
      const runtime = now !== undefined && now !== old[key];
      // The balancer keeps a runtime state unless the file's state for the backend changed.
      if (key === 'state' && runtime && old.state === b.state) {
        kept.push(`${at}: backend ${addr} state ${String(now)} (set at run time; the file says ${b.state})`);
        continue;
      }
      const from = runtime ? now : old[key];
      if (from !== b[key]) changes.push(`${at}: backend ${addr} ${key} ${String(from)} → ${String(b[key])}${runtime ? ` (${String(from)} was set at run time)` : ''}`);
    }
  }
  for (const addr of prevB.keys()) if (!nextB.has(addr)) changes.push(`${at}: backend ${addr} removed`);
}
