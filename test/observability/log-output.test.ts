/**
 * The pieces of src/observability/log.ts on their own: the text format of a pino line, LogOutput's
 * time order (with an injected clock), and LineForwarder's batches with the time of each line.
 * The same pieces in a running fulcrum: log-order.test.ts.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  batchLines, createLogger, FdOutput, formatText, LineForwarder, LOG_BATCH_MS, LOG_MAX_HOLD_MS, LOG_SETTLE_MS, LogOutput, setLogFormat, toBatch, writeLine,
  type ForwardedBatch, type ForwardedLines,
} from '../../src/observability/log.ts';
import { waitFor } from '../helpers/net.ts';

const savedTz = process.env.TZ;
afterEach(() => {
  if (savedTz === undefined) delete process.env.TZ;
  else process.env.TZ = savedTz;
});

/** A destination that keeps what it is given. */
function sink(): { chunks: string[]; write(s: string): void } {
  const chunks: string[] = [];
  return { chunks, write: (s: string) => void chunks.push(s) };
}

const line = (time: string, msg: string, extra = ''): string => `{"level":30,"time":"${time}","app":"fulcrum","component":"t"${extra},"msg":"${msg}"}\n`;

describe('formatText', () => {
  it('writes local time, the level name, the message, then key=value fields in pino\'s order', () => {
    process.env.TZ = 'Asia/Kolkata'; // UTC+5:30 all year: the line shows the machine's time, not UTC
    const json = JSON.stringify({
      level: 40, time: '2026-12-06T09:05:42.007Z', app: 'fulcrum', component: 'proxy', worker: 2,
      client: '10.0.0.1:5000', backend: null, ok: true, note: 'two words', empty: '', eq: 'a=b', list: ['x', 'y'], msg: 'connection',
    }) + '\n';
    expect(formatText(json)).toBe(
      '2026-12-06 14:35:42.007 WARN  connection component=proxy worker=2 client=10.0.0.1:5000 backend=null ok=true ' +
      'note="two words" empty="" eq="a=b" list=["x","y"]\n');
  });

  it('names every pino level and puts an error\'s stack on indented lines', () => {
    process.env.TZ = 'UTC';
    const names = [[10, 'TRACE'], [20, 'DEBUG'], [30, 'INFO '], [40, 'WARN '], [50, 'ERROR'], [60, 'FATAL']] as const;
    for (const [level, name] of names) {
      expect(formatText(`{"level":${level},"time":"2026-01-02T03:04:05.678Z","msg":"m"}\n`)).toBe(`2026-01-02 03:04:05.678 ${name} m\n`);
    }
    const err = { type: 'Error', message: 'boom here', code: 'EX', stack: 'Error: boom here\n    at f (a.ts:1:1)\n    at g (b.ts:2:2)' };
    expect(formatText(JSON.stringify({ level: 50, time: '2026-01-02T03:04:05.678Z', err, msg: 'failed' }) + '\n')).toBe(
      '2026-01-02 03:04:05.678 ERROR failed err="boom here" err.code=EX\n    Error: boom here\n    at f (a.ts:1:1)\n    at g (b.ts:2:2)\n');
  });

  it('leaves a line that is not a JSON object as it is', () => {
    expect(formatText('plain words\n')).toBe('plain words\n');
    expect(formatText('42\n')).toBe('42\n');
  });
});

