/**
 * The descriptor reserve's marks and its gate (src/proxy/descriptors.ts), without sockets: two
 * workers' gates over one set of cells stop together at the mark with one log line and one pause
 * counted, start again at the lower mark, and a crashed worker's share is forgotten.
 * (test/proxy/reserve.test.ts runs it for real, under prlimit.)
 */
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { DescriptorCells, DescriptorGate, descriptorMarks, RESERVE_MIN } from '../../src/proxy/descriptors.ts';
import { createLogger } from '../../src/observability/log.ts';

function logged(): { lines: string[]; log: ReturnType<typeof createLogger> } {
  const lines: string[] = [];
  const sink = new Writable({ write(chunk, _enc, done) { lines.push(...String(chunk).split('\n').filter(Boolean)); done(); } });
  return { lines, log: createLogger('info', sink) };
}

describe('descriptor reserve', () => {
  it('marks: the reserve is max(64, 5 %), the relay keeps room for an accept batch per worker', () => {
    expect(descriptorMarks(1024, 1, false)).toEqual({ limit: 1024, reserve: RESERVE_MIN, stop: 960, resume: 928 });
    expect(descriptorMarks(1024, 2, true)).toEqual({ limit: 1024, reserve: 64, stop: 1024 - 64 - 256, resume: 1024 - 64 - 256 - 32 });
    expect(descriptorMarks(100_000, 1, false)).toEqual({ limit: 100_000, reserve: 5000, stop: 95_000, resume: 92_500 });
    expect(descriptorMarks(Infinity, 4, true).stop).toBe(0x7fffffff);
  });

  it('two workers stop at the mark (one log line, one pause), start again at the lower mark', async () => {
    const cells = new DescriptorCells();
    cells.setMarks({ limit: 200, reserve: 64, stop: 100, resume: 60 });
    const { lines, log } = logged();
    const switched: string[] = [];
    const a = new DescriptorGate(cells.buffer, 0, log);
    const b = new DescriptorGate(cells.buffer, 1, log);
    a.attach({ stopAccepting: () => switched.push('a stop'), startAccepting: () => switched.push('a start') });
    b.attach({ stopAccepting: () => switched.push('b stop'), startAccepting: () => switched.push('b start') });
    a.take(60);
    b.take(39);
    expect(switched).toEqual([]);
    b.take(1); // 100: the mark
    expect(switched).toEqual(['b stop']);
    a.take(1); // a accepted one more before it knew
    expect(switched).toEqual(['b stop', 'a stop']);
    expect(cells.read()).toMatchObject({ held: 101, accepting: false, pauses: 1 });
    a.give(20); // 81: above the resume mark
    expect(switched).toHaveLength(2);
    a.give(21); // 60
    expect(switched).toEqual(['b stop', 'a stop', 'a start']);
    expect(cells.read()).toMatchObject({ held: 60, accepting: true, pauses: 1 });
    // b sees it at its next look (its poll, or its own close).
    b.give(1);
    expect(switched).toEqual(['b stop', 'a stop', 'a start', 'b start']);
    await new Promise((r) => setTimeout(r, 10)); // pino writes asynchronously
    expect(lines.filter((l) => l.includes('stopped accepting'))).toHaveLength(1);
    expect(lines.filter((l) => l.includes('accepting again'))).toHaveLength(1);
  });

  it('a worker that exits leaves nothing counted; one that starts during a pause starts paused', () => {
    const cells = new DescriptorCells();
    cells.setMarks({ limit: 200, reserve: 64, stop: 100, resume: 60 });
    const { log } = logged();
    const a = new DescriptorGate(cells.buffer, 0, log);
    a.attach({ stopAccepting: () => undefined, startAccepting: () => undefined });
    a.take(100);
    expect(cells.read().accepting).toBe(false);
    const b = new DescriptorGate(cells.buffer, 3, log);
    let bStopped = false;
    b.attach({ stopAccepting: () => { bStopped = true; }, startAccepting: () => { bStopped = false; } });
    expect(bStopped).toBe(true);
    cells.forgetWorker(0);
    expect(cells.read().held).toBe(0);
  });
});
