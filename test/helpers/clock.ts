/**
 * A clock the test drives by hand (src/util/clock.ts's Clock): time stands still until
 * `advance(ms)` moves it, firing each timer that falls due in order, at its own time, and letting
 * the promise chains it starts run before the next one fires. Timing logic on this clock is
 * checked to the millisecond: "down after exactly fall intervals", "not one step before its time".
 *
 * Only the code under test uses it; sockets, processes and the test's own waits keep real time.
 */
import type { Clock, ClockTimer } from '../../src/util/clock.ts';

interface Scheduled {
  at: number;
  /** Order of scheduling: timers due at the same time fire in it, as Node's do. */
  seq: number;
  fn: () => void;
  /** Set for an interval: its period. */
  every?: number;
}

class Handle implements ClockTimer {
  readonly id: number;
  constructor(id: number) {
    this.id = id;
  }
  unref(): this {
    return this;
  }
}

/** Lets microtasks and one turn of the event loop (I/O callbacks included) run. */
const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

export class TestClock implements Clock {
  #now = 0;
  #ids = 0;
  #seq = 0;
  readonly #timers = new Map<number, Scheduled>();

  now(): number {
    return this.#now;
  }

  setTimeout(fn: () => void, ms: number): ClockTimer {
    return this.#add(fn, ms);
  }

  setInterval(fn: () => void, ms: number): ClockTimer {
    // Node runs an interval of 0 (or less) every 1 ms; so does this clock.
    return this.#add(fn, ms, Number.isFinite(ms) && ms >= 1 ? Math.trunc(ms) : 1);
  }

  clearTimeout(timer: ClockTimer | null | undefined): void {
    if (timer instanceof Handle) this.#timers.delete(timer.id);
  }

  clearInterval(timer: ClockTimer | null | undefined): void {
    this.clearTimeout(timer);
  }

  /** Timers scheduled and not yet fired or cleared (intervals count while they run). */
  get pending(): number {
    return this.#timers.size;
  }

  /**
   * Moves time forward by `ms`, firing every timer due by then in time order (an interval as
   * many times as it falls due), each with now() at its own due time; promise chains and I/O
   * callbacks that are ready run between two timers and before this resolves.
   */
  async advance(ms: number): Promise<void> {
    if (!(ms >= 0)) throw new RangeError(`advance: ms must be ≥ 0, got ${ms}`);
    const target = this.#now + ms;
    for (;;) {
      await settle();
      const next = this.#next(target);
      if (!next) break;
      const [id, t] = next;
      this.#now = t.at;
      if (t.every === undefined) this.#timers.delete(id);
      else {
        t.at += t.every;
        t.seq = ++this.#seq;
      }
      t.fn();
    }
    this.#now = target;
    await settle();
  }

  #add(fn: () => void, ms: number, every?: number): ClockTimer {
    // As Node: a delay below 1 ms (or not a number) is 1 ms, and a fraction of a millisecond is cut off.
    const delay = Number.isFinite(ms) && ms >= 1 ? Math.trunc(ms) : 1;
    const id = ++this.#ids;
    this.#timers.set(id, { at: this.#now + delay, seq: ++this.#seq, fn, every });
    return new Handle(id);
  }

  #next(target: number): [number, Scheduled] | null {
    let best: [number, Scheduled] | null = null;
    for (const entry of this.#timers) {
      const t = entry[1];
      if (t.at > target) continue;
      if (!best || t.at < best[1].at || (t.at === best[1].at && t.seq < best[1].seq)) best = entry;
    }
    return best;
  }
}
