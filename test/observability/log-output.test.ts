/**
 * The pieces of src/observability/log.ts on their own: the text format of a pino line, LogOutput's
 * time order (with an injected clock), and LineForwarder's batches with the time of each line.
 * The same pieces in a running fulcrum: log-order.test.ts.
 */
import { spawnSync } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger, formatText, LineForwarder, LOG_BATCH_MS, LOG_HOLD_MS, LogOutput, setLogFormat, writeLine } from '../../src/observability/log.ts';
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
  it('holds lines LOG_HOLD_MS and writes them in the order they were logged, whoever sent them first', () => {
    const out = sink();
    let now = 1_000_000;
    const o = new LogOutput(out, { now: () => now, timer: false });
    const t = (ms: number): string => new Date(ms).toISOString();
    // Worker 1's batch arrives after worker 2's, but holds earlier lines.
    o.writeAt(line(t(now - 50), 'w2 a'), now - 50);
    o.writeAt(line(t(now - 10), 'w2 b'), now - 10);
    o.writeAt(line(t(now - 90), 'w1 a'), now - 90);
    o.writeAt(line(t(now - 10), 'w1 b'), now - 10); // same millisecond as w2 b: arrival order kept
    o.drain();
    expect(out.chunks).toEqual([]); // nothing is old enough yet
    now += LOG_HOLD_MS - 60; // w1 a is now LOG_HOLD_MS old, w2 a not
    o.drain();
    expect(out.chunks.join('')).toBe(line(t(1_000_000 - 90), 'w1 a'));
    now += 100;
    o.drain();
    expect(out.chunks.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l).msg)).toEqual(['w1 a', 'w2 a', 'w2 b', 'w1 b']);
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
    // The real timer writes them once LOG_HOLD_MS old: the old line first, then the two in order.
    await waitFor(() => out.chunks.join('').split('\n').filter(Boolean).length === 3, LOG_HOLD_MS * 4, 'the held lines');
    const written = out.chunks.join('').split('\n').filter(Boolean);
    expect(written[0]).toMatch(/ INFO  from another thread component=t$/);
    expect(written[1]).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO  one n=1$/);
    expect(written[2]).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO  two n=2$/);
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
  it('sends a thread\'s lines in batches, each with the time pino stamped on it', async () => {
    const batches: { lines: string[]; at: number[] }[] = [];
    const f = new LineForwarder((lines, at) => batches.push({ lines, at }));
    const logger = createLogger('info', f).child({ worker: 1 });
    const sentAt = Date.now();
    logger.info('a');
    logger.info('b');
    expect(batches).toEqual([]); // batched, not one message per line
    await waitFor(() => batches.length === 1, LOG_BATCH_MS * 20, 'the batch');
    const [batch] = batches;
    expect(batch.lines.map((l) => JSON.parse(l).msg)).toEqual(['a', 'b']);
    for (let i = 0; i < 2; i++) expect(batch.at[i]).toBe(Date.parse(JSON.parse(batch.lines[i]).time));
    expect(batch.at[0]).toBeGreaterThanOrEqual(sentAt);
    // A full batch goes at once; flush sends the rest (a worker that stops).
    for (let i = 0; i < 513; i++) logger.info({ i }, 'many');
    expect(batches).toHaveLength(2);
    expect(batches[1].lines).toHaveLength(512);
    f.flush();
    expect(batches).toHaveLength(3);
    expect(batches[2].lines).toHaveLength(1);
    f.flush();
    expect(batches).toHaveLength(3); // nothing left: no empty message
  });
});
