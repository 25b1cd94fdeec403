/**
 * Rise/fall hysteresis as a small pure stage (the idea of glb-director's HealthResultDampener):
 * probe results go in, a transition comes out only when enough consecutive results agree.
 *
 * - up → down after `fall` consecutive failures;
 * - down → up after `rise` consecutive successes;
 * - a result that agrees with the current state resets the opposite streak, so one flap
 *   never accumulates across good results.
 *
 * No clocks, no I/O: the monitor owns time; this owns counting.
 */
export type HealthState = 'up' | 'down';

export class Dampener {
  readonly rise: number;
  readonly fall: number;
  #state: HealthState;
  /** Consecutive results that disagree with #state. */
  #streak = 0;

  constructor(initial: HealthState, rise: number, fall: number) {
    if (!Number.isInteger(rise) || rise < 1) throw new RangeError(`rise must be an integer ≥ 1, got ${rise}`);
    if (!Number.isInteger(fall) || fall < 1) throw new RangeError(`fall must be an integer ≥ 1, got ${fall}`);
    this.rise = rise;
    this.fall = fall;
    this.#state = initial;
  }

  get state(): HealthState {
    return this.#state;
  }

  /** How many more disagreeing results are needed before the state flips. */
  get remaining(): number {
    return (this.#state === 'up' ? this.fall : this.rise) - this.#streak;
  }

  /** Feeds one probe result; returns the new state on a transition, null otherwise. */
  onResult(ok: boolean): HealthState | null {
    const agrees = ok === (this.#state === 'up');
    if (agrees) {
      this.#streak = 0;
      return null;
    }
    this.#streak++;
    if (this.#streak < (this.#state === 'up' ? this.fall : this.rise)) return null;
    this.#state = ok ? 'up' : 'down';
    this.#streak = 0;
    return this.#state;
  }

  /** Sets the state directly (passive health, admin action, first probe); clears the streak. */
  force(state: HealthState): HealthState | null {
    this.#streak = 0;
    if (state === this.#state) return null;
    this.#state = state;
    return state;
  }
}