describe('LogOutput', () => {
  const t = (ms: number): string => new Date(ms).toISOString();
  const msgs = (out: { chunks: string[] }): string[] => out.chunks.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l).msg);

  it('writes lines LOG_SETTLE_MS old in the order they were logged, waiting for a batch a worker announced', () => {
    const out = sink();
    const T = 1_000_000;
    let now = T;
    const o = new LogOutput(out, { now: () => now, timer: false });
    o.writeAt(line(t(T - 30), 'main 1'), T - 30);
    o.open('worker 1', T - 25); // worker 1 logged a line at T − 25 and will send it with its batch
    o.writeAt(line(t(T - 10), 'main 2'), T - 10);
    o.writeAt(line(t(T - 5), 'failover'), T - 5);
    o.drain();
    expect(msgs(out)).toEqual(['main 1']); // older than the announced batch; the rest waits for it
    now = T + 90;
    o.drain();
    expect(msgs(out)).toEqual(['main 1']);
    o.batch('worker 1', toBatch([line(t(T - 25), 'w1 a'), line(t(T - 5), 'w1 b')], [T - 25, T - 5]));
    o.writeAt(line(t(now), 'main 3'), now); // not LOG_SETTLE_MS old yet
    o.drain();
    // Same millisecond (failover, w1 b): the order they arrived in.
    expect(msgs(out)).toEqual(['main 1', 'w1 a', 'main 2', 'failover', 'w1 b']);
    now += LOG_SETTLE_MS;
    o.drain();
    expect(msgs(out)).toEqual(['main 1', 'w1 a', 'main 2', 'failover', 'w1 b', 'main 3']);
  });

  it('waits LOG_MAX_HOLD_MS at most for an announced batch, and not at all once its thread ended', () => {
    const out = sink();
    const T = 2_000_000;
    let now = T;
    const o = new LogOutput(out, { now: () => now, timer: false });
    o.open('worker 2', T);
    o.writeAt(line(t(T + 1), 'main'), T + 1);
    now = T + LOG_MAX_HOLD_MS - 1;
    o.drain();
    expect(msgs(out)).toEqual([]);
    now = T + LOG_MAX_HOLD_MS;
    o.drain();
    expect(msgs(out)).toEqual(['main']); // a stalled worker holds the log a second at most
    // Its batch, when it comes, is written then (late, after the lines written meanwhile).
    o.batch('worker 2', toBatch([line(t(T), 'stalled')], [T]));
    o.drain();
    expect(msgs(out)).toEqual(['main', 'stalled']);
    // A worker that exits with a batch announced: the output stops waiting for it.
    o.open('worker 3', now);
    o.writeAt(line(t(now + 1), 'after'), now + 1);
    now += 100;
    o.drain();
    expect(msgs(out)).toEqual(['main', 'stalled']);
    o.close('worker 3');
    o.drain();
    expect(msgs(out)).toEqual(['main', 'stalled', 'after']);
  });

  it('writes everything at once on flush, and in the format set now', async () => {
    const out = sink();
    const o = new LogOutput(out, { now: () => 0, timer: false });
    o.writeAt(line('2026-01-02T03:04:05.002Z', 'second'), Date.parse('2026-01-02T03:04:05.002Z'));
    o.writeAt(line('2026-01-02T03:04:05.001Z', 'first'), Date.parse('2026-01-02T03:04:05.001Z'));
    process.env.TZ = 'UTC';
    o.format = 'text';
    await new Promise<void>((resolve) => o.flush(() => resolve()));
    expect(out.chunks).toEqual(['2026-01-02 03:04:05.001 INFO  first component=t\n2026-01-02 03:04:05.002 INFO  second component=t\n']);
  });

  it('is a logger\'s destination: its own lines carry the time pino stamped; setLogFormat switches the form', async () => {
    const out = sink();
    const o = new LogOutput(out);
    const logger = createLogger('info', o);
    logger.info({ n: 1 }, 'one');
    writeLine(logger, line('2000-01-01T00:00:00.000Z', 'from another thread'), Date.parse('2000-01-01T00:00:00.000Z'));
    setLogFormat(logger, 'text');
    logger.info({ n: 2 }, 'two');
    // The real timer writes them once LOG_SETTLE_MS old: the old line first, then the two in order.
    await waitFor(() => out.chunks.join('').split('\n').filter(Boolean).length === 3, 2000, 'the held lines');
    const written = out.chunks.join('').split('\n').filter(Boolean);
    expect(written[0]).toMatch(/ INFO  from another thread component=t$/);
    expect(written[1]).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO  one n=1$/);
    expect(written[2]).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO  two n=2$/);
  });
});

