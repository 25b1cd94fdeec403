/**
 * The probes run on a worker thread of their own, as keepalived runs its checkers in a process
 * apart from VRRP. The drivers (pg, mysql2, the RESP and HTTP readers) parse what backends send
 * on the thread they run on: here a driver that throws out of a socket callback ends this thread,
 * not the process, and one that loops or parses for long holds up the probes — not the heartbeats,
 * the admin API and the control plane on the main thread.
 *
 * The monitor asks through `probe(type)`: a Probe whose calls are messages to the thread. A thread
 * that exits answers its probes in flight with a failure and starts again for the next one; one
 * that does not answer a probe within its timeout plus a margin is ended (`unresponsive`) and
 * started again. Called by the monitor once per probe (every health.interval per backend).
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

export class ProbeThread {
  readonly #log: Logger;
  #worker: Worker | null = null;
  #ready: Promise<void> | null = null;
  readonly #inFlight = new Map<number, (r: ProbeResult) => void>();
  #seq = 0;
  #closed = false;

  constructor(logger: Logger) {
    this.#log = logger.child({ component: 'probe-thread' });
  }

  /** Resolves once the thread has loaded the probes (started on first use, and after each exit). */
  ready(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#ready ??= this.#start();
    return this.#ready;
  }

  /** The Probe for `type`, run on the thread. */
  probe(type: HealthConfig['type']): Probe {
    return async (target, settings, signal) => {
      await this.ready();
      const worker = this.#worker;
      if (worker === null || this.#closed) return { ok: false, reason: this.#closed ? 'probe thread stopped' : 'probe thread did not start (see the log)', latency_ms: 0 };
      const id = ++this.#seq;
      return new Promise<ProbeResult>((resolve) => {
        const onAbort = (): void => worker.postMessage({ type: 'abort', id } satisfies ToProbeThread);
        this.#inFlight.set(id, (r) => {
          signal.removeEventListener('abort', onAbort);
          resolve(r);
        });
        signal.addEventListener('abort', onAbort, { once: true });
        worker.postMessage({ type: 'probe', id, probe: type, target, settings } satisfies ToProbeThread);
        if (signal.aborted) onAbort();
      });
    };
  }

  /** The running thread's id, or null between threads (status and tests). */
  get threadId(): number | null {
    return this.#worker?.threadId ?? null;
  }

  /** A probe got no answer past its timeout and margin: the thread is stuck; end it (the next probe starts another). */
  unresponsive(why: string): void {
    const w = this.#worker;
    if (w === null) return;
    this.#log.error({ why }, 'probe thread does not answer: ending it, the next probe starts another');
    void w.terminate();
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
      const worker = new Worker(new URL('./probe-worker.ts', import.meta.url), {
        name: 'fulcrum-probes',
        resourceLimits: { maxOldGenerationSizeMb: PROBE_THREAD_HEAP_MB, maxYoungGenerationSizeMb: 4 },
        stdout: true,
        stderr: true,
      });
      worker.unref();
      this.#worker = worker;
      this.#logOutput(worker);
      worker.on('message', (m: FromProbeThread) => {
        if (m.type === 'ready') return resolve();
        const done = this.#inFlight.get(m.id);
        this.#inFlight.delete(m.id);
        done?.(m.result);
      });
      worker.on('error', (err) => this.#log.error({ err: err.message }, `probe thread failed: ${err.message}`));
      worker.once('exit', (code) => {
        if (this.#worker === worker) {
          this.#worker = null;
          this.#ready = null;
        }
        const lost = [...this.#inFlight.values()];
        this.#inFlight.clear();
        for (const done of lost) done({ ok: false, reason: `probe thread ended (code ${code}) during the probe`, latency_ms: 0 });
        if (!this.#closed) this.#log.warn({ code, probes_lost: lost.length }, 'probe thread ended; the next probe starts another');
        resolve(); // a thread that ended before it was ready: its callers get the failure above
      });
    });
  }
}
