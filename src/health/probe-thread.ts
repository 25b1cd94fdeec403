/**
 * The probes run on a worker thread of their own, as keepalived runs its checkers in a process
 * apart from VRRP. The drivers (pg, mysql2, the RESP and HTTP readers) parse what backends send
 * on the thread they run on: here a driver that throws out of a socket callback ends this thread,
 * not the process, and one that loops or parses for long holds up the probes — not the heartbeats,
 * the admin API and the control plane on the main thread.
 *
 * The monitor asks through `probe(type)`: a Probe whose calls are messages to a thread. A thread
 * that does not answer a probe within its timeout plus a margin is ended (`unresponsive`); one
 * that ends starts again for the next probe. What a thread's end means for its probes in flight
 * (a hostile backend's reply ran it out of memory, and every other backend's probe on it was
 * lost with it — a real redis in another service was marked down that way):
 *
 * - alone in flight, the probe fails: its backend is the one whose reply ended the thread;
 * - with others, none of them fails: each is skipped (ProbeResult.skipped, the monitor counts
 *   nothing and probes again at the next interval), and each of their backends is moved to a
 *   thread of its own (up to MAX_ISOLATED threads; past that they share one), so the next end
 *   names its culprit and touches no one else; a backend lost with others LOST_LIMIT times in a
 *   row fails anyway, so no backend escapes its probes by ending threads.
 *
 * Called by the monitor once per probe (every health.interval per backend).
 */
import { Worker } from 'node:worker_threads';
import type { HealthConfig, HostPort } from '../config/schema.ts';
import type { Logger } from '../observability/log.ts';
import type { Probe, ProbeResult } from './probes/probe.ts';

/** Main → thread: run a probe, or abort one. Thread → main: ready once, then each probe's result. */
export type ToProbeThread =
  | { type: 'probe'; id: number; probe: HealthConfig['type']; target: HostPort; settings: HealthConfig }
  | { type: 'abort'; id: number };
export type FromProbeThread = { type: 'ready' } | { type: 'result'; id: number; result: ProbeResult };

/** Threads a backend may get to itself after it was in flight when a shared thread ended. */
const MAX_ISOLATED = 8;
/** Times in a row a backend's probe may be lost with others' before it counts as failed. */
const LOST_LIMIT = 3;
/** The key of probes that do not say whose they are (tests). */
const ANONYMOUS = '';

/**
 * Heap of the probe thread, in MB: a probe keeps at most 64 KiB of a reply, so a driver that
 * grows past this is broken or fed something hostile; the thread then ends and starts again.
 */
const PROBE_THREAD_HEAP_MB = 64;

/**
 * What the drivers print (mysql2 writes a line per out-of-order packet, pg a few warnings) reaches
 * the log at most this many lines a minute per thread, each cut to OUTPUT_LINE_MAX characters; the
 * rest are counted: a backend that sends garbage on purpose must not fill the operator's disk.
 */
const OUTPUT_LINES_PER_MINUTE = 20;
const OUTPUT_LINE_MAX = 200;

/**
 * A writer of a thread's output into `log`: each non-empty line a warning, at most
 * OUTPUT_LINES_PER_MINUTE a minute (cut to OUTPUT_LINE_MAX characters); the lines past that are
 * counted and the count logged when the next minute's first line arrives.
 */
export function boundedOutput(log: Logger, now: () => number = Date.now): (stream: 'stdout' | 'stderr', chunk: Buffer) => void {
  let windowStart = now();
  let logged = 0;
  let dropped = 0;
  return (stream, chunk) => {
    for (const line of chunk.toString('utf8').split('\n')) {
      if (line.trim() === '') continue;
      const t = now();
      if (t - windowStart >= 60_000) {
        if (dropped > 0) log.warn({ dropped }, `probe drivers printed ${dropped} more lines in the last minute (not logged)`);
        windowStart = t;
        logged = 0;
        dropped = 0;
      }
      if (logged < OUTPUT_LINES_PER_MINUTE) {
        logged++;
        log.warn({ stream, line: line.slice(0, OUTPUT_LINE_MAX) }, 'probe driver output');
      } else {
        dropped++;
      }
    }
  };
}

/** A probe sent to a thread and not yet answered. */
interface InFlight {
  key: string;
  done: (r: ProbeResult) => void;
}

