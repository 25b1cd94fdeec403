/**
 * The main thread's side of the data plane: starts the worker threads, sends them the service
 * table and commands, gathers their answers, restarts a worker that crashes.
 *
 * Events: 'connect-failed' {service, backend, address, error} (passive health: one per failed
 * connect attempt in any worker), 'worker-exit' {workerId, code}.
 */
import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import { ListenError, FulcrumError } from '../errors.ts';
import type { Logger } from '../observability/log.ts';
import type { ListenProblem, MainToWorker, ServiceEntry, WorkerInit, WorkerToMain } from './messages.ts';
import { rawHandlesMissing } from './handles.ts';
import { loadRelay } from './relay.ts';

const WORKER_URL = new URL('./worker.ts', import.meta.url);
const RESTART_DELAY_MIN_MS = 100;
const RESTART_DELAY_MAX_MS = 5000;
/**
 * Young generation of each worker thread, in MB (V8 splits it into two semi-spaces and a
 * new-large-object space). Left alone, V8 grows it during a connection storm and keeps it: the
 * idle benchmark counted that as ≈ 2.5 KB per connection. Measured (bench/analysis.md): 3, 8 and
 * 16 MB cost 4.5, 4.5 and 4.9 KB per idle connection; the garbage collector's share of the churn
 * profile was 7.2, 4.3 and 3.6 % (1.5 % uncapped), so 8.
 */
const WORKER_YOUNG_GENERATION_MB = 8;

/** `reusePort` in net.Server#listen: Node 22.12+ / 23.1+, on Linux (the kernel's SO_REUSEPORT spreads accepts). */
export function reusePortSupport(): { ok: true } | { ok: false; why: string } {
  const [major, minor] = process.versions.node.split('.').map(Number);
  const nodeOk = major >= 24 || (major === 23 && minor >= 1) || (major === 22 && minor >= 12);
  if (!nodeOk) return { ok: false, why: `listen({ reusePort }) needs Node.js 22.12 or later; this is ${process.version}` };
  if (process.platform !== 'linux') return { ok: false, why: `listen({ reusePort }) spreads connections only on Linux; this is ${process.platform}` };
  return { ok: true };
}

export interface PoolOptions {
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  /** Worker threads wanted (resolveWorkers(config)); one if reusePort is missing. */
  workers: number;
  logging: { level: string; connections: boolean };
  logger: Logger;
  /**
   * Gives back the slots a dead worker still held (the engine's `reclaim`): called on every
   * worker exit, before a restarted worker reuses the id.
   */
  reclaim: (workerId: number) => number;
}

export class PoolError extends FulcrumError {
  constructor(message: string) {
    super('FULCRUM_ERR_WORKER', message);
  }
}

interface Slot {
  id: number;
  worker: Worker | null;
  /** Requests sent to this worker that it has not answered yet. */
  pending: Map<number, (reply: { errors: ListenProblem[]; killed?: number } | null) => void>;
  restartDelay: number;
  stoppedResolve: (() => void) | null;
}

export class WorkerPool extends EventEmitter {
  readonly size: number;
  private readonly opts: PoolOptions;
  private readonly log: Logger;
  private readonly slots: Slot[] = [];
  private services: ServiceEntry[] = [];
  private readonly paused = new Set<string>();
  private seq = 1;
  private stopping = false;
  private readonly reusePort: boolean;
  /** What makes the workers' system calls: the native relay, or Node's TCP handles (relay.ts says why). */
  readonly dataPath: 'relay' | 'javascript';

  constructor(opts: PoolOptions) {
    super();
    this.opts = opts;
    this.log = opts.logger.child({ component: 'pool' });
    // Said here, once and clearly, rather than by every worker as it starts.
    const missing = rawHandlesMissing();
    if (missing !== null) throw new PoolError(missing);
    const relay = loadRelay();
    this.dataPath = typeof relay === 'string' ? 'javascript' : 'relay';
    if (typeof relay === 'string') this.log.warn({ reason: relay }, `native relay not used (${relay}): the workers run the JavaScript data path`);
    const support = reusePortSupport();
    this.reusePort = support.ok;
    if (!support.ok && opts.workers > 1) {
      this.log.warn(`running 1 worker instead of ${opts.workers}: ${support.why}`);
      this.size = 1;
    } else {
      this.size = support.ok ? opts.workers : 1;
    }
  }

