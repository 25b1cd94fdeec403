/**
 * The failover on a thread of its own, as keepalived keeps VRRP in a process apart from its
 * checkers: the heartbeat, the state machine, its timers and the VIP commands (the Failover of
 * index.ts, run by thread-entry.ts) share fate with nothing a client can load. The main thread
 * serves the admin API, metrics, reloads and the control plane; a flood there, or a scrape of
 * thousands of backends, no longer delays an advert (test/failover/pressure.test.ts).
 *
 * FailoverThread is the main thread's handle, with the surface the rest of fulcrum uses (start,
 * stop, reconfigure, settings, status(), the 'role' event). What crosses, by message:
 *  - main → thread: the count of backends up (read here every advert interval from the balancer,
 *    sent when it changes: ha.track.min_backends_up compares with it over there), a reload's ha
 *    section, the log level, stop, and the answer to each accept/stop request; for `fulcrum
 *    upgrade`, abandon / resume (the old process) and the carried failover (the new one);
 *  - thread → main: its log lines (written to this logger's destination, timestamps from the
 *    thread), role changes, its status (on each role change and four times an advert interval),
 *    'waiting' for a carried failover and the answers to abandon / resume, and
 *    "start / stop accepting on the VIP", which this side runs (pool.resumeService / pauseService)
 *    and answers when done, since the state machine's actions wait for it.
 * status() stays synchronous: the last status the thread sent, with the peer's advert age brought
 * up to now and `accepting` as this side applied it.
 *
 * A thread that ends without being asked to (a bug), or that stops reporting (stuck in a loop: a
 * watchdog ends it): the VIP must not stay on this host without heartbeats. This side logs it,
 * reports the role change to init, stops accepting, removes the VIP with the same commands (`ip
 * addr del`), and starts a new thread after a backoff (as keepalived restarts its VRRP child);
 * the new one starts as backup like a fresh process. Not once the failover was abandoned to the
 * process an upgrade started (abandon): the VIP is that one's, and this thread's end releases nothing.
 */
import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import type { HaConfig } from '../config/schema.ts';
import { FulcrumError, type ErrorCode } from '../errors.ts';
import type { FailoverEvents, RoleChange } from '../events.ts';
import { writeLine, type Logger } from '../observability/log.ts';
import { Failover, type FailoverCarry, type FailoverOptions, type FailoverStatus } from './index.ts';

/** What the thread starts with (workerData). */
export interface FailoverThreadData {
  config: HaConfig;
  level: string;
  /** The main logger's bindings: the thread's lines carry the same fields. */
  bindings: Record<string, unknown>;
  commands?: FailoverOptions['commands'];
  /** Backends up now; null when nothing is tracked (no backendsUp given). */
  backendsUp: number | null;
  /** `fulcrum upgrade`: post 'waiting' and start only with the old process's failover ('carried'). */
  awaitCarried?: boolean;
}

export type ToFailoverThread =
  | { type: 'backends-up'; count: number }
  | { type: 'accepting-done'; id: number }
  | { type: 'reconfigure'; config: HaConfig }
  | { type: 'log-level'; level: string }
  | { type: 'carried'; ha: FailoverCarry }
  | { type: 'abandon' }
  | { type: 'resume' }
  | { type: 'stop' };

export type FromFailoverThread =
  | { type: 'log'; line: string; at: number }
  | { type: 'started' }
  | { type: 'waiting' }
  | { type: 'abandoned'; ha: FailoverCarry }
  | { type: 'abandon-failed'; message: string }
  | { type: 'resumed'; error: string | null }
  | { type: 'start-failed'; code: string | null; message: string }
  | { type: 'role'; change: RoleChange }
  | { type: 'accepting'; id: number; on: boolean }
  /** `at`: when it was taken, in ms since the epoch (performance.timeOrigin + performance.now()). */
  | { type: 'status'; status: FailoverStatus; at: number }
  | { type: 'stopped' };

export type FailoverThreadOptions = Pick<FailoverOptions, 'config' | 'logger' | 'backendsUp' | 'setAccepting' | 'commands'>;