describe('LogOutput merging batches', () => {
  /** What LogOutput did before batches: every line on its own, a stable sort by time, the due ones written. */
  class Reference {
    pending: { at: number; line: string }[] = [];
    readonly open = new Map<string, number>();
    take(now: number): string {
      this.pending.sort((a, b) => a.at - b.at);
      let until = now - LOG_SETTLE_MS;
      for (const openedAt of this.open.values()) if (now - openedAt < LOG_MAX_HOLD_MS) until = Math.min(until, openedAt - 1);
      let due = 0;
      while (due < this.pending.length && this.pending[due].at <= until) due++;
      const chunk = this.pending.slice(0, due).map((p) => p.line).join('');
      this.pending = this.pending.slice(due);
      return chunk;
    }
  }

  it('writes what a stable sort of every line by time writes, batches overlapping or not, clocks stepping back', () => {
    let seed = 42;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    for (let round = 0; round < 200; round++) {
      const T = 5_000_000;
      let now = T;
      let clock = T; // the time now; a thread's line is logged a little before (and reaches the output late)
      const clocks = [T, T, T, T]; // main, failover, worker 1, worker 2: the time of each thread's last line
      const out = sink();
      const o = new LogOutput(out, { now: () => now, timer: false });
      const ref = new Reference();
      const got: string[] = [];
      const want: string[] = [];
      let n = 0;
      // A line names its thread and number, and has a non-ASCII character now and then (UTF-16 offsets).
      const make = (thread: number, at: number): string => `{"t":${thread},"n":${n++},"at":${at}${rnd(5) === 0 ? ',"s":"é→"' : ''}}\n`;
      const tick = (thread: number): number => {
        clock += rnd(3);
        // A thread's lines are in time order, many in the same millisecond as another thread's;
        // now and then its clock steps back.
        clocks[thread] = rnd(40) === 0 ? clocks[thread] - 20 : Math.max(clocks[thread], clock - rnd(6));
        return clocks[thread];
      };
      for (let step = 0; step < 60; step++) {
        const what = rnd(6);
        if (what <= 1) {
          const thread = rnd(2);
          const at = tick(thread);
          const line = make(thread, at);
          o.writeAt(line, at);
          ref.pending.push({ at, line });
        } else if (what <= 3) {
          const w = 2 + rnd(2);
          const source = `worker ${w}`;
          const lines: string[] = [];
          const at: number[] = [];
          for (let i = 1 + rnd(30); i > 0; i--) {
            at.push(tick(w));
            lines.push(make(w, at[at.length - 1]));
          }
          if (rnd(2) === 0) {
            o.open(source, at[0]);
            if (!ref.open.has(source)) ref.open.set(source, at[0]);
          }
          o.batch(source, toBatch(lines, at));
          ref.open.delete(source);
          for (let i = 0; i < lines.length; i++) ref.pending.push({ at: at[i], line: lines[i] });
        } else if (what === 4) {
          const source = `worker ${2 + rnd(2)}`;
          const at = clock - rnd(5);
          o.open(source, at);
          if (!ref.open.has(source)) ref.open.set(source, at);
        } else {
          now = clock + rnd(40);
          got.push(o.take(now));
          want.push(ref.take(now));
        }
      }
      got.push(o.take(Infinity));
      want.push(ref.take(Infinity));
      expect(got).toEqual(want);
      expect(got.join('').split('\n').length - 1).toBe(n); // every line written, once
    }
  });

  it('hands a batch\'s lines back as they were given (toBatch, batchLines)', () => {
    const lines = ['{"a":"é"}\n', '\n', '{"b":"😀 two words"}\n'];
    const b = toBatch(lines, [3, 4, 4]);
    expect(batchLines(b)).toEqual(lines);
    expect([...b.at]).toEqual([3, 4, 4]);
    expect(b.text).toBe(lines.join(''));
    expect(batchLines(toBatch([], []))).toEqual([]);
  });
});