  /** Starts every worker with `services`; resolves once all listeners are bound, rejects with ListenError if one is not. */
  async start(services: ServiceEntry[], paused: string[] = []): Promise<void> {
    this.services = services;
    for (const p of paused) this.paused.add(p);
    const ready: Promise<{ errors: ListenProblem[] } | null>[] = [];
    for (let id = 0; id < this.size; id++) {
      const slot: Slot = { id, worker: null, pending: new Map(), restartDelay: RESTART_DELAY_MIN_MS, stoppedResolve: null };
      this.slots.push(slot);
      ready.push(new Promise((resolve) => slot.pending.set(0, resolve)));
      this.spawn(slot);
    }
    const replies = await Promise.all(ready);
    const problem = replies.find((r) => r === null || r.errors.length > 0);
    if (problem !== undefined) {
      await this.terminate();
      if (problem === null) throw new PoolError('a data-plane worker exited while starting (see the log above)');
      throw listenError(problem.errors[0]);
    }
    this.log.info({ workers: this.size, reusePort: this.reusePort, data_path: this.dataPath }, 'data plane ready');
  }

  private spawn(slot: Slot): void {
    const init: WorkerInit = {
      module: this.opts.module,
      memory: this.opts.memory,
      workerId: slot.id,
      services: this.services,
      paused: [...this.paused],
      logging: this.opts.logging,
      reusePort: this.reusePort,
      relay: this.dataPath === 'relay',
    };
    const worker = new Worker(WORKER_URL, {
      workerData: init,
      name: `fulcrum-proxy-${slot.id}`,
      resourceLimits: { maxYoungGenerationSizeMb: WORKER_YOUNG_GENERATION_MB },
    });
    slot.worker = worker;
    worker.on('message', (msg: WorkerToMain) => this.onMessage(slot, msg));
    worker.on('error', (err) => {
      this.log.error({ err, workerId: slot.id }, `data-plane worker ${slot.id} crashed: ${err.message}`);
    });
    worker.on('exit', (code) => this.onExit(slot, worker, code));
  }

  private onMessage(slot: Slot, msg: WorkerToMain): void {
    switch (msg.type) {
      case 'ack': {
        const done = slot.pending.get(msg.seq);
        slot.pending.delete(msg.seq);
        if (msg.seq === 0) slot.restartDelay = RESTART_DELAY_MIN_MS;
        done?.({ errors: msg.errors, killed: msg.killed });
        break;
      }
      case 'connect-failed':
        this.emit('connect-failed', { service: msg.service, backend: msg.backend, address: msg.address, error: msg.error });
        break;
      case 'stopped':
        slot.stoppedResolve?.();
        break;
    }
  }

  private onExit(slot: Slot, worker: Worker, code: number): void {
    if (slot.worker !== worker) return;
    slot.worker = null;
    for (const done of slot.pending.values()) done(null);
    slot.pending.clear();
    slot.stoppedResolve?.();
    // Its sockets died with it; the connection and queue slots it held in shared memory did not.
    const reclaimed = this.opts.reclaim(slot.id);
    this.emit('worker-exit', { workerId: slot.id, code, reclaimed });
    if (this.stopping) return;
    // A crash: its sessions are gone. Start a fresh worker with the current table.
    const delay = slot.restartDelay;
    slot.restartDelay = Math.min(RESTART_DELAY_MAX_MS, delay * 2);
    this.log.error({ workerId: slot.id, code, reclaimed }, `data-plane worker ${slot.id} exited with code ${code}; gave back ${reclaimed} slots it held; restarting it in ${delay}ms`);
    setTimeout(() => {
      if (this.stopping || slot.worker !== null) return;
      slot.pending.set(0, (reply) => {
        if (reply && reply.errors.length > 0) {
          this.log.error({ workerId: slot.id, errors: reply.errors }, `restarted worker ${slot.id} could not bind every listener`);
        }
      });
      this.spawn(slot);
    }, delay).unref();
  }

