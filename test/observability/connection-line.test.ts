/**
 * The connection line's hand-built writer (log.ts connectionLineWriter) against pino itself: the
 * same bytes as `logger.info(rec, 'connection')` for every shape a record takes (a backend or
 * none, a detail that needs escaping, a UDP flow's datagram counts, a number that is not finite),
 * the logger's level respected; and LineBatch: lines in order, handed over at the mark and on
 * flush.
 */
import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { CONNECTION_LOG_MSG, connectionLineWriter, createLogger, LineBatch, type ConnectionLogLine, type FlushableDestination } from '../../src/observability/log.ts';

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
