/**
 * The connection line's hand-built writer (log.ts connectionLineWriter) against pino itself: the
 * same bytes as `logger.info(rec, 'connection')` for every shape a record takes (a backend or
 * none, a detail that needs escaping, a UDP flow's datagram counts, a number that is not finite),
 * the logger's level respected; its number and time formatting against String() and toISOString;
 * and LineBatch: lines in order, handed over at the mark and on
 * flush.
 */
import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import {
  CONNECTION_LOG_MSG, connectionLineWriter, createLogger, isoTimeCache, jsonNumber, LineBatch, type ConnectionLogLine, type FlushableDestination,
} from '../../src/observability/log.ts';

/** A destination that keeps what it is given, one entry per write. */
function collector(): FlushableDestination & { writes: string[]; flushes: number } {
  const c = { writes: [] as string[], flushes: 0, write(s: string) { c.writes.push(s); }, flush() { c.flushes++; }, flushSync() { c.flushes++; } };
  return c;
}

const base: ConnectionLogLine = {
  client: '127.0.0.1:40000', service: 'web', backend: '10.0.0.1:80', connect_ms: 0.4, queue_ms: 0, duration_ms: 12.3,
  bytes_in: 64, bytes_out: 1048576, retries: 1, reason: 'client_closed',
};

const records: ConnectionLogLine[] = [
  base,
  { ...base, backend: null, connect_ms: -1, reason: 'no_backend' },
  { ...base, client: '[2001:db8::1]:5555', reason: 'bad_proxy_header', detail: 'header said "PROXY UNKNOWN\r\n" \\ then \u0001 and \ud800' },
  { ...base, service: 'udp', datagrams_in: 2, datagrams_out: 3, reason: 'idle_timeout' },
  { ...base, duration_ms: Number.NaN, queue_ms: Number.POSITIVE_INFINITY, bytes_in: 1e21 },
];

/** The time field differs between two calls: both lines get the same one. */
const sameTime = (line: string) => line.replace(/"time":"[^"]*"/, '"time":"T"');

describe('connectionLineWriter', () => {
  it('writes the bytes pino writes for logger.info(rec, "connection")', () => {
    const out = collector();
    const logger = createLogger('info', out).child({ component: 'proxy', worker: 3 });
    const write = connectionLineWriter(logger);
    for (const rec of records) {
      logger.info(rec, CONNECTION_LOG_MSG);
      write(rec);
      const [viaPino, byHand] = out.writes.splice(0);
      expect(sameTime(byHand)).toBe(sameTime(viaPino));
      expect(byHand.endsWith('}\n')).toBe(true);
      const parsed = JSON.parse(byHand);
      expect(Date.parse(parsed.time)).toBeGreaterThan(Date.now() - 60_000);
    }
  });

  it('writes nothing while the logger level is above info, and again once it is lowered', () => {
    const out = collector();
    const logger = createLogger('warn', out).child({ component: 'proxy', worker: 0 });
    const write = connectionLineWriter(logger);
    write(base);
    expect(out.writes).toHaveLength(0);
    logger.level = 'info'; // a reload (worker.ts setLogging)
    write(base);
    expect(out.writes).toHaveLength(1);
  });
});

describe('the connection line\'s numbers and times', () => {
  it('jsonNumber writes what String() writes (null when not finite)', () => {
    const values: number[] = [0, -0, 1, -1, 7, 64, 1048576, 1e21, 2 ** 53, -0.5, 0.1 + 0.2, 1 / 3, 123456.789, 5e-7, 1e9 + 0.5, 999999999.9];
    // Every one-decimal millisecond value core.ts round1 gives, up to 100 s, and a random spread beyond.
    for (let k = 0; k <= 1_000_000; k++) values.push(Math.round(k) / 10);
    for (let i = 0; i < 100_000; i++) values.push(Math.round(Math.random() * 1e11) / 10, Math.random() * 1e4);
    let wrong = 0;
    for (const v of values) if (String(jsonNumber(v)) !== String(v)) wrong++;
    expect(wrong).toBe(0);
    for (const v of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) expect(jsonNumber(v)).toBe('null');
  });

  it('isoTimeCache writes what toISOString writes, across seconds, days and years, in any order', () => {
    const iso = isoTimeCache();
    const times = [0, 999, 1000, 1001, -1, -1000, -1001, Date.UTC(2026, 11, 31, 23, 59, 59, 999), Date.UTC(2027, 0, 1), Date.UTC(9999, 11, 31, 23, 59, 59, 999),
      Date.UTC(10000, 0, 1), Date.UTC(-1, 0, 1), 8.64e15, -8.64e15];
    const now = Date.now();
    for (let i = 0; i < 5000; i++) times.push(now + i, now - i * 7, Math.floor(Math.random() * 4e12));
    for (const t of times) expect(iso(t), String(t)).toBe(new Date(t).toISOString());
  });
});

describe('LineBatch', () => {
  it('hands lines over in order, once the mark is reached, and what is left on flush', () => {
    const out = collector();
    const batch = new LineBatch(out, 100);
    const lines = Array.from({ length: 25 }, (_, i) => `{"n":${i},"pad":"${'x'.repeat(i % 7)}"}\n`);
    for (const l of lines) batch.write(l);
    expect(out.writes.length).toBeGreaterThan(0);
    for (const w of out.writes) expect(w.length).toBeGreaterThanOrEqual(100);
    batch.flushSync();
    expect(out.writes.join('')).toBe(lines.join(''));
    expect(out.flushes).toBe(1);
    batch.write(lines[0]);
    batch.flush();
    expect(out.writes.join('')).toBe(lines.join('') + lines[0]);
  });

  it('serves as a pino destination (a worker logger writes through it)', () => {
    const out = collector();
    const logger = pino({ base: { app: 'fulcrum' } }, new LineBatch(out));
    logger.warn({ a: 1 }, 'one');
    expect(out.writes).toHaveLength(0); // gathered
    (logger as unknown as Record<symbol, LineBatch>)[pino.symbols.streamSym].flushSync();
    expect(JSON.parse(out.writes.join(''))).toMatchObject({ level: 40, a: 1, msg: 'one' });
  });
});
