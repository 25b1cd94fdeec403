/**
 * The main thread's side of the data plane: starts the worker threads, sends them the service
 * table and commands, gathers their answers, restarts a worker that crashes, and on a reload that
 * changes `workers` starts more or retires some (resize).
 *
 * Events (src/events.ts PoolEvents): 'connect-failed' (passive health: one per failed connect
 * attempt in any worker), 'worker-exit' (a crash or a retirement).
 */
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import type { PoolEvents } from '../events.ts';
import { Worker } from 'node:worker_threads';
import { ListenError, FulcrumError } from '../errors.ts';
import { MAX_WORKERS } from '../shm/layout.ts';
import { closeForwarded, writeForwarded, type Logger } from '../observability/log.ts';
import type { HandedListener, ListenProblem, MainToWorker, ServiceEntry, WorkerInit, WorkerToMain } from './messages.ts';
import { rawHandlesMissing } from './handles.ts';
import { loadRelay } from './relay.ts';
import { DescriptorCells, descriptorMarks } from './descriptors.ts';
import { readOpenFilesLimit } from '../open-files.ts';

const WORKER_URL = new URL('./worker.ts', import.meta.url);
const RESTART_DELAY_MIN_MS = 100;
const RESTART_DELAY_MAX_MS = 5000;
/** Crashes of one worker are counted over this window: the restart delay doubles with each (README). */
const CRASH_WINDOW_MS = 60_000;
/**
 * A worker on the native relay that crashed this many times within CRASH_WINDOW_MS is restarted on
 * the JavaScript data path (for good, until fulcrum restarts): a relay fault that a traffic pattern
 * triggers would otherwise take the worker down again on every restart.
 */
export const CRASHES_BEFORE_JAVASCRIPT = 5;
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

/**
 * `net.ipv4.tcp_migrate_req` (Linux 5.14+): 1 lets the kernel move the connections queued on a
 * listening socket that closes to another listener of the same address instead of resetting them
 * (a reload removing an address, a retired worker, an upgrade to fewer workers; README, Upgrade).
 * Its value, or null where the kernel has no such setting.
 */
export function tcpMigrateReq(path = '/proc/sys/net/ipv4/tcp_migrate_req'): number | null {
  try {
    return Number(readFileSync(path, 'utf8').trim());
  } catch {
    return null;
  }
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
  /** Milliseconds, monotonic (tests inject one): the crash window's clock. */
  now?: () => number;
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
  pending: Map<number, (reply: { errors: ListenProblem[]; killed?: number; listeners?: HandedListener[] } | null) => void>;
  /** When it crashed within the last CRASH_WINDOW_MS (oldest first): the restart delay and the fallback count them. */
  crashes: number[];
  /** Its delay before the restart now pending, else 0. */
  restartDelay: number;
  /** Crashed CRASHES_BEFORE_JAVASCRIPT times a minute on the relay: runs the JavaScript data path. */
  javascript: boolean;
  stoppedResolve: (() => void) | null;
  /**
   * Taken out by a smaller `workers`: its listeners are closed and its sessions finish (up to the
   * grace it was given), then it exits for good. It gets no service tables; its id stays taken
   * until it has exited (the id names its scratch, tallies and counters in shared memory).
   */
  retiring: boolean;
  /** Resolves when the current thread has exited. */
  exited: Promise<void>;
}

