/**
 * Real network namespaces for tests (root only). A NetLab owns every namespace and process it
 * creates, under names unique to the test file and process (`h4<tag>-<pid>-<name>`), and
 * destroys them all in destroy(): processes it spawned (by pid), then anything still running in
 * its namespaces (`ip netns pids`), then the namespaces. destroy() is also hooked to process exit
 * and to SIGINT/SIGTERM, so a failing or interrupted test leaves nothing behind; sweepStale()
 * removes what a killed earlier run of the same tag left.
 *
 * Nothing in the root namespace is touched: bridges live in their own namespace and veth pairs
 * are created directly between namespaces (`ip -n A link add … peer name … netns B`).
 */
import { execFile, execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { readdirSync } from 'node:fs';

export const NODE = new URL('../../node_modules/.bin/node', import.meta.url).pathname;
export const ROOT = new URL('../..', import.meta.url).pathname.replace(/\/$/, '');

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function run(file: string, args: string[], timeoutMs = 10_000): Promise<ExecResult> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as NodeJS.ErrnoException & { code?: unknown }).code === 'number' ? (err as unknown as { code: number }).code : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** Runs a command and throws with its stderr when it fails. */
export async function must(file: string, args: string[]): Promise<string> {
  const r = await run(file, args);
  if (r.code !== 0) throw new Error(`${file} ${args.join(' ')} → exit ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}

export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/** True when this machine can make namespaces and has the tools the failover tests need. */
export function netnsAvailable(): boolean {
  if (!isRoot()) return false;
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' });
    execFileSync('arping', ['-V'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Whether a process runs (signal 0). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function listNetns(): string[] {
  try {
    return readdirSync('/var/run/netns');
  } catch {
    return [];
  }
}

/** Pids running in a namespace (ours: the namespace is unique to this lab). */
export function pidsIn(ns: string): number[] {
  try {
    return execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function killAndDelete(ns: string): void {
  for (const pid of pidsIn(ns)) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
  try { execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' }); } catch { /* gone */ }
}

/** Removes namespaces an earlier, killed run of this tag left (their owner pid is dead). */
export function sweepStale(tag: string): void {
  const re = new RegExp(`^h4${tag}-(\\d+)-`);
  for (const ns of listNetns()) {
    const m = re.exec(ns);
    if (m && !alive(Number(m[1]))) killAndDelete(ns);
  }
}

const liveLabs = new Set<NetLab>();
let hooked = false;
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => { for (const lab of liveLabs) lab.destroySync(); });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      for (const lab of liveLabs) lab.destroySync();
      process.exit(130);
    });
  }
}

export class NetLab {
  readonly prefix: string;
  private readonly namespaces: string[] = [];
  private readonly procs = new Set<ChildProcess>();

  constructor(tag: string) {
    if (!/^[a-z0-9]{1,6}$/.test(tag)) throw new Error(`tag must be 1–6 of [a-z0-9], got ${tag}`);
    sweepStale(tag);
    this.prefix = `h4${tag}-${process.pid}`;
    liveLabs.add(this);
    hookExit();
  }

  /** The full namespace name for a short one. */
  ns(name: string): string {
    return `${this.prefix}-${name}`;
  }

  async addNs(name: string): Promise<string> {
    const ns = this.ns(name);
    await must('ip', ['netns', 'add', ns]);
    this.namespaces.push(ns);
    await must('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    return ns;
  }

  /** `ip -n NS ARGS…` */
  ip(name: string, ...args: string[]): Promise<string> {
    return must('ip', ['-n', this.ns(name), ...args]);
  }

  /** Runs a command inside a namespace and waits for it. */
  exec(name: string, file: string, args: string[], timeoutMs = 10_000): Promise<ExecResult> {
    return run('ip', ['netns', 'exec', this.ns(name), file, ...args], timeoutMs);
  }

  sysctl(name: string, key: string, value: string | number): Promise<ExecResult> {
    return this.exec(name, 'sysctl', ['-qw', `${key}=${value}`]);
  }

  /** Starts a long-running process inside a namespace; destroy() kills it if it still runs. */
  spawn(name: string, file: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', this.ns(name), file, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    this.procs.add(child);
    child.once('exit', () => this.procs.delete(child));
    return child;
  }

  /** A veth pair between two namespaces (or inside one), both ends up, optionally a bridge port. */
  async veth(a: string, ifA: string, b: string, ifB: string, opts: { bridgeB?: string } = {}): Promise<void> {
    await must('ip', ['-n', this.ns(a), 'link', 'add', ifA, 'type', 'veth', 'peer', 'name', ifB, 'netns', this.ns(b)]);
    if (opts.bridgeB) await this.ip(b, 'link', 'set', ifB, 'master', opts.bridgeB);
    await this.ip(a, 'link', 'set', ifA, 'up');
    await this.ip(b, 'link', 'set', ifB, 'up');
  }

  async bridge(name: string, br: string): Promise<void> {
    await this.ip(name, 'link', 'add', br, 'type', 'bridge');
    await this.ip(name, 'link', 'set', br, 'up');
  }

  async destroy(): Promise<void> {
    this.destroySync();
  }

  /** Synchronous so it can run from an exit hook. Kills by pid only: processes this lab made or that run in its namespaces. */
  destroySync(): void {
    for (const p of this.procs) {
      if (p.pid !== undefined && p.exitCode === null) {
        try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ }
      }
    }
    this.procs.clear();
    for (const ns of this.namespaces.splice(0).reverse()) killAndDelete(ns);
    liveLabs.delete(this);
  }
}

/** Resolves with the first line of `child`'s stdout/stderr matching `re` (or rejects after `ms`). */
export function waitForLine(child: ChildProcess, re: RegExp, ms: number, stream: 'stdout' | 'stderr' | 'both' = 'both'): Promise<string> {
  return new Promise((resolve, reject) => {
    const streams = stream === 'both' ? [child.stdout, child.stderr] : [child[stream]];
    let buf = '';
    const onData = (d: Buffer) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (re.test(line)) {
          done();
          resolve(line);
          return;
        }
      }
    };
    const timer = setTimeout(() => { done(); reject(new Error(`no line matching ${re} within ${ms}ms`)); }, ms);
    const done = () => {
      clearTimeout(timer);
      for (const s of streams) s?.off('data', onData);
    };
    for (const s of streams) s?.on('data', onData);
  });
}

/**
 * Parses `child`'s stdout and stderr as JSON lines (pino's) into `into`, as they come; a line that
 * is not JSON is kept as { level: 50, msg: line }. Returns `into`.
 */
export function collectJsonLines<T extends { level: number; msg: string }>(child: ChildProcess, into: T[] = []): T[] {
  for (const stream of [child.stdout, child.stderr]) {
    let buf = '';
    stream?.on('data', (d: Buffer) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const raw = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          into.push(JSON.parse(raw) as T);
        } catch {
          into.push({ level: 50, msg: raw } as T);
        }
      }
    });
  }
  return into;
}

/** True when `bin` (a name on PATH or a path) can be run: tests that need a daemon skip without it. */
export function haveBinary(bin: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v "$0"`, bin], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export { sleep } from './net.ts';