describe('FdOutput', () => {
  it('writes each chunk whole, in order, as UTF-8', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fulcrum-fdoutput-'));
    try {
      const file = join(dir, 'out');
      const fd = openSync(file, 'w');
      const out = new FdOutput(fd);
      const chunks = ['{"a":"é→😀"}\n', 'x'.repeat(3 << 20) + '\n', '{"b":2}\n'];
      for (const c of chunks) out.write(c);
      let flushed = false;
      out.flush(() => { flushed = true; });
      closeSync(fd);
      expect(flushed).toBe(true);
      expect(readFileSync(file, 'utf8')).toBe(chunks.join(''));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the process output (logOutput)', () => {
  it('writes the lines still held when the process exits, in order, after what the stream had', () => {
    const log = new URL('../../src/observability/log.ts', import.meta.url).pathname;
    const script = `
      const { createLogger, setLogFormat, writeLine } = await import(${JSON.stringify(log)});
      const logger = createLogger('info');
      logger.info('first');
      // Written and flushed to the stream; then two more are held (one "from another thread", older).
      await new Promise((r) => logger.flush(r));
      logger.info({ n: 2 }, 'second');
      writeLine(logger, JSON.stringify({ level: 40, time: new Date(Date.now() - 5).toISOString(), msg: 'older, from a worker' }) + '\\n', Date.now() - 5);
      setLogFormat(logger, 'text');
      process.exit(3);`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(3);
    const out = r.stdout.split('\n').filter(Boolean);
    expect(out).toHaveLength(3);
    expect(JSON.parse(out[0])).toMatchObject({ msg: 'first', app: 'fulcrum' }); // written as JSON before the switch
    expect(out[1]).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} WARN  older, from a worker$/);
    expect(out[2]).toMatch(/ INFO  second n=2$/);
  });
});

describe('LineForwarder', () => {
  it('announces a batch at its first line and sends it LOG_BATCH_MS later, each line with the time pino stamped on it', async () => {
    const sent: ForwardedLines[] = [];
    const f = new LineForwarder((m) => sent.push(m));
    const logger = createLogger('info', f).child({ worker: 1 });
    const before = Date.now();
    logger.info('a');
    expect(sent).toHaveLength(1); // the announcement, at once
    const open = sent[0] as { open: number };
    expect(open.open).toBeGreaterThanOrEqual(before);
    logger.info('b');
    expect(sent).toHaveLength(1); // batched, not one message per line
    await waitFor(() => sent.length === 2, LOG_BATCH_MS * 20, 'the batch');
    const batch = sent[1] as ForwardedBatch;
    const lines = batchLines(batch);
    expect(lines.map((l) => JSON.parse(l).msg)).toEqual(['a', 'b']);
    for (let i = 0; i < 2; i++) expect(batch.at[i]).toBe(Date.parse(JSON.parse(lines[i]).time));
    expect(batch.at[0]).toBe(open.open);
    // A full batch goes at once; flush sends the rest (a worker that stops).
    sent.length = 0;
    for (let i = 0; i < 513; i++) logger.info({ i }, 'many');
    expect(sent.map((m) => ('open' in m ? 'open' : m.ends.length))).toEqual(['open', 512, 'open']);
    f.flush();
    expect(sent.map((m) => ('open' in m ? 'open' : m.ends.length))).toEqual(['open', 512, 'open', 1]);
    f.flush();
    expect(sent).toHaveLength(4); // nothing left: no empty message
  });

  it('sends a batch at once when its text reaches 60,000 characters (below V8\'s large-object size)', () => {
    const sent: ForwardedLines[] = [];
    const f = new LineForwarder((m) => sent.push(m));
    const logger = createLogger('info', f);
    const long = 'x'.repeat(2900); // a line of about 3,000 characters
    for (let i = 0; i < 25; i++) logger.info({ long, i }, 'long');
    const batches = sent.filter((m): m is ForwardedBatch => 'text' in m);
    expect(batches).toHaveLength(1);
    expect(batches[0].text.length).toBeGreaterThanOrEqual(60_000);
    expect(batches[0].text.length).toBeLessThan(63_000);
    expect(batchLines(batches[0]).map((l) => JSON.parse(l).i)).toEqual(Array.from({ length: batches[0].ends.length }, (_, i) => i));
    f.flush();
  });
});
