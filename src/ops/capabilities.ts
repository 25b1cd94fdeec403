/**
 * What a config needs of the Linux capabilities, checked before anything starts (`fulcrum run`)
 * and reported by `fulcrum check`, so that a missing one is named with what needs it instead of
 * failing later in a bind, in `ip` or in `arping`:
 *
 *   CAP_NET_BIND_SERVICE  a listen port below net.ipv4.ip_unprivileged_port_start (services,
 *                         admin.listen, ha.bind): the bind is this process's own
 *   CAP_NET_ADMIN         `ha` (ip addr add/del of the VIP) and `bgp` (its VIPs on lo): `ip` runs it
 *   CAP_NET_RAW           `ha`'s gratuitous ARP: `arping` runs it
 *
 * The process's own capabilities come from /proc/self/status (CapEff, CapBnd, NoNewPrivs). What
 * a child gets is another matter: `ip` (iproute2) drops every capability when started by a
 * non-root user who does not hold CAP_NET_ADMIN as inheritable (ambient) — so a file capability
 * on `ip` does not help — and NoNewPrivileges ignores file capabilities. CAP_NET_ADMIN is
 * therefore checked on `ip` itself: `ip -batch -` is started (it waits for commands on stdin),
 * its CapEff read from /proc/<pid>/status, and its stdin closed — it runs nothing. `arping` keeps
 * a file capability; whether it has one cannot be read without libcap, so CAP_NET_RAW counts as
 * available when this process holds it, or when a file capability on arping could give it (in
 * the bounding set, no NoNewPrivileges: then a warning, not a refusal).
 *
 * Root with its full set passes everything. Runs once per start and per `fulcrum check`.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { formatHostPort } from '../config/address.ts';
import type { Config } from '../config/schema.ts';
import { ERROR_CODES, FulcrumError } from '../errors.ts';

/** Bit numbers (linux/capability.h). */
export const CAPABILITIES = { CAP_NET_BIND_SERVICE: 10, CAP_NET_ADMIN: 12, CAP_NET_RAW: 13 } as const;
export type Capability = keyof typeof CAPABILITIES;

/** One thing in the config that needs a capability. */
export interface CapabilityNeed {
  capability: Capability;
  /** What needs it, as the config names it: "services[web].listen 0.0.0.0:80", "ha (ip addr add 10.0.0.100/24)". */
  what: string;
  /** A reload of the file can bring it into force (a service's or the admin API's listen address); `ha` and `bgp` wait for a restart. */
  reloadable: boolean;
}

/** A process's capabilities as /proc/<pid>/status shows them. */
export interface ProcessCapabilities {
  effective: bigint;
  bounding: bigint;
  noNewPrivs: boolean;
}

/** Parses /proc/<pid>/status (CapEff, CapBnd, NoNewPrivs). */
export function parseStatus(status: string): ProcessCapabilities {
  const field = (name: string): string | undefined => new RegExp(`^${name}:\\s*(\\S+)`, 'm').exec(status)?.[1];
  const hex = (name: string): bigint => BigInt(`0x${field(name) ?? '0'}`);
  return { effective: hex('CapEff'), bounding: hex('CapBnd'), noNewPrivs: field('NoNewPrivs') === '1' };
}

export const has = (set: bigint, cap: Capability): boolean => ((set >> BigInt(CAPABILITIES[cap])) & 1n) === 1n;

/** net.ipv4.ip_unprivileged_port_start in this network namespace (1024 when it cannot be read). */
export function unprivilegedPortStart(): number {
  try {
    const n = Number(readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8').trim());
    return Number.isInteger(n) ? n : 1024;
  } catch {
    return 1024;
  }
}

/** What `config` needs; `portStart` is net.ipv4.ip_unprivileged_port_start. */
export function capabilityNeeds(config: Config, portStart: number): CapabilityNeed[] {
  const needs: CapabilityNeed[] = [];
  const port = (what: string, listen: { host: string; port: number }, reloadable: boolean): void => {
    if (listen.port > 0 && listen.port < portStart) {
      needs.push({ capability: 'CAP_NET_BIND_SERVICE', what: `${what} ${formatHostPort(listen)} (ports below ${portStart})`, reloadable });
    }
  };
  for (const s of config.services) port(`services[${s.name}].listen`, s.listen, true);
  if (config.admin) port('admin.listen', config.admin.listen, true);
  if (config.ha) {
    port('ha.bind', config.ha.bind, false);
    const vips = config.ha.vip.map((v) => `${v.address}/${v.prefix}`).join(', ');
    needs.push({ capability: 'CAP_NET_ADMIN', what: `ha (ip addr add ${vips} dev ${config.ha.interface})`, reloadable: false });
    needs.push({ capability: 'CAP_NET_RAW', what: `ha (arping, the gratuitous ARP for ${vips})`, reloadable: false });
  }
  if (config.bgp) needs.push({ capability: 'CAP_NET_ADMIN', what: `bgp (ip addr add ${config.bgp.vips.join(', ')} dev lo)`, reloadable: false });
  return needs;
}

/**
 * The capabilities `ip` holds when this process runs it: `ip -batch -` waits on stdin while its
 * /proc status is read (Node's spawn returns once the exec has happened; `name`, the process name
 * the status must show, covers a command that execs the probed one in turn: tests run it through
 * setpriv). Rejects when the command cannot be run.
 */
export function childCapabilities(command = 'ip', args = ['-batch', '-'], name = 'ip'): Promise<ProcessCapabilities> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['pipe', 'ignore', 'ignore'] });
    child.once('error', reject);
    child.once('spawn', () => {
      const deadline = Date.now() + 2000;
      const read = (): void => {
        let status: string;
        try {
          status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
        } catch (err) {
          child.stdin?.end();
          reject(err);
          return;
        }
        if (!new RegExp(`^Name:\\s*${name}$`, 'm').test(status) && Date.now() < deadline) {
          setTimeout(read, 5);
          return;
        }
        const caps = parseStatus(status);
        child.once('close', () => resolve(caps));
        child.stdin?.end();
      };
      read();
    });
  });
}

