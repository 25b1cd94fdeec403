/**
 * `node bench/diag/log-line.ts [--lines 200000] [--rounds 3]` — what one connection line costs a
 * worker in CPU (user and system time of the whole process, so the file writes on libuv's thread
 * pool count too), written to a file in bench/out/ the way a worker writes it:
 *
 *   pino      logger.info(rec, 'connection') into pino.destination({ sync: false, minLength: 4096 })
 *             (the worker's logging before 2026-12-06)
 *   pino-batched  the same through LineBatch (what the batching alone saves)
 *   worker    connectionLineWriter(logger) into LineBatch(the same destination) (src/proxy/worker.ts)
 *
 * Alternating rounds, 1,000 lines per event-loop turn (a busy worker's closes come in batches).
 * CPU time, not instructions: run it on a quiet machine, or compare the two columns of one run.
 */
import { rmSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { CONNECTION_LOG_MSG, connectionLineWriter, createLogger, LineBatch, type ConnectionLogLine, type FlushableDestination } from '../../src/observability/log.ts';
import { OUT_DIR } from '../lib/loadgen.ts';
import { median } from '../lib/procfs.ts';

const { values: flags } = parseArgs({ options: { lines: { type: 'string', default: '200000' }, rounds: { type: 'string', default: '3' } } });
const N = Number(flags.lines);
const file = path.join(OUT_DIR, 'log-line.out');

const records: ConnectionLogLine[] = Array.from({ length: 1024 }, (_, i) => ({
  client: `127.6.2.${1 + (i & 63)}:${40000 + i}`, service: 'echo', backend: `127.6.0.${1 + (i & 1)}:35473`, connect_ms: 0.1 * (i & 7),
  queue_ms: 0, duration_ms: 1.3, bytes_in: 64, bytes_out: 64, retries: 0, reason: 'client_closed',
}));

type Way = { name: string; make(): { log: (rec: ConnectionLogLine) => void; flushSync(): void } };
const ways: Way[] = [
  {
    name: 'pino',
    make() {
      const d = pino.destination({ dest: file, sync: false, minLength: 4096 });
      const logger = createLogger('info', d).child({ component: 'proxy', worker: 0 });
      return { log: (rec) => logger.info(rec, CONNECTION_LOG_MSG), flushSync: () => d.flushSync() };
    },
  },
  {
    name: 'pino-batched',
    make() {
      const d = new LineBatch(pino.destination({ dest: file, sync: false, minLength: 4096 }) as FlushableDestination);
      const logger = createLogger('info', d).child({ component: 'proxy', worker: 0 });
      return { log: (rec) => logger.info(rec, CONNECTION_LOG_MSG), flushSync: () => d.flushSync() };
    },
  },
  {
    name: 'worker',
    make() {
      const d = new LineBatch(pino.destination({ dest: file, sync: false, minLength: 4096 }) as FlushableDestination);
      const logger = createLogger('info', d).child({ component: 'proxy', worker: 0 });
      return { log: connectionLineWriter(logger), flushSync: () => d.flushSync() };
    },
  },
];

async function round(way: Way): Promise<{ user: number; sys: number }> {
  rmSync(file, { force: true });
  const w = way.make();
  await new Promise((r) => setTimeout(r, 50)); // the destination opens its file
  for (let i = 0; i < 20_000; i++) w.log(records[i & 1023]); // warm-up: compiled code
  w.flushSync();
  const c0 = process.cpuUsage();
  for (let done = 0; done < N; done += 1000) {
    for (let i = 0; i < 1000; i++) w.log(records[(done + i) & 1023]);
    await new Promise((r) => setImmediate(r));
  }
  w.flushSync();
  const c = process.cpuUsage(c0);
  return { user: c.user / N, sys: c.system / N };
}

const results: Record<string, { user: number[]; sys: number[] }> = {};
for (let r = 0; r < Number(flags.rounds); r++) {
  for (const way of ways) {
    const res = await round(way);
    (results[way.name] ??= { user: [], sys: [] }).user.push(res.user);
    results[way.name].sys.push(res.sys);
    console.log(`${way.name} #${r + 1}: user ${res.user.toFixed(3)} µs, sys ${res.sys.toFixed(3)} µs per line`);
  }
}
for (const [name, v] of Object.entries(results)) console.log(`median ${name}: user ${median(v.user).toFixed(3)} µs, sys ${median(v.sys).toFixed(3)} µs per line`);
rmSync(file, { force: true });
