/**
 * The descriptor reserve: the data path stops accepting before the open-files limit, not at it,
 * so probes, heartbeats and the admin API always find a descriptor (README "A connection's way").
 *
 * Every worker counts what its sessions hold — a client socket from accept to close, a backend
 * socket from its connect to its close — into one process-wide cell (a SharedArrayBuffer the pool
 * makes and hands to every worker). When the count reaches the stop mark every worker stops
 * accepting, leaving new connections in the kernel's listen backlog; they are accepted again once
 * the count is back at the resume mark (lower: hysteresis). The first worker to see each edge says
 * so in the log, once per episode, and counts the pause; `fulcrum_accepting` and
 * `fulcrum_accept_pauses_total` (prom.ts) read the same cells.
 *
 *   Int32Array cells (one SharedArrayBuffer):
 *   ┌────────┬───────────┬────────┬──────┬────────┬──────────────────────────────┐
 *   │ D_HELD │ D_ACCEPT  │ PAUSES │ STOP │ RESUME │ D_WORKER + id: held by worker │
 *   └────────┴───────────┴────────┴──────┴────────┴──────────────────────────────┘
 * A worker that exits leaves what it held counted: the pool subtracts its cell (`forgetWorker`).
 */
import type { Logger } from '../observability/log.ts';
import { MAX_WORKERS, RELAY_MAX_ACCEPT } from '../shm/layout.ts';

const D_HELD = 0;
const D_ACCEPTING = 1;
const D_PAUSES = 2;
const D_STOP = 3;
const D_RESUME = 4;
const D_WORKER = 8;
const CELLS = D_WORKER + MAX_WORKERS;

/** The reserve: at least this many descriptors… */
export const RESERVE_MIN = 64;
/** …or this share of the limit, whichever is more. */
export const RESERVE_SHARE = 0.05;
/** A paused worker looks at the shared count this often (another worker's closes may have made room). */
const POLL_MS = 100;

export interface DescriptorMarks {
  /** The open-files limit (soft) the marks come from; Infinity when unlimited or unknown. */
  limit: number;
  reserve: number;
  /** Accepting stops once the data path holds this many descriptors… */
  stop: number;
  /** …and starts again at this many. */
  resume: number;
}

/**
 * The marks for `limit` descriptors: the reserve (max(RESERVE_MIN, RESERVE_SHARE of the limit)) is
 * kept free, and on the relay also what the accepts in flight may still add — the relay accepts up
 * to RELAY_MAX_ACCEPT connections per wake in C before JavaScript counts them, each of which then
 * wants a backend socket — per worker. Node's listeners stop within the accept that crossed the mark.
 */
export function descriptorMarks(limit: number, workers: number, relay: boolean): DescriptorMarks {
  if (!Number.isFinite(limit)) return { limit: Infinity, reserve: 0, stop: 0x7fffffff, resume: 0x7fffffff };
  const reserve = Math.max(RESERVE_MIN, Math.ceil(limit * RESERVE_SHARE));
  const inFlight = relay ? 2 * RELAY_MAX_ACCEPT * workers : 0;
  const stop = Math.max(2, limit - reserve - inFlight);
  return { limit, reserve, stop, resume: Math.max(0, stop - Math.max(32, Math.floor(reserve / 2))) };
}

/** The pool's side: makes the cells, sets the marks, forgets a worker that exited, reads the figures. */
export class DescriptorCells {
  readonly buffer = new SharedArrayBuffer(CELLS * 4);
  private readonly cells = new Int32Array(this.buffer);
  marks: DescriptorMarks = descriptorMarks(Infinity, 1, false);

  constructor() {
    this.cells[D_ACCEPTING] = 1;
  }

  setMarks(marks: DescriptorMarks): void {
    this.marks = marks;
    Atomics.store(this.cells, D_STOP, marks.stop);
    Atomics.store(this.cells, D_RESUME, marks.resume);
  }

  /** A worker exited: its sockets are closed, so what it held no longer counts. */
  forgetWorker(id: number): void {
    const held = Atomics.exchange(this.cells, D_WORKER + id, 0);
    Atomics.sub(this.cells, D_HELD, held);
  }