  /** Sends one request to every live worker and waits for all their answers. */
  private request(build: (seq: number) => MainToWorker): Promise<{ errors: ListenProblem[]; killed: number }> {
    const seq = this.seq++;
    const msg = build(seq);
    const waits: Promise<{ errors: ListenProblem[]; killed?: number } | null>[] = [];
    for (const slot of this.slots) {
      if (slot.worker === null) continue;
      waits.push(new Promise((resolve) => slot.pending.set(seq, resolve)));
      slot.worker.postMessage(msg);
    }
    return Promise.all(waits).then((replies) => {
      const errors: ListenProblem[] = [];
      let killed = 0;
      for (const r of replies) {
        if (r === null) continue;
        errors.push(...r.errors);
        killed += r.killed ?? 0;
      }
      return { errors, killed };
    });
  }

  /**
   * A new service table (reload, runtime add/remove of services or backends). Resolves with the
   * listeners that could not be bound (the rest of the table is in effect).
   */
  async updateServices(services: ServiceEntry[]): Promise<ListenProblem[]> {
    this.services = services;
    const { errors } = await this.request((seq) => ({ type: 'services', seq, services }));
    return dedupe(errors);
  }

  /** Log level and per-connection logging for every worker, now and for workers started later (restarts). */
  async setLogging(logging: { level: string; connections: boolean }): Promise<void> {
    this.opts.logging = { ...logging };
    await this.request((seq) => ({ type: 'logging', seq, level: logging.level, connections: logging.connections }));
  }

  /** Closes every open session to `backend` in all workers (reason backend_down); resolves with how many. */
  async killBackend(backend: number): Promise<number> {
    const { killed } = await this.request((seq) => ({ type: 'kill-backend', seq, backend }));
    return killed;
  }

  /** Stops accepting on one service (its listener is closed; open sessions continue). */
  async pauseService(service: string): Promise<void> {
    this.paused.add(service);
    await this.request((seq) => ({ type: 'pause', seq, service }));
  }

  /** Starts accepting again; rejects with ListenError if the address cannot be bound (e.g. the VIP is not here yet). */
  async resumeService(service: string): Promise<void> {
    this.paused.delete(service);
    const { errors } = await this.request((seq) => ({ type: 'resume', seq, service }));
    if (errors.length > 0) {
      this.paused.add(service);
      await this.request((seq) => ({ type: 'pause', seq, service }));
      throw listenError(errors[0]);
    }
  }

  isPaused(service: string): boolean {
    return this.paused.has(service);
  }

  /**
   * Graceful stop: listeners closed, queued connections closed, open sessions given `grace` ms
   * to finish, then closed (reason shutdown); resolves once every worker has exited.
   */
  async shutdown(grace: number): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    const seq = this.seq++;
    await Promise.all(this.slots.map((slot) => new Promise<void>((resolve) => {
      if (slot.worker === null) return resolve();
      slot.stoppedResolve = resolve;
      slot.worker.postMessage({ type: 'shutdown', seq, grace } satisfies MainToWorker);
    })));
    await this.terminate();
  }

  private async terminate(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.slots.map(async (slot) => {
      const w = slot.worker;
      if (w !== null) await w.terminate();
    }));
  }

  /** Thread ids of the live workers (for tests and the status page). */
  workerThreadIds(): number[] {
    return this.slots.flatMap((s) => (s.worker ? [s.worker.threadId] : []));
  }

  /** Test hook: ends one worker abruptly, as a crash would. */
  async crashWorker(id: number): Promise<void> {
    await this.slots[id]?.worker?.terminate();
  }
}

function listenError(p: ListenProblem): ListenError {
  return new ListenError(`service ${p.service}`, p.address, new Error(p.code ? `${p.code}: ${p.message}` : p.message));
}

/** Every worker reports the same bind failure; say it once. */
function dedupe(errors: ListenProblem[]): ListenProblem[] {
  const seen = new Set<string>();
  return errors.filter((e) => {
    const k = `${e.service}|${e.address}|${e.message}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}
