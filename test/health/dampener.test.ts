import { describe, expect, it } from 'vitest';
import { Dampener } from '../../src/health/dampener.ts';

const feed = (d: Dampener, results: boolean[]) => results.map((ok) => d.onResult(ok));

describe('Dampener', () => {
  it('goes down after exactly `fall` consecutive failures', () => {
    const d = new Dampener('up', 2, 3);
    expect(feed(d, [false, false, false])).toEqual([null, null, 'down']);
    expect(d.state).toBe('down');
  });

  it('comes up after exactly `rise` consecutive successes', () => {
    const d = new Dampener('down', 2, 3);
    expect(feed(d, [true, true])).toEqual([null, 'up']);
    expect(d.state).toBe('up');
  });

  it('a result agreeing with the state resets the opposite streak', () => {
    const d = new Dampener('up', 2, 3);
    expect(feed(d, [false, false, true, false, false])).toEqual([null, null, null, null, null]);
    expect(d.state).toBe('up');
    expect(d.onResult(false)).toBe('down');
    expect(feed(d, [true, false, true])).toEqual([null, null, null]);
    expect(d.onResult(true)).toBe('up');
  });

  it('no transition for results that agree; rise/fall of 1 flips at once', () => {
    const d = new Dampener('up', 1, 1);
    expect(feed(d, [true, true])).toEqual([null, null]);
    expect(feed(d, [false, false, true, true])).toEqual(['down', null, 'up', null]);
  });

  it('reports how many disagreeing results remain', () => {
    const d = new Dampener('up', 2, 3);
    expect(d.remaining).toBe(3);
    d.onResult(false);
    expect(d.remaining).toBe(2);
  });

  it('force() sets the state, clears the streak, and reports only a change', () => {
    const d = new Dampener('up', 2, 3);
    d.onResult(false);
    d.onResult(false);
    expect(d.force('up')).toBeNull();
    expect(d.onResult(false)).toBeNull(); // the streak was cleared
    expect(d.force('down')).toBe('down');
    expect(d.onResult(true)).toBeNull();
    expect(d.onResult(true)).toBe('up');
  });

  it('rejects rise or fall below 1', () => {
    expect(() => new Dampener('up', 0, 1)).toThrow(/rise must be an integer ≥ 1, got 0/);
    expect(() => new Dampener('up', 1, -2)).toThrow(/fall must be an integer ≥ 1, got -2/);
  });
});