/** One worker thread running probes, started on first use and after each end. */
class ProbeWorker {
  readonly #log: Logger;
  readonly #name: string;
  /** Told of the probes in flight when the thread ended (their `done` not yet called). */
  readonly #onEnd: (code: number, lost: InFlight[]) => void;
  #worker: Worker | null = null;
  #ready: Promise<void> | null = null;
  readonly #inFlight = new Map<number, InFlight>();
  #seq = 0;
  #closed = false;

  constructor(log: Logger, name: string, onEnd: (code: number, lost: InFlight[]) => void) {
    this.#log = log;
    this.#name = name;
    this.#onEnd = onEnd;
  }

  ready(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#ready ??= this.#start();
    return this.#ready;
  }

  get threadId(): number | null {
    return this.#worker?.threadId ?? null;
  }

  async run(type: HealthConfig['type'], target: HostPort, settings: HealthConfig, signal: AbortSignal, key: string): Promise<ProbeResult> {
    await this.ready();
    const worker = this.#worker;
    if (this.#closed) return { ok: false, reason: 'probe thread stopped', latency_ms: 0 };
    // fulcrum's own trouble (out of files or memory, most likely): not the backend's failure.
    if (worker === null) return { ok: false, reason: 'not probed: the probe thread did not start (see the log)', latency_ms: 0, skipped: 'probe thread did not start' };
    const id = ++this.#seq;
    return new Promise<ProbeResult>((resolve) => {
      const onAbort = (): void => worker.postMessage({ type: 'abort', id } satisfies ToProbeThread);
      this.#inFlight.set(id, {
        key,
        done: (r) => {
          signal.removeEventListener('abort', onAbort);
          resolve(r);
        },
      });
      signal.addEventListener('abort', onAbort, { once: true });
      worker.postMessage({ type: 'probe', id, probe: type, target, settings } satisfies ToProbeThread);
      if (signal.aborted) onAbort();
    });
  }

  end(): void {
    void this.#worker?.terminate();
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#worker?.terminate();
  }

  /** The thread's stdout and stderr into the log, bounded (OUTPUT_LINES_PER_MINUTE). */
  #logOutput(worker: Worker): void {
    const write = boundedOutput(this.#log);
    worker.stdout.on('data', (chunk: Buffer) => write('stdout', chunk));
    worker.stderr.on('data', (chunk: Buffer) => write('stderr', chunk));
  }

  #start(): Promise<void> {
    return new Promise<void>((resolve) => {
      let worker: Worker;
      try {
        worker = new Worker(new URL('./probe-worker.ts', import.meta.url), {
          name: this.#name,
          resourceLimits: { maxOldGenerationSizeMb: PROBE_THREAD_HEAP_MB, maxYoungGenerationSizeMb: 4 },
          stdout: true,
          stderr: true,
        });
      } catch (err) {
        // Out of files or memory, most likely: this probe is skipped (run()), the next one tries again.
        this.#log.error({ err: (err as Error).message }, `probe thread cannot start: ${(err as Error).message}`);
        this.#ready = null;
        return resolve();
      }
      worker.unref();
      this.#worker = worker;
      this.#logOutput(worker);
      worker.on('message', (m: FromProbeThread) => {
        if (m.type === 'ready') return resolve();
        const f = this.#inFlight.get(m.id);
        this.#inFlight.delete(m.id);
        f?.done(m.result);
      });
      worker.on('error', (err) => this.#log.error({ err: err.message }, `probe thread failed: ${err.message}`));
      worker.once('exit', (code) => {
        if (this.#worker === worker) {
          this.#worker = null;
          this.#ready = null;
        }
        const lost = [...this.#inFlight.values()];
        this.#inFlight.clear();
        if (!this.#closed) this.#log.warn({ code, thread: this.#name, probes_lost: lost.length }, 'probe thread ended; the next probe starts another');
        this.#onEnd(code, lost);
        resolve(); // a thread that ended before it was ready: its callers got their answer in onEnd
      });
    });
  }
}

export class ProbeThread {
  readonly #log: Logger;
  /** Every backend's probes run here until it is isolated. */
  readonly #shared: ProbeWorker;
  /** Backends moved to a thread of their own (key → thread); past MAX_ISOLATED they share #overflow. */
  readonly #isolated = new Map<string, ProbeWorker>();
  #overflow: ProbeWorker | null = null;
  /** Keys sent to the overflow thread (isolated, but past MAX_ISOLATED). */
  readonly #inOverflow = new Set<string>();
  /** Probes lost with others' in a row, per key (cleared by an answer). */
  readonly #lost = new Map<string, number>();
  #closed = false;

  constructor(logger: Logger) {
    this.#log = logger.child({ component: 'probe-thread' });
    this.#shared = this.#worker('fulcrum-probes');
  }

  /**
   * Resolves once the thread for `key` (the shared one without a key) has loaded the probes
   * (started on first use, and after each exit): the monitor waits for it before timing a probe.
   */
  ready(key = ANONYMOUS): Promise<void> {
    return this.#threadFor(key).ready();
  }

  /**
   * The Probe for `type`, run on a thread. `key` (the monitor passes service and backend) says
   * whose probe it is, for isolation; probes without one share the shared thread.
   */
  probe(type: HealthConfig['type']): Probe {
    return async (target, settings, signal, key = ANONYMOUS) => {
      const r = await this.#threadFor(key).run(type, target, settings, signal, key);
      if (r.skipped === undefined || !r.skipped.startsWith('probe thread ended')) this.#lost.delete(key);
      return r;
    };
  }

  /** The shared thread's id, or null between threads (status and tests). */
  get threadId(): number | null {
    return this.#shared.threadId;
  }

  /** Threads given to single backends so far (status and tests). */
  get isolated(): number {
    return this.#isolated.size + (this.#overflow !== null && this.#inOverflow.size > 0 ? 1 : 0);
  }

  /**
   * A probe got no answer past its timeout and margin: its thread is stuck; end it (the next
   * probe starts another). `key` names whose probe it was; without it the shared thread ends.
   */
  unresponsive(why: string, key?: string): void {
    const w = key === undefined ? this.#shared : this.#threadFor(key);
    if (w.threadId === null) return;
    this.#log.error({ why }, 'probe thread does not answer: ending it, the next probe starts another');
    w.end();
  }

  /** The backend `key` is no longer probed (removed by a reload): its own thread, if any, ends. */
  forget(key: string): void {
    this.#lost.delete(key);
    this.#inOverflow.delete(key);
    const own = this.#isolated.get(key);
    if (own === undefined) return;
    this.#isolated.delete(key);
    void own.close();
  }

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all([this.#shared, ...this.#isolated.values(), ...(this.#overflow ? [this.#overflow] : [])].map((w) => w.close()));
  }

  #worker(name: string): ProbeWorker {
    return new ProbeWorker(this.#log, name, (code, lost) => this.#onEnd(code, lost));
  }

  #threadFor(key: string): ProbeWorker {
    return this.#isolated.get(key) ?? (this.#inOverflow.has(key) ? this.#overflow! : this.#shared);
  }

  /** A thread ended with `lost` in flight: see the file's comment. */
  #onEnd(code: number, lost: InFlight[]): void {
    const ended = `probe thread ended (code ${code}) during the probe`;
    if (this.#closed || lost.length <= 1) {
      for (const f of lost) f.done({ ok: false, reason: this.#closed ? 'probe thread stopped' : ended, latency_ms: 0 });
      return;
    }
    for (const f of lost) {
      const n = (this.#lost.get(f.key) ?? 0) + 1;
      this.#lost.set(f.key, n);
      if (f.key !== ANONYMOUS) this.#isolate(f.key);
      if (n >= LOST_LIMIT) {
        this.#lost.delete(f.key);
        f.done({ ok: false, reason: `${ended}, ${n} times in a row with other probes in flight`, latency_ms: 0 });
      } else {
        f.done({ ok: false, reason: `not probed: ${ended} with ${lost.length - 1} other probes in flight; probed again next interval`, latency_ms: 0, skipped: ended });
      }
    }
  }

  #isolate(key: string): void {
    if (this.#isolated.has(key) || this.#inOverflow.has(key)) return;
    if (this.#isolated.size < MAX_ISOLATED) {
      const w = this.#worker('fulcrum-probes-isolated');
      this.#isolated.set(key, w);
      void w.ready(); // started now, so the backend's next probe does not wait for it
      this.#log.warn({ backend: key.replace('\u0000', ' ') }, 'probes of this backend move to a thread of their own: a probe thread ended while they were in flight');
      return;
    }
    if (this.#overflow === null) {
      this.#overflow = this.#worker('fulcrum-probes-isolated');
      void this.#overflow.ready();
    }
    this.#inOverflow.add(key);
  }
}