/** A capability the config needs and this process cannot use. */
export class CapabilityError extends FulcrumError {
  readonly missing: CapabilityNeed[];
  constructor(missing: CapabilityNeed[]) {
    const lines = missing.map((m) => `  ${m.capability}: needed by ${m.what}`);
    super(ERROR_CODES.CAPABILITY, `missing capabilit${missing.length === 1 ? 'y' : 'ies'} (run as root, or give them to the user: ` +
      `AmbientCapabilities= in the systemd unit, README "Production: user, capabilities, systemd"):\n${lines.join('\n')}`);
    this.missing = missing;
  }
}

export interface CapabilityReport {
  needs: CapabilityNeed[];
  /** Needed and not available: `fulcrum run` refuses to start. */
  missing: CapabilityNeed[];
  /** Available only if a file capability gives it to the command (arping): said, not refused. */
  uncertain: CapabilityNeed[];
}

export interface CheckOptions {
  /** This process's /proc status (tests give another). */
  self?: ProcessCapabilities;
  /** What `ip` holds when run from here (tests give another). */
  ip?: () => Promise<ProcessCapabilities>;
  portStart?: number;
}

/** What `config` needs and which of it this process lacks. */
export async function checkCapabilities(config: Config, options: CheckOptions = {}): Promise<CapabilityReport> {
  return checkNeeds(capabilityNeeds(config, options.portStart ?? unprivilegedPortStart()), options);
}

async function checkNeeds(needs: CapabilityNeed[], options: CheckOptions): Promise<CapabilityReport> {
  const report: CapabilityReport = { needs, missing: [], uncertain: [] };
  if (needs.length === 0) return report;
  const self = options.self ?? parseStatus(readFileSync('/proc/self/status', 'utf8'));
  let ip: ProcessCapabilities | string | undefined;
  for (const need of needs) {
    if (need.capability === 'CAP_NET_ADMIN') {
      ip ??= await (options.ip ?? childCapabilities)().catch((err: NodeJS.ErrnoException) => `cannot run ip (${err.code ?? err.message})`);
      if (typeof ip === 'string') report.missing.push({ ...need, what: `${need.what}; ${ip}: install iproute2` });
      else if (!has(ip.effective, need.capability)) report.missing.push(need);
    } else if (!has(self.effective, need.capability)) {
      const fileCapability = need.capability === 'CAP_NET_RAW' && has(self.bounding, need.capability) && !self.noNewPrivs;
      (fileCapability ? report.uncertain : report.missing).push(need);
    }
  }
  return report;
}

/**
 * `fulcrum run`'s check: throws CapabilityError naming every missing capability and what needs
 * it; returns the report (its `uncertain` ones are for a warning).
 */
export async function requireCapabilities(config: Config, options: CheckOptions = {}): Promise<CapabilityReport> {
  const report = await checkCapabilities(config, options);
  if (report.missing.length > 0) throw new CapabilityError(report.missing);
  return report;
}

/**
 * A reload's check (src/control/reload.ts): what `next` brings into force that `prev` did not
 * need (a new listen address below the unprivileged ports) and this process cannot do. Throws
 * CapabilityError before anything is applied, so the running config keeps serving and the
 * refusal names the capability instead of a bind's EACCES.
 */
export async function requireReloadCapabilities(prev: Config, next: Config, options: CheckOptions = {}): Promise<void> {
  const portStart = options.portStart ?? unprivilegedPortStart();
  const before = new Set(capabilityNeeds(prev, portStart).map((n) => n.what));
  const added = capabilityNeeds(next, portStart).filter((n) => n.reloadable && !before.has(n.what));
  if (added.length === 0) return;
  const report = await checkNeeds(added, options);
  if (report.missing.length > 0) throw new CapabilityError(report.missing);
}

/** The warning for capabilities only a file capability on the command could give. */
export function uncertainWarning(uncertain: CapabilityNeed[]): string | undefined {
  if (uncertain.length === 0) return undefined;
  return `${uncertain.map((u) => `${u.capability} (${u.what})`).join(', ')}: this process does not hold it; ` +
    'it works only if the command carries it as a file capability (setcap cap_net_raw+ep "$(command -v arping)")';
}
