/**
 * What a BGP speaker driver does for src/bgp/index.ts, and the pieces both drivers use: finding a
 * binary on PATH at start (a missing one is an error naming it, not a failure at the first
 * announce) and running a command as a child process (never blocking the loop that carries the
 * proxy's control and the liveness feed).
 */
import { execFile } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { BgpSpeakerError } from './errors.ts';

/** One BGP session as the speaker reports it. */
export interface SessionState {
  neighbor: string;
  asn: number | null;
  /** The speaker's word for it: idle, connect, active, opensent, openconfirm, established. */
  state: string;
  established: boolean;
}

export interface Speaker {
  readonly kind: 'gobgp' | 'command';
  /** Checks its binaries and starts what it runs; rejects with BgpSpeakerError. */
  start(): Promise<void>;
  /** Rejects with BgpRouteError. */
  announce(vip: string): Promise<void>;
  withdraw(vip: string): Promise<void>;
  /** The sessions as last seen, or null when the speaker cannot tell (command). */
  sessions(): SessionState[] | null;
  /** Stops what it runs (gobgpd: its sessions close, so every route goes with them). */
  stop(): Promise<void>;
  /** Extra fields for the status view (pid, restarts, liveness bound). */
  info(): Record<string, unknown>;
  /**
   * Set by the owner: called when the speaker lost its routes on its own (gobgpd restarted after
   * a hang or a crash), so what should be announced is announced again.
   */
  onRoutesLost?: (cause: string) => void;
  /** Set by the owner: called when a session's state changes. */
  onSession?: (neighbor: string, from: string, to: string) => void;
  /**
   * `fulcrum upgrade`, the old process: what the next one adopts (plain data, and the descriptors
   * it must hold), or null when nothing runs to adopt (the next one starts its own).
   */
  handOver?(): { carried: CarriedGobgp; handles: NamedHandle[] } | null;
  /**
   * `fulcrum upgrade`: lets go of what runs without stopping it (the old process once the new one
   * serves; the new one when its start fails before the hand-over is final): timers stop, this
   * process's copies of the descriptors close, the daemon, its routes and its state stay.
   */
  release?(): Promise<void>;
  /** The new process: the hand-over is final; from now on stop() stops what it adopted. */
  commit?(): void;
  /** The VIPs the daemon announces now (read from it), or null when it cannot tell (command). */
  announced?(): Promise<string[] | null>;
}

/** A descriptor handed to the next process (src/control/upgrade.ts), by name: a libuv handle. */
export interface NamedHandle {
  name: string;
  handle: object;
}

/** The running gobgpd the next process adopts instead of starting its own (src/bgp/gobgp.ts). */
export interface CarriedGobgp {
  /** Its state directory (config, API socket). */
  dir: string;
  /** The config gobgpd runs with: the next process adopts only when its own config gives the same. */
  conf: string;
  liveness_ms: number;
  wrapper_pid: number;
  gobgpd_pid: number | null;
}

/**
 * What an upgrade carries of the BGP part (src/control/carry.ts CarriedState.bgp): which speaker,
 * the VIPs on lo and the ones announced when the state was taken, and the gobgp daemon to adopt.
 */
export interface CarriedBgp {
  speaker: 'gobgp' | 'command';
  vips: string[];
  announced: string[];
  gobgp?: CarriedGobgp;
}

/** The path of an executable: `name` itself when it holds a slash, else the first match on PATH. */
export function findExecutable(name: string, path = process.env.PATH ?? ''): string | undefined {
  const candidates = name.includes('/') ? [name] : path.split(delimiter).filter(Boolean).map((d) => join(d, name));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      return c;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Throws BgpSpeakerError naming the binary and what needs it. */
export function requireExecutable(name: string, neededBy: string): string {
  const found = findExecutable(name);
  if (!found) throw new BgpSpeakerError(`${neededBy}: ${name} not found ${name.includes('/') ? '(or not executable)' : 'on PATH'}`);
  return found;
}

export interface RunResult {
  ok: boolean;
  stdout: string;
  stderr: string;
  error?: Error;
}

export function runCommand(file: string, args: string[], timeoutMs = 5000): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 4 << 20 }, (error, stdout, stderr) => {
      resolve({ ok: !error, stdout: String(stdout ?? ''), stderr: String(stderr ?? ''), error: error ?? undefined });
    });
  });
}
