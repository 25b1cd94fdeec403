/**
 * `npm run soak` — the long run the test suite cannot afford: a fulcrum held up for a million
 * churned connections and ~10,000 idle ones, its memory and descriptors read before, during and
 * after, so a leak of a few bytes or one descriptor per connection shows. Not part of CI (it takes
 * minutes of both cores); its latest figures are in RELIABILITY.md.
 *
 *   node bench/soak.ts [--connections 1000000] [--idle 9000] [--workers 2] [--max-minutes 20]
 *
 * Each phase is bounded in count and in time. The churn runs in blocks of 10 s (a new connection
 * per 64-byte request, 50 at a time, sources rotated over 64 loopback addresses, every reply
 * checked byte for byte by the load generator); the idle phase holds connections each proven by a
 * 1-byte echo. The default idle count is 9,000, not 10,000: this machine caps every process at
 * 20,000 descriptors, a proxied connection takes two, and fulcrum stops accepting at its reserve's
 * mark (5 % of the limit and 128 per relay worker: src/proxy/descriptors.ts).
 */
import { readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { buildLoadgen, holdIdle, killAllLoadgens, OUT_DIR, runClient, startBackend, type Backend } from './lib/loadgen.ts';
import { fdLimits, rssBytes } from './lib/procfs.ts';
import { killAllProxies, startFulcrum, type Proxy } from './lib/proxies.ts';

const { values: flags } = parseArgs({
  options: {
    connections: { type: 'string', default: '1000000' },
    idle: { type: 'string', default: '9000' },
    workers: { type: 'string', default: '2' },
    'max-minutes': { type: 'string', default: '20' },
  },
});
const TARGET = Number(flags.connections);
const IDLE = Number(flags.idle);
const WORKERS = Number(flags.workers);
const deadline = Date.now() + Number(flags['max-minutes']) * 60_000;

const HOST = '127.6.9.1';
const SOURCE_BASE = '127.6.10.1';

interface Reading {
  at: string;
  rss_mb: number;
  fds: number;
}

const fds = (pid: number): number => readdirSync(`/proc/${pid}/fd`).length;
const read = (p: Proxy, at: string): Reading => ({ at, rss_mb: Math.round(rssBytes(p.pid) / 1e5) / 10, fds: fds(p.pid) });

async function main(): Promise<void> {
  buildLoadgen();
  const limits = fdLimits();
  if (IDLE * 2 + 200 > limits.soft) console.error(`warning: ${IDLE} idle connections need ≈ ${IDLE * 2 + 200} descriptors in fulcrum; the limit is ${limits.soft}`);
  const backends: Backend[] = [await startBackend('echo', `${HOST.replace(/\.1$/, '.2')}:0`), await startBackend('echo', `${HOST.replace(/\.1$/, '.3')}:0`)];
  const proxy = await startFulcrum({ workers: WORKERS, host: HOST, upstreams: { echo: backends.map((b) => b.address), sink: backends.map((b) => b.address) } });
  const readings: Reading[] = [read(proxy, 'start')];
  const totals = { connections: 0, errors: 0, corrupt: 0, blocks: 0, idle_established: 0, idle_errors: 0 };
  try {
    // Churn in blocks until the count is reached (or the time is up).
    while (totals.connections < TARGET && Date.now() < deadline) {
      const r = await runClient({ mode: 'churn', targets: [proxy.listen.echo], conns: 50, durationS: 10, warmupS: 0, source: { base: SOURCE_BASE, count: 64 } });
      totals.connections += r.count ?? 0;
      totals.errors += r.errors;
      totals.corrupt += r.corrupt;
      totals.blocks++;
      if (totals.blocks === 1 || totals.blocks % 10 === 0) readings.push(read(proxy, `after ${totals.connections} churned`));
      console.log(JSON.stringify({ block: totals.blocks, connections: totals.connections, errors: totals.errors, corrupt: totals.corrupt, per_s: r.per_s }));
    }
    readings.push(read(proxy, `churn done (${totals.connections})`));
    // Idle: held, proven, released.
    const hold = await holdIdle(proxy.listen.echo, IDLE, 60);
    totals.idle_established = Number(hold.established.established ?? hold.established.count ?? 0);
    totals.idle_errors = Number(hold.established.errors ?? 0);
    readings.push(read(proxy, `${IDLE} idle held`));
    await hold.release();
    // Descriptors are closed as the clients go: wait (bounded) for them to come back to the start.
    const settle = Date.now() + 20_000;
    while (Date.now() < settle && fds(proxy.pid) > readings[0].fds + 8) await new Promise((r) => setTimeout(r, 200));
    readings.push(read(proxy, 'idle released'));
  } finally {
    await proxy.stop();
    for (const b of backends) await b.stop();
  }
  const result = { date: new Date().toISOString(), workers: WORKERS, target: TARGET, idle: IDLE, totals, readings };
  writeFileSync(path.join(OUT_DIR, 'soak.json'), JSON.stringify(result, null, 2));
  console.log('\n| when | RSS MB | descriptors |\n|---|---|---|');
  for (const r of readings) console.log(`| ${r.at} | ${r.rss_mb} | ${r.fds} |`);
  console.log(`\n${totals.connections} churned connections (${totals.errors} errors, ${totals.corrupt} corrupted replies); ` +
    `${totals.idle_established} of ${IDLE} idle established (${totals.idle_errors} errors). Written to bench/out/soak.json.`);
  if (totals.errors + totals.corrupt + totals.idle_errors > 0 || totals.connections < TARGET) process.exitCode = 1;
}

main().catch((err) => {
  console.error(err);
  killAllLoadgens();
  killAllProxies();
  process.exit(1);
});