  /** For the metrics and /api/status. */
  read(): { held: number; accepting: boolean; pauses: number } & DescriptorMarks {
    return {
      held: Atomics.load(this.cells, D_HELD),
      accepting: Atomics.load(this.cells, D_ACCEPTING) === 1,
      pauses: Atomics.load(this.cells, D_PAUSES),
      ...this.marks,
    };
  }
}

/** What a worker does at the marks: stop or start accepting on every listener it has. */
export interface AcceptSwitch {
  stopAccepting(): void;
  startAccepting(): void;
}

/** A worker's side: the session core counts through it (`take`, `give`); it switches the worker's listeners. */
export class DescriptorGate {
  private readonly cells: Int32Array;
  private readonly own: number;
  private readonly log: Logger;
  private sw: AcceptSwitch | null = null;
  /** This worker's listeners are stopped. */
  private stopped = false;
  private poll: ReturnType<typeof setInterval> | null = null;
  private readonly onPoll = (): void => this.check(Atomics.load(this.cells, D_HELD));

  constructor(buffer: SharedArrayBuffer, workerId: number, log: Logger) {
    this.cells = new Int32Array(buffer);
    this.own = D_WORKER + workerId;
    this.log = log;
  }

  /** The worker's listeners (set once they exist); a worker that starts during a pause starts paused. */
  attach(sw: AcceptSwitch): void {
    this.sw = sw;
    if (Atomics.load(this.cells, D_ACCEPTING) === 0) this.stop(Atomics.load(this.cells, D_HELD));
  }

  /** Whether this worker's listeners are stopped (a listener bound meanwhile stays closed: worker.ts). */
  get paused(): boolean {
    return this.stopped;
  }

  /**
   * HOT: `n` descriptors opened (a client accepted: 1; a backend connect started: 1). D_HELD has
   * every worker as a writer (an atomic add); the worker's own cell has only this one, and the pool
   * reads it after the worker exited (forgetWorker), so a plain store does: one atomic operation
   * per call instead of two (Builtins_AtomicsAdd was 0.23 % of a churn profile: bench/analysis.md).
   */
  take(n: number): void {
    const held = Atomics.add(this.cells, D_HELD, n) + n;
    this.cells[this.own] += n;
    if (!this.stopped && held >= this.cells[D_STOP]) this.stop(held);
  }

  /** HOT: `n` descriptors closed (per session's end, and per backend socket given up). */
  give(n: number): void {
    const held = Atomics.sub(this.cells, D_HELD, n) - n;
    this.cells[this.own] -= n; // this worker's own cell: see take
    if (this.stopped && held <= this.cells[D_RESUME]) this.check(held);
  }

  private stop(held: number): void {
    this.stopped = true;
    // The first worker to reach the mark speaks for all of them, once per episode.
    if (Atomics.compareExchange(this.cells, D_ACCEPTING, 1, 0) === 1) {
      Atomics.add(this.cells, D_PAUSES, 1);
      this.log.warn({ held, stop: this.cells[D_STOP], resume: this.cells[D_RESUME] },
        `data path holds ${held} descriptors, at the reserve's mark: stopped accepting (new connections wait in the listen backlog) until it is back at ${this.cells[D_RESUME]}; the reserve keeps descriptors for health probes, heartbeats and the admin API`);
    }
    this.sw?.stopAccepting();
    if (this.poll === null) {
      this.poll = setInterval(this.onPoll, POLL_MS);
      this.poll.unref();
    }
  }

  /** Paused: start again when the count is at the resume mark, or another worker already did. */
  private check(held: number): void {
    if (!this.stopped) return;
    const open = Atomics.load(this.cells, D_ACCEPTING) === 1;
    if (!open && held > this.cells[D_RESUME]) return;
    if (!open && Atomics.compareExchange(this.cells, D_ACCEPTING, 0, 1) === 0) {
      this.log.info({ held, resume: this.cells[D_RESUME] }, `data path holds ${held} descriptors: accepting again`);
    }
    this.stopped = false;
    if (this.poll !== null) clearInterval(this.poll);
    this.poll = null;
    this.sw?.startAccepting();
  }
}