export class WorkerPool extends EventEmitter<PoolEvents> {
  /** Workers wanted (the config's, or one without reusePort): restarts and resize keep this many serving. */
  private wanted: number;
  private readonly opts: PoolOptions;
  private readonly log: Logger;
  private readonly slots: Slot[] = [];
  private services: ServiceEntry[] = [];
  private readonly paused = new Set<string>();
  private quiesced: string[] = [];
  private seq = 1;
  private stopping = false;
  private readonly reusePort: boolean;
  /** What makes the workers' system calls: the native relay, or Node's TCP handles (relay.ts says why). */
  readonly dataPath: 'relay' | 'javascript';
  /** The descriptor reserve's shared cells (descriptors.ts): every worker counts into them. */
  private readonly descriptorCells = new DescriptorCells();

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
    this.reusePort = reusePortSupport().ok;
    this.wanted = this.fit(opts.workers);
    this.setDescriptorMarks();
    // Said once: fulcrum does not change a system-wide setting; the operator decides (README).
    if (this.reusePort && tcpMigrateReq() === 0) {
      this.log.warn('net.ipv4.tcp_migrate_req is 0: connections queued on a listener that closes (a reload removing an address, a retired worker, an upgrade to fewer workers) are reset rather than moved to another listener; sysctl -w net.ipv4.tcp_migrate_req=1 keeps them (README, Upgrade)');
    }
  }

  /**
   * The descriptor reserve's marks for the open-files limit in force (main.ts raised it first) and
   * the workers wanted; at start and per resize. Said in the log, with the reserve.
   */
  private setDescriptorMarks(): void {
    const limit = readOpenFilesLimit()?.soft ?? Infinity;
    const marks = descriptorMarks(limit, Math.max(this.wanted, 1), this.dataPath === 'relay');
    const before = this.descriptorCells.marks;
    this.descriptorCells.setMarks(marks);
    if (Number.isFinite(limit) && before.stop !== marks.stop) {
      this.log.info({ limit, reserve: marks.reserve, stop: marks.stop, resume: marks.resume },
        `descriptor reserve: the data path stops accepting at ${marks.stop} of ${limit} descriptors and starts again at ${marks.resume}`);
    }
  }

  /** The descriptor reserve: what the data path holds, whether it accepts, its pauses and marks (metrics, /api/status). */
  descriptors(): ReturnType<DescriptorCells['read']> {
    return this.descriptorCells.read();
  }

  /** The slot's crashes within the last CRASH_WINDOW_MS (older ones dropped). */
  private recentCrashes(slot: Slot): number[] {
    const since = this.now() - CRASH_WINDOW_MS;
    while (slot.crashes.length > 0 && slot.crashes[0] <= since) slot.crashes.shift();
    return slot.crashes;
  }

  private now(): number {
    return this.opts.now?.() ?? performance.now();
  }

  /** For /api/status: the data path, and per worker its own (a crash-looping relay worker runs JavaScript) and recent crashes. */
  status(): { data_path: 'relay' | 'javascript'; descriptors: ReturnType<DescriptorCells['read']>; workers: { id: number; data_path: 'relay' | 'javascript'; running: boolean; crashes_last_minute: number; restart_in_ms?: number }[] } {
    return {
      data_path: this.dataPath,
      descriptors: this.descriptors(),
      workers: this.slots.filter((s) => !s.retiring).sort((x, y) => x.id - y.id).map((s) => ({
        id: s.id,
        data_path: this.dataPath === 'relay' && !s.javascript ? 'relay' : 'javascript',
        running: s.worker !== null,
        crashes_last_minute: this.recentCrashes(s).length,
        ...(s.restartDelay > 0 ? { restart_in_ms: s.restartDelay } : {}),
      })),
    };
  }

  /** Workers serving (not retiring). */
  get size(): number {
    return this.slots.reduce((n, s) => n + (s.retiring ? 0 : 1), 0);
  }

  /** How many of `requested` workers can run here: one, said once in the log, without reusePort. */
  private fit(requested: number): number {
    const support = reusePortSupport();
    if (support.ok || requested <= 1) return requested;
    this.log.warn(`running 1 worker instead of ${requested}: ${support.why}`);
    return 1;
  }

  /**
   * Starts every worker with `services`; resolves once all listeners are bound, rejects with
   * ListenError if one is not. `inherited[id]`: the sockets worker `id` of the previous process
   * listened on (`fulcrum upgrade`); worker `id` here adopts them, and workers beyond the previous
   * count bind their own (SO_REUSEPORT puts them in the same group).
   */
  async start(services: ServiceEntry[], paused: string[] = [], inherited: HandedListener[][] = []): Promise<void> {
    this.services = services;
    for (const p of paused) this.paused.add(p);
    const ready: Promise<{ errors: ListenProblem[] } | null>[] = [];
    for (let id = 0; id < this.wanted; id++) ready.push(this.startSlot(id, inherited[id]));
    const replies = await Promise.all(ready);
    const problem = replies.find((r) => r === null || r.errors.length > 0);
    if (problem !== undefined) {
      await this.terminate();
      if (problem === null) throw new PoolError('a data-plane worker exited while starting (see the log above)');
      throw listenError(problem.errors[0]);
    }
    this.log.info({ workers: this.size, reusePort: this.reusePort, data_path: this.dataPath }, 'data plane ready');
  }

  /** A new worker under `id`; resolves with its first answer (its listeners bound), null if it died first. */
  private startSlot(id: number, inherited?: HandedListener[]): Promise<{ errors: ListenProblem[] } | null> {
    const slot: Slot = {
      id, worker: null, pending: new Map(), crashes: [], restartDelay: 0, javascript: false, stoppedResolve: null, retiring: false, exited: Promise.resolve(),
    };
    this.slots.push(slot);
    const ready = new Promise<{ errors: ListenProblem[] } | null>((resolve) => slot.pending.set(0, resolve));
    // Only this first thread adopts them: a restart after a crash binds afresh (the crash closed them).
    this.spawn(slot, inherited);
    return ready;
  }

  /**
   * The listening sockets of every serving worker, by worker id (fds in this process): what
   * `fulcrum upgrade` hands to the next process (src/control/upgrade.ts).
   */
  async listenerFds(): Promise<HandedListener[][]> {
    const out: HandedListener[][] = [];
    const seq = this.seq++;
    await Promise.all(this.slots.map((slot) => {
      if (slot.worker === null || slot.retiring) return undefined;
      const worker = slot.worker;
      return new Promise<void>((resolve) => {
        slot.pending.set(seq, (reply) => {
          out[slot.id] = (reply as { listeners?: HandedListener[] } | null)?.listeners ?? [];
          resolve();
        });
        worker.postMessage({ type: 'listeners', seq } satisfies MainToWorker);
      });
    }));
    return out;
  }

  /**
   * A reload's `workers`. More: new workers start with the current table and bind every listener
   * (SO_REUSEPORT). Fewer: the highest ids retire as HAProxy's old process does on a reload — no
   * more accepts, queued connections closed, open sessions given `grace` ms — then exit for good;
   * their counters stay summed. Resolves with the listeners a new worker could not bind.
   */
  async resize(requested: number, grace: number): Promise<ListenProblem[]> {
    if (this.stopping) return [];
    this.wanted = this.fit(requested);
    this.setDescriptorMarks();
    const serving = this.slots.filter((s) => !s.retiring).sort((x, y) => x.id - y.id);
    // Once the retiring workers say they accept no more, the reload is done: a connection made
    // after it does not land in a listener about to close (whose queue the kernel would reset).
    const stopped = serving.slice(this.wanted).map((slot) => this.retire(slot, grace));
    const problems = await this.fill();
    await Promise.all(stopped);
    return problems;
  }

  /**
   * Starts workers until `wanted` serve, under ids no live or retiring worker holds; a resize that
   * outruns retiring workers (16 → 8 → 16 while the 8 still drain) gets the rest as they exit.
   */
  private async fill(): Promise<ListenProblem[]> {
    const ready: Promise<{ errors: ListenProblem[] } | null>[] = [];
    const ids: number[] = [];
    for (let id = 0, n = this.size; id < MAX_WORKERS && n < this.wanted; id++) {
      if (this.slots.some((s) => s.id === id)) continue;
      ready.push(this.startSlot(id));
      ids.push(id);
      n++;
    }
    if (ready.length === 0) return [];
    const errors: ListenProblem[] = [];
    (await Promise.all(ready)).forEach((r, i) => {
      // Not a listener's problem but the setting's: named so, with the worker (restarted as a crash).
      if (r === null) errors.push({ service: 'workers', address: '-', code: 'FULCRUM_ERR_WORKER_START', message: `data-plane worker ${ids[i]} exited while starting; it is restarted (see the log)` });
      else errors.push(...r.errors);
    });
    this.log.info({ workers: this.size, started: ready.length }, `started ${ready.length} data-plane worker${ready.length === 1 ? '' : 's'}`);
    return dedupe(errors);
  }

  /** Resolves once the worker has closed its listeners and queue (or has exited). */
  private async retire(slot: Slot, grace: number): Promise<void> {
    slot.retiring = true;
    const worker = slot.worker;
    if (worker === null) {
      // Between a crash and its restart: nothing to drain; the restart timer sees `retiring`.
      this.slots.splice(this.slots.indexOf(slot), 1);
      return;
    }
    this.log.info({ workerId: slot.id, grace_ms: grace }, `retiring data-plane worker ${slot.id}: no new connections, open ones get the grace period`);
    slot.stoppedResolve = () => void worker.terminate();
    const seq = this.seq++;
    const closed = new Promise<unknown>((resolve) => slot.pending.set(seq, resolve));
    worker.postMessage({ type: 'shutdown', seq, grace } satisfies MainToWorker);
    await closed;
  }

  private spawn(slot: Slot, inherited?: HandedListener[]): void {
    const init: WorkerInit = {
      ...(inherited ? { inherited } : {}),
      module: this.opts.module,
      memory: this.opts.memory,
      workerId: slot.id,
      services: this.services,
      paused: [...this.paused],
      quiesced: this.quiesced,
      logging: this.opts.logging,
      reusePort: this.reusePort,
      relay: this.dataPath === 'relay' && !slot.javascript,
      descriptors: this.descriptorCells.buffer,
    };
    const worker = new Worker(WORKER_URL, {
      workerData: init,
      name: `fulcrum-proxy-${slot.id}`,
      resourceLimits: { maxYoungGenerationSizeMb: WORKER_YOUNG_GENERATION_MB },
    });
    slot.worker = worker;
    slot.exited = new Promise((resolve) => worker.once('exit', () => resolve()));
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
        done?.({ errors: msg.errors, killed: msg.killed, listeners: msg.listeners });
        break;
      }
      case 'connect-failed':
        this.emit('connect-failed', { service: msg.service, backend: msg.backend, address: msg.address, error: msg.error });
        break;
      case 'stopped':
        slot.stoppedResolve?.();
        break;
      case 'log':
        // Into the process's LogOutput, which writes every thread's lines in time order.
        writeForwarded(this.opts.logger, `worker ${slot.id}`, msg.log);
        break;
    }
  }

  private onExit(slot: Slot, worker: Worker, code: number): void {
    if (slot.worker !== worker) return;
    slot.worker = null;
    for (const done of slot.pending.values()) done(null);
    slot.pending.clear();
    slot.stoppedResolve?.();
    closeForwarded(this.opts.logger, `worker ${slot.id}`); // a batch it announced is not coming
    // Its sockets died with it; the connection and queue slots it held in shared memory did not.
    const reclaimed = this.opts.reclaim(slot.id);
    this.descriptorCells.forgetWorker(slot.id);
    this.emit('worker-exit', { workerId: slot.id, code, reclaimed, retired: slot.retiring });
    if (slot.retiring) {
      this.slots.splice(this.slots.indexOf(slot), 1);
      this.log.info({ workerId: slot.id, reclaimed }, `data-plane worker ${slot.id} retired`);
      // Its id is free: a resize that wanted more workers than free ids gets one now.
      if (!this.stopping) void this.fill().then((problems) => this.logProblems(problems));
      return;
    }
    if (this.stopping) return;
    // A crash: its sessions are gone. Start a fresh worker with the current table, later with
    // each crash of the last minute (a worker that starts and crashes at once, or at its first
    // connection, is not restarted every 100 ms for ever: 100 ms, 200, 400… up to 5 s).
    const crashes = this.recentCrashes(slot);
    crashes.push(this.now());
    const delay = Math.min(RESTART_DELAY_MAX_MS, RESTART_DELAY_MIN_MS * 2 ** (crashes.length - 1));
    slot.restartDelay = delay;
    this.log.error({ workerId: slot.id, code, reclaimed, crashes_last_minute: crashes.length },
      `data-plane worker ${slot.id} exited with code ${code}; gave back ${reclaimed} slots it held; restarting it in ${delay}ms`);
    if (this.dataPath === 'relay' && !slot.javascript && crashes.length >= CRASHES_BEFORE_JAVASCRIPT) {
      slot.javascript = true;
      this.log.error({ workerId: slot.id, crashes_last_minute: crashes.length, data_path: 'javascript' },
        `data-plane worker ${slot.id} crashed ${crashes.length} times within a minute on the native relay: it runs the JavaScript data path from now on (until fulcrum restarts); /api/status lists it`);
    }
    setTimeout(() => {
      slot.restartDelay = 0;
      if (this.stopping || slot.worker !== null || slot.retiring) return;
      slot.pending.set(0, (reply) => this.logProblems(reply?.errors ?? [], slot.id));
      this.spawn(slot);
    }, delay).unref();
  }

  private logProblems(problems: ListenProblem[], workerId?: number): void {
    if (problems.length === 0) return;
    this.log.error({ workerId, errors: problems }, `${workerId === undefined ? 'a new' : `restarted`} worker${workerId === undefined ? '' : ` ${workerId}`} could not bind every listener`);
  }

  /**
   * Sends one request to every live worker and waits for all their answers. Retiring workers
   * get only what concerns their open sessions (`retiring`: log settings, closing a backend's sessions).
   */
  private request(build: (seq: number) => MainToWorker, retiring = false): Promise<{ errors: ListenProblem[]; killed: number }> {
    const seq = this.seq++;
    const msg = build(seq);
    const waits: Promise<{ errors: ListenProblem[]; killed?: number } | null>[] = [];
    for (const slot of this.slots) {
      if (slot.worker === null || (slot.retiring && !retiring)) continue;
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
    await this.request((seq) => ({ type: 'logging', seq, level: logging.level, connections: logging.connections }), true);
  }

  /** Closes every open session to `backend` in all workers (reason backend_down); resolves with how many. */
  async killBackend(backend: number): Promise<number> {
    const { killed } = await this.request((seq) => ({ type: 'kill-backend', seq, backend }), true);
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

  /**
   * The services whose TCP listeners drop new SYNs (a BGP drain: src/bgp/index.ts), in every
   * worker now and in every worker started later (resize, restart) from its first bind; an empty
   * list takes the filter off. Resolves with the listeners that could not be changed (the relay
   * not built: the JavaScript path has no setsockopt of its own).
   */
  async quiesce(services: string[]): Promise<ListenProblem[]> {
    this.quiesced = [...services];
    const { errors } = await this.request((seq) => ({ type: 'quiesce', seq, services: this.quiesced }));
    return dedupe(errors);
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
      if (slot.retiring) {
        // Already draining, with the grace it was given: it gets this one at most.
        void slot.exited.then(resolve);
        setTimeout(resolve, grace).unref();
        return;
      }
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

  /** Thread ids of the running workers, retiring ones included (for tests and the status page). */
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
