/**
 * The UDP scenarios alone (`npm run bench` runs them with the TCP ones): fulcrum's relay, batched
 * and with batch 1, against nginx 1.22 stream. Writes bench/out/udp-results.json and prints the table.
 *
 *   node bench/udp.ts [--workers 1,2] [--reps 3] [--duration 5] [--idle-flows N] [--quick]
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { buildLoadgen, OUT_DIR } from './lib/loadgen.ts';
import { fdLimits } from './lib/procfs.ts';
import { nginxMissing, runUdpBench, udpIdleFlowsFor, udpTable, type UdpRun } from './lib/udp.ts';

const { values: flags } = parseArgs({
  options: {
    workers: { type: 'string', default: '1,2' },
    reps: { type: 'string', default: '3' },
    duration: { type: 'string', default: '5' },
    'idle-flows': { type: 'string' },
    quick: { type: 'boolean', default: false },
  },
});
const say = (msg: string) => process.stdout.write(`[udp ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

const runs: UdpRun[] = [];
const workers = flags.workers!.split(',').map(Number);
buildLoadgen();
const missing = nginxMissing();
if (missing) say(`nginx: ${missing} — fulcrum only`);
await runUdpBench({
  workers, reps: flags.quick ? 1 : Number(flags.reps), durationS: flags.quick ? 2 : Number(flags.duration), warmupS: 0.5,
  rrFlows: 256, churnFlows: 64, idleFlows: flags['idle-flows'] ? Number(flags['idle-flows']) : flags.quick ? 2000 : udpIdleFlowsFor(fdLimits().hard),
  backendHost: '127.6.0.31', proxyHost: '127.6.1.2', source: '127.6.2.100', withNginx: missing === null, say,
  record: (r) => {
    runs.push(r);
    say(`${r.scenario}${r.variant ? `/${r.variant}` : ''} ${r.target} w${r.workers} #${r.rep}: ${Object.entries(r.metrics).map(([k, v]) => `${k}=${Number.isInteger(v) ? v : v.toFixed(2)}`).join(' ')}${r.ok ? '' : ` ⚠ errors=${r.errors} corrupt=${r.corrupt}`}`);
  },
});
mkdirSync(OUT_DIR, { recursive: true });
writeFileSync(path.join(OUT_DIR, 'udp-results.json'), JSON.stringify({ date: new Date().toISOString(), runs }, null, 1));
process.stdout.write(`\n${udpTable(runs, workers)}\n`);