export interface FailoverThreadStatus extends FailoverStatus {
  /** The failover thread: running, and how many times it was started again after ending unasked. */
  thread: { running: boolean; restarts: number };
}

/** Heap of the failover thread (MB): it holds a state machine, a socket and a few timers. */
const THREAD_HEAP_MB = 32;
/** A thread that ran this long before it ended starts again at once; one that ends sooner waits longer each time. */
const RESTART_STABLE_MS = 60_000;
const RESTART_BASE_MS = 100;
const RESTART_MAX_MS = 10_000;
/** How long stop() waits for the thread to resign (priority 0) and release the VIP before it ends it. */
const STOP_WAIT_MS = 5_000;
/**
 * A thread silent for this many advert intervals (it reports several times in each), and at least
 * WATCHDOG_MIN_MS, is stuck: it is ended and replaced. Generous: a busy machine delays a report,
 * and a peer that goes without our heartbeat for this long has taken the VIP anyway.
 */
const WATCHDOG_INTERVALS = 20;
const WATCHDOG_MIN_MS = 2_000;

const now = (): number => performance.timeOrigin + performance.now();

export class FailoverThread extends EventEmitter<FailoverEvents> {
  readonly #opts: FailoverThreadOptions;
  readonly #logger: Logger;
  readonly #log: Logger;
  /**
   * Never started: it keeps the settings in force (its reconfigure applies HA_RESTART_ONLY), gives
   * the status before the thread's first one, and runs `ip addr del` when a thread ends unasked.
   */
  readonly #local: Failover;
  #worker: Worker | null = null;
  #running = false;
  #last: FailoverStatus;
  #lastAt = now();
  #accepting = false;
  #acceptQueue: Promise<void> = Promise.resolve();
  #backendsUp: number | null = null;
  /** Every advert interval: backends up to the thread, and the watchdog. */
  #tickTimer: NodeJS.Timeout | null = null;
  /** When a message from the thread last arrived (this thread's performance.now()). */
  #heardAt = 0;
  #restarts = 0;
  /** Thread ends in a row that came sooner than RESTART_STABLE_MS after a start. */
  #crashes = 0;
  #startedAt = 0;
  #restartTimer: NodeJS.Timeout | null = null;
  #stopping: Promise<void> | null = null;
  #onStopped: (() => void) | null = null;
  /** Handed to the next process (`fulcrum upgrade`): the thread's end releases nothing, and nothing restarts it. */
  #abandoned = false;
  /** The answer awaited to 'abandon' or 'resume' (one at a time: the upgrade's). */
  #onReply: ((m: FromFailoverThread) => void) | null = null;
  readonly #onLevel = (level: string): void => this.#post({ type: 'log-level', level });

  constructor(opts: FailoverThreadOptions) {
    super();
    this.#opts = opts;
    this.#logger = opts.logger;
    this.#log = opts.logger.child({ component: 'failover' });
    this.#local = new Failover({ config: opts.config, logger: opts.logger, commands: opts.commands });
    this.#last = this.#local.status();
  }

  /**
   * Starts the thread; resolves once its failover runs (as backup or fault), rejects with its start error.
   * `carried` (`fulcrum upgrade`): called once the thread is loaded and waiting, it fetches the old
   * process's abandoned failover (FailoverCarry), which the thread continues (Failover.start): the
   * thread's start-up cost comes before the old one goes silent, not between its heartbeats and ours.
   */
  async start(carried?: () => Promise<FailoverCarry>): Promise<void> {
    this.#readBackendsUp();
    await this.#spawn(carried);
    this.#armTick();
    this.#logger.on('level-change', this.#onLevel);
  }

