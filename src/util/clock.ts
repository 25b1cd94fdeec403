/**
 * Time, as the control plane's timing logic sees it: the health monitor's probe schedule, the
 * balancer's slow-start ramp and drain reaper, the failover driver's advert, master-down and
 * peer timers. They take a Clock (the real one by default) so that their tests can drive time by
 * hand and check the timing exactly (test/helpers/clock.ts), instead of sleeping and hoping.
 *
 * `now()` is monotonic (performance.now(): libuv's clock, which a wall-clock step does not move);
 * it measures intervals and ages, never dates. Timers are the Node timers; `unref()` on a handle
 * keeps a timer from holding the process open, as with Node's own.
 *
 * Imported by every layer that schedules; it imports nothing, so it sits below them all.
 */

/** What a Clock's setTimeout / setInterval return: opaque but for unref. */
export interface ClockTimer {
  unref(): unknown;
}

export interface Clock {
  /** Monotonic milliseconds from an arbitrary origin. */
  now(): number;
  setTimeout(fn: () => void, ms: number): ClockTimer;
  clearTimeout(timer: ClockTimer | null | undefined): void;
  setInterval(fn: () => void, ms: number): ClockTimer;
  clearInterval(timer: ClockTimer | null | undefined): void;
}

/** The real clock: performance.now() and Node's timers. */
export const realClock: Clock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (timer) => clearTimeout(timer as NodeJS.Timeout | undefined),
  setInterval: (fn, ms) => setInterval(fn, ms),
  clearInterval: (timer) => clearInterval(timer as NodeJS.Timeout | undefined),
};
