/**
 * Building and driving bench/loadgen/loadgen.c from TypeScript: backends (echo, sink), client runs
 * (rr, churn, bulk) and the idle hold. Every child is bounded in time and killed by its own pid.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const BENCH_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const OUT_DIR = path.join(BENCH_DIR, 'out');
export const LOADGEN = path.join(OUT_DIR, 'loadgen');
/** The UDP load generator and echo backend (bench/loadgen/udpgen.c; bench/lib/udp.ts runs it). */
export const UDPGEN = path.join(OUT_DIR, 'udpgen');

/** Compiles the load generators (loadgen, udpgen) into bench/out/ (gitignored) when missing or older than their sources. */
export function buildLoadgen(): string {
  mkdirSync(OUT_DIR, { recursive: true });
  for (const out of [LOADGEN, UDPGEN]) {
    const source = path.join(BENCH_DIR, 'loadgen', `${path.basename(out)}.c`);
    if (existsSync(out) && statSync(out).mtimeMs >= statSync(source).mtimeMs) continue;
    try {
      execFileSync('cc', ['-O2', '-pthread', '-o', out, source], { stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      const e = err as { stderr?: Buffer; message: string };
      throw new Error(`building the load generator failed (cc -O2 -pthread ${source}): ${e.stderr?.toString() || e.message}` +
        '\n  a C compiler is needed: apt-get install gcc');
    }
  }
  return LOADGEN;
}

export interface LoadgenResult {
  mode: string;
  ok: boolean;
  errors: number;
  corrupt: number;
  timed_out?: boolean;
  cpu_s?: number;
  // rr, churn
  count?: number;
  /** Completed requests / connections, warm-up and the tail after the window included. */
  total?: number;
  /** Connections whose connect succeeded. */
  connected?: number;
  per_s?: number;
  p50_us?: number;
  p90_us?: number;
  p99_us?: number;
  p999_us?: number;
  mean_us?: number;
  // bulk
  sent?: number;
  received?: number;
  gbit_s?: number;
  seconds?: number;
  reports_missing?: number;
  [key: string]: unknown;
}

const children = new Set<ChildProcess>();

/** Kills every child this module started (by pid) — for the harness's exit path. */
export function killAllLoadgens(): void {
  for (const c of children) if (c.exitCode === null && c.pid) {
    try {
      process.kill(c.pid, 'SIGKILL');
    } catch { /* already gone */ }
  }
}

export function spawnLoadgen(args: string[], stdin: 'pipe' | 'ignore' = 'ignore', bin = LOADGEN): ChildProcess {
  const child = spawn(bin, args, { stdio: [stdin, 'pipe', 'pipe'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** Resolves each JSON line the child prints, in order; rejects when it exits first. */
export function jsonLines(child: ChildProcess): () => Promise<Record<string, unknown>> {
  const queue: Record<string, unknown>[] = [];
  const waiters: { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void }[] = [];
  let stderr = '';
  let ended: Error | null = null;
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  createInterface({ input: child.stdout! }).on('line', (line) => {
    let obj: Record<string, unknown>;
    try {
      obj = JSON.parse(line);
    } catch {
      return;
    }
    const w = waiters.shift();
    if (w) w.resolve(obj);
    else queue.push(obj);
  });
  child.once('exit', (code, signal) => {
    // Give readline a moment to deliver the last line before failing the waiters.
    setTimeout(() => {
      ended = new Error(`loadgen ${child.spawnargs.slice(1).join(' ')} exited (${signal ?? code}) ${stderr.trim()}`);
      for (const w of waiters.splice(0)) w.reject(ended);
    }, 50);
  });
  return () => {
    const v = queue.shift();
    if (v) return Promise.resolve(v);
    if (ended) return Promise.reject(ended);
    return new Promise((resolve, reject) => waiters.push({ resolve, reject }));
  };
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string, onTimeout: () => void): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => {
        onTimeout();
        reject(new Error(`${what}: no answer within ${ms} ms`));
      }, ms);
    }),
  ]);
}

export interface Backend {
  mode: 'echo' | 'sink';
  address: string; // host:port
  pid: number;
  /** SIGTERM, then the stats line it prints (bytes, errors, corrupt). */
  stop(): Promise<Record<string, unknown>>;
}

/**
 * Starts an echo or sink backend on host (port 0 = any) and waits for its ready line.
 * `closeAfter` (echo): the backend closes each connection once it has echoed that many bytes.
 */
export async function startBackend(mode: 'echo' | 'sink', listen: string, threads = 1, closeAfter = 0): Promise<Backend> {
  const args = [mode, '--listen', listen, '--threads', String(threads)];
  if (closeAfter > 0) args.push('--close-after', String(closeAfter));
  const child = spawnLoadgen(args);
  const next = jsonLines(child);
  const ready = await withTimeout(next(), 5000, `${mode} backend on ${listen}`, () => child.kill('SIGKILL'));
  return {
    mode,
    address: String(ready.listen),
    pid: child.pid!,
    async stop() {
      if (child.exitCode !== null) return { mode, phase: 'gone' };
      child.kill('SIGTERM');
      return withTimeout(next(), 5000, `${mode} backend stop`, () => child.kill('SIGKILL')).catch(() => ({ mode, phase: 'killed' }));
    },
  };
}

export interface ClientOptions {
  mode: 'rr' | 'churn' | 'bulk';
  targets: string[];
  conns: number;
  durationS: number;
  warmupS?: number;
  threads?: number;
  size?: number;
  source?: { base: string; count: number };
  /** churn: after the reply, read until the other side closes (a backend that closes first). */
  readEof?: boolean;
}

/** Runs one client measurement and returns its JSON line; the child is killed if it overruns. */
export async function runClient(o: ClientOptions): Promise<LoadgenResult> {
  const timeoutS = o.durationS + (o.warmupS ?? 0.5) + 20;
  const args = [o.mode, '--target', o.targets.join(','), '--conns', String(o.conns), '--duration', String(o.durationS),
    '--threads', String(o.threads ?? 1), '--timeout', String(timeoutS)];
  if (o.warmupS !== undefined) args.push('--warmup', String(o.warmupS));
  if (o.size !== undefined) args.push('--size', String(o.size));
  if (o.source) args.push('--source', o.source.base, '--source-count', String(o.source.count));
  if (o.readEof) args.push('--read-eof', '1');
  const child = spawnLoadgen(args);
  const next = jsonLines(child);
  const res = await withTimeout(next(), (timeoutS + 10) * 1000, `loadgen ${o.mode}`, () => child.kill('SIGKILL'));
  return res as LoadgenResult;
}

export interface IdleHold {
  /** The "established" line: all connections proven end to end (or not: see ok/errors). */
  established: Record<string, unknown>;
  /** Ends the hold; resolves the "done" line. */
  release(): Promise<Record<string, unknown>>;
}

/** Opens conns idle connections to target through whatever is there, and holds them. */
export async function holdIdle(target: string, conns: number, holdS = 120): Promise<IdleHold> {
  const child = spawnLoadgen(['idle', '--target', target, '--conns', String(conns), '--duration', String(holdS),
    '--timeout', String(holdS + 60)], 'pipe');
  const next = jsonLines(child);
  const established = await withTimeout(next(), 60_000, `loadgen idle ×${conns}`, () => child.kill('SIGKILL'));
  return {
    established,
    release() {
      child.stdin!.end('\n');
      return withTimeout(next(), 20_000, 'loadgen idle release', () => child.kill('SIGKILL'));
    },
  };
}
