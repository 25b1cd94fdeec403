/**
 * The open-files limit: raised to the hard limit at start, and the connection capacity it gives
 * said in the log, so an operator sees "about 500 sessions" before 2,000 clients find out.
 *
 * Node has no setrlimit; `prlimit` (util-linux) sets it on our own pid. Node itself raises the
 * soft limit at start-up on most builds, so this usually finds nothing to do; it matters when the
 * process was started some other way, and the log line matters always. Called once by
 * startFulcrum, before the workers start (their sockets share this process's table).
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { Logger } from './observability/log.ts';

/**
 * Descriptors the process holds besides its sessions: Node and its threads, the listeners, the
 * admin server, probes, the heartbeat socket, the log. An estimate for the capacity line only.
 */
export const OWN_DESCRIPTORS = 128;

export interface OpenFilesLimit {
  soft: number;
  hard: number;
}

/** This process's RLIMIT_NOFILE from /proc/self/limits ("unlimited" as Infinity), or undefined off Linux. */
export function readOpenFilesLimit(): OpenFilesLimit | undefined {
  let text: string;
  try {
    text = readFileSync('/proc/self/limits', 'utf8');
  } catch {
    return undefined;
  }
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text);
  if (!m) return undefined;
  const n = (v: string): number => (v === 'unlimited' ? Infinity : Number(v));
  return { soft: n(m[1]), hard: n(m[2]) };
}

/** Sessions the limit allows, about: each takes two descriptors (the client's and the backend's). */
export const sessionCapacity = (soft: number): number => Math.max(0, Math.floor((soft - OWN_DESCRIPTORS) / 2));

/**
 * Raises the soft open-files limit to the hard one with `prlimit --pid <own pid>`, and logs the
 * limit in force and the sessions it allows. A failure (no prlimit, refused) is logged, never fatal.
 */
export function raiseOpenFilesLimit(log: Logger, prlimit = 'prlimit'): OpenFilesLimit | undefined {
  const before = readOpenFilesLimit();
  if (before === undefined) return undefined;
  let after = before;
  if (before.soft < before.hard) {
    const hard = before.hard === Infinity ? 'unlimited' : String(before.hard);
    const r = spawnSync(prlimit, ['--pid', String(process.pid), `--nofile=${hard}:${hard}`], { encoding: 'utf8', timeout: 5000 });
    const why = r.error ? (r.error as NodeJS.ErrnoException).code ?? r.error.message : r.status !== 0 ? (r.stderr.trim() || `exit ${r.status}`) : null;
    if (why !== null) log.warn({ soft: before.soft, hard: before.hard, why }, `cannot raise the open-files limit to the hard limit with ${prlimit}: ${why}`);
    after = readOpenFilesLimit() ?? before;
  }
  const raised = after.soft > before.soft ? { was: before.soft } : {};
  log.info({ soft: after.soft, hard: after.hard, ...raised, sessions: sessionCapacity(after.soft) },
    `open-files limit ${after.soft}: about ${sessionCapacity(after.soft)} concurrent sessions (two descriptors each, ${OWN_DESCRIPTORS} kept for the process)`);
  return after;
}