  /**
   * Leaves the pair cleanly: the thread's failover resigns (priority 0) and removes the VIP, then
   * the thread ends. A thread that does not finish within STOP_WAIT_MS is ended, and this side
   * stops accepting and removes the VIP itself.
   */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      if (this.#tickTimer) clearInterval(this.#tickTimer);
      if (this.#restartTimer) clearTimeout(this.#restartTimer);
      this.#logger.off('level-change', this.#onLevel);
      const worker = this.#worker;
      if (this.#abandoned) {
        // The new process holds the pair's role, the VIP and the listeners on it: only the thread ends.
        this.#running = false;
        await worker?.terminate();
        return;
      }
      const wasRunning = worker !== null && this.#running;
      let resigned = false;
      if (worker && wasRunning) {
        resigned = await new Promise<boolean>((resolve) => {
          const timer = setTimeout(() => resolve(false), STOP_WAIT_MS);
          this.#onStopped = () => {
            clearTimeout(timer);
            resolve(true);
          };
          worker.once('exit', () => resolve(false));
          worker.postMessage({ type: 'stop' } satisfies ToFailoverThread);
        });
      }
      this.#running = false;
      await worker?.terminate();
      if (!resigned) await this.#release(wasRunning ? 'the failover thread did not stop in time' : 'stopping between failover threads');
    })();
    return this.#stopping;
  }

  /**
   * `fulcrum upgrade`: the thread's failover goes silent without resigning (Failover.abandon) and
   * resolves with what the new process continues from. From here its end releases nothing.
   * Rejects if it is not running or does not answer within STOP_WAIT_MS; call resume() then too.
   */
  abandon(): Promise<FailoverCarry> {
    const worker = this.#worker;
    if (worker === null || !this.#running || this.#stopping !== null) return Promise.reject(new Error('the failover thread is not running'));
    this.#abandoned = true;
    return this.#ask(worker, { type: 'abandon' }, (m, resolve, reject) => {
      if (m.type === 'abandoned') resolve(m.ha);
      else if (m.type === 'abandon-failed') reject(new Error(m.message));
    });
  }

  /**
   * The upgrade failed after abandon() was asked: the failover goes on here in its role
   * (Failover.resume). A thread that ended meanwhile is replaced as after a crash.
   */
  async resume(): Promise<void> {
    if (!this.#abandoned || this.#stopping !== null) return;
    this.#abandoned = false;
    const worker = this.#worker;
    if (worker === null || !this.#running) {
      await this.#release('the failover thread ended while handed over');
      this.#restart();
      return;
    }
    await this.#ask<void>(worker, { type: 'resume' }, (m, resolve, reject) => {
      if (m.type === 'resumed') (m.error === null ? resolve() : reject(new Error(m.error)));
    });
  }

  /** Posts `m` and waits for the answer `pick` recognises (or the thread's end, or STOP_WAIT_MS). */
  #ask<T>(worker: Worker, m: ToFailoverThread, pick: (m: FromFailoverThread, resolve: (v: T) => void, reject: (e: Error) => void) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const done = (err: Error | null, value?: T): void => {
        clearTimeout(timer);
        worker.off('exit', onExit);
        this.#onReply = null;
        if (err) reject(err);
        else resolve(value as T);
      };
      const timer = setTimeout(() => done(new Error(`the failover thread did not answer '${m.type}' within ${STOP_WAIT_MS}ms`)), STOP_WAIT_MS);
      const onExit = (): void => done(new Error(`the failover thread ended before it answered '${m.type}'`));
      worker.once('exit', onExit);
      this.#onReply = (reply) => pick(reply, (v) => done(null, v), (e) => done(e));
      worker.postMessage(m);
    });
  }

  /** The ha settings in force (a reload changes some of them; see reconfigure). */
  get settings(): HaConfig {
    return this.#local.settings;
  }

  /** Applies a reloaded ha section (Failover.reconfigure says what changes in place), on the thread. */
  reconfigure(next: HaConfig): void {
    const interval = this.settings.advert_interval;
    this.#local.reconfigure(next);
    this.#post({ type: 'reconfigure', config: next });
    if (this.settings.advert_interval !== interval && this.#tickTimer) this.#armTick();
  }

  /** The thread's last status, its ages brought up to now; `accepting` as this side applied it. */
  status(): FailoverThreadStatus {
    const s = this.#last;
    const age = Math.max(0, Math.round(now() - this.#lastAt));
    return {
      ...s,
      accepting: this.#accepting,
      peer: { ...s.peer, last_advert_ms_ago: s.peer.last_advert_ms_ago === null ? null : s.peer.last_advert_ms_ago + age },
      thread: { running: this.#running, restarts: this.#restarts },
    };
  }

  /**
   * Ends the running thread as a crash would: the VIP is released and a new thread starts after
   * the backoff. The watchdog's remedy for a thread that stopped reporting; tests call it too.
   */
  endThread(why: string): void {
    const worker = this.#worker;
    if (worker === null || !this.#running || this.#stopping !== null) return;
    this.#log.error({ why }, `ending the failover thread: ${why}`);
    void worker.terminate();
  }

  // ── the thread ─────────────────────────────────────────────────────────────────────────────

  #post(m: ToFailoverThread): void {
    this.#worker?.postMessage(m);
  }

  /** Resolves once the thread's failover runs; rejects with its start error (the thread is ended). */
  #spawn(carried?: () => Promise<FailoverCarry>): Promise<void> {
    const data: FailoverThreadData = {
      awaitCarried: carried !== undefined,
      config: this.settings,
      level: this.#logger.level,
      bindings: this.#logger.bindings(),
      commands: this.#opts.commands,
      backendsUp: this.#backendsUp,
    };
    const worker = new Worker(new URL('./thread-entry.ts', import.meta.url), {
      name: 'fulcrum-failover',
      workerData: data,
      resourceLimits: { maxOldGenerationSizeMb: THREAD_HEAP_MB, maxYoungGenerationSizeMb: 4 },
    });
    this.#worker = worker;
    return new Promise<void>((resolve, reject) => {
      let started = false;
      worker.on('message', (m: FromFailoverThread) => {
        this.#heardAt = performance.now();
        switch (m.type) {
          case 'log':
            writeLine(this.#logger, m.line, m.at);
            return;
          case 'status':
            this.#last = m.status;
            this.#lastAt = m.at;
            return;
          case 'role':
            this.emit('role', m.change);
            return;
          case 'accepting':
            this.#applyAccepting(worker, m.id, m.on);
            return;
          case 'started':
            started = true;
            this.#running = true;
            this.#startedAt = performance.now();
            resolve();
            return;
          case 'start-failed':
            reject(m.code?.startsWith('FULCRUM_ERR_') ? new FulcrumError(m.code as ErrorCode, m.message) : new Error(m.message));
            void worker.terminate();
            return;
          case 'stopped':
            this.#onStopped?.();
            return;
          case 'waiting':
            carried!().then(
              (ha) => worker.postMessage({ type: 'carried', ha } satisfies ToFailoverThread),
              (err: Error) => {
                reject(err);
                void worker.terminate();
              },
            );
            return;
          case 'abandoned':
          case 'abandon-failed':
          case 'resumed':
            this.#onReply?.(m);
            return;
        }
      });
      worker.on('error', (err) => this.#log.error({ err: err.message, stack: err.stack }, `failover thread failed: ${err.message}`));
      worker.once('exit', (code) => {
        if (this.#worker === worker) this.#worker = null;
        if (!started) {
          reject(new Error(`the failover thread ended (code ${code}) before its failover started`));
          return;
        }
        this.#running = false;
        if (this.#stopping === null) void this.#ended(code);
      });
    });
  }

  /** The thread ended unasked: no VIP without heartbeats. Release, then start another after a backoff. */
  async #ended(code: number): Promise<void> {
    if (this.#stopping !== null) return; // stop() releases, and nothing starts again
    if (this.#abandoned) {
      // The new process holds the VIP now: nothing to release; resume() replaces the thread if the upgrade fails.
      this.#log.warn({ code }, 'the failover thread ended while handed over to the new process');
      return;
    }
    this.#crashes = performance.now() - this.#startedAt >= RESTART_STABLE_MS ? 1 : this.#crashes + 1;
    const delay = Math.min(RESTART_MAX_MS, RESTART_BASE_MS * 2 ** (this.#crashes - 1));
    const cause = `the failover thread ended (code ${code})`;
    this.#log.error({ code, restart_in_ms: delay, restarts: this.#restarts }, `${cause}: releasing the VIP; a new thread starts in ${delay}ms`);
    await this.#release(cause);
    this.#restartTimer = setTimeout(() => this.#restart(), delay);
  }

  #restart(): void {
    this.#restartTimer = null;
    if (this.#stopping !== null) return;
    this.#restarts++;
    this.#readBackendsUp();
    this.#spawn().then(
      () => this.#log.info({ restarts: this.#restarts }, 'failover thread started again'),
      (err: Error) => {
        this.#log.error({ err: err.message }, `the failover thread did not start again: ${err.message}`);
        this.#startedAt = performance.now(); // it ran for no time: the next wait is longer
        void this.#ended(1);
      },
    );
  }

  /**
   * Without a running thread: report the role change to init, stop accepting on the VIP and remove
   * it (kill -9 leaves it too; the next start removes it again).
   */
  async #release(cause: string): Promise<void> {
    const from = this.#last.role;
    this.#last = { ...this.#local.status(), transitions: this.#last.transitions, failovers: this.#last.failovers, last_transition: this.#last.last_transition };
    this.#lastAt = now();
    if (from !== 'init') {
      const change: RoleChange = { from, to: 'init', cause };
      this.#log.warn(change, `role ${from} → init: ${cause}`);
      this.emit('role', change);
    }
    // Both at once: a pause of the listeners that hangs must not keep the address here.
    const stopAccepting = this.#acceptQueue.then(() => (this.#accepting ? this.#runSetAccepting(false) : undefined));
    this.#acceptQueue = stopAccepting; // a new thread's requests come after it
    await Promise.all([stopAccepting, this.#local.vip.remove()]);
  }

  /** The thread asks to start or stop accepting: one request at a time, in order, each answered when done. */
  #applyAccepting(worker: Worker, id: number, on: boolean): void {
    this.#acceptQueue = this.#acceptQueue.then(async () => {
      await this.#runSetAccepting(on);
      worker.postMessage({ type: 'accepting-done', id } satisfies ToFailoverThread);
    });
  }

  async #runSetAccepting(on: boolean): Promise<void> {
    this.#accepting = on;
    try {
      await this.#opts.setAccepting?.(on);
    } catch (err) {
      this.#log.error({ err: (err as Error).message, accepting: on }, on ? 'could not start accepting on the VIP' : 'could not stop accepting on the VIP');
    }
  }

  // ── every advert interval: backends up, the watchdog ──────────────────────────────────────

  #armTick(): void {
    if (this.#tickTimer) clearInterval(this.#tickTimer);
    this.#tickTimer = setInterval(() => {
      this.#sendBackendsUp();
      this.#watch();
    }, this.settings.advert_interval);
    this.#tickTimer.unref();
  }

  /** The count the track compares (what the failover's own check read on this thread before), sent when it changes. */
  #sendBackendsUp(): void {
    const before = this.#backendsUp;
    this.#readBackendsUp();
    if (this.#backendsUp !== before && this.#backendsUp !== null) this.#post({ type: 'backends-up', count: this.#backendsUp });
  }

  /**
   * A thread silent past the limit is ended. Checked again after the messages already waiting
   * have been read (setImmediate runs after this turn's poll): a main thread that was itself
   * blocked finds the thread's reports queued, not missing.
   */
  #watch(): void {
    const limit = Math.max(WATCHDOG_MIN_MS, WATCHDOG_INTERVALS * this.settings.advert_interval);
    if (!this.#running || performance.now() - this.#heardAt < limit) return;
    setImmediate(() => {
      const silent = performance.now() - this.#heardAt;
      if (this.#running && silent >= limit) this.endThread(`no report from it for ${Math.round(silent)}ms`);
    });
  }

  #readBackendsUp(): void {
    this.#backendsUp = this.#opts.backendsUp ? this.#opts.backendsUp() : null;
  }
}
