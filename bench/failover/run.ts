/**
 * `node bench/failover/run.ts [--kills 20] [--interval 10] [--out bench/out/failover.md]`
 *
 * Failover under load, in the same network namespaces as the tests (test/failover/lab.ts):
 * lb1 (priority 150) and lb2 (100) run the real `bin/fulcrum run`, with ha.advert_interval 100ms,
 * dead_after 3 and preempt false (a restarted node comes back as backup, so every kill moves the
 * VIP once). A client namespace opens one connection every --interval ms through the VIP for the
 * whole run (bounded: at most 64 in flight, each with a 250 ms timeout). The current master is
 * killed with SIGKILL --kills times; each takeover time is from the kill to the completion of the
 * first successful connect after the first failed one. Failed connects are counted over the run.
 * Writes a markdown report beside keepalived's published defaults. Root only.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { netnsAvailable, ROOT, sleep } from '../../test/helpers/netns.ts';
import { PairLab, type ClientResult, type NodeName } from '../../test/failover/lab.ts';

const { values } = parseArgs({
  options: {
    kills: { type: 'string', default: '20' },
    interval: { type: 'string', default: '10' },
    out: { type: 'string', default: join(ROOT, 'bench/out/failover.md') },
  },
});
const KILLS = Math.max(1, Math.min(100, Number(values.kills)));
const INTERVAL = Math.max(5, Number(values.interval));
const CONNECT_TIMEOUT = 250;

if (!netnsAvailable()) {
  process.stderr.write('bench/failover needs root, iproute2 and arping (network namespaces)\n');
  process.exit(1);
}

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1);
  return sorted[Math.max(0, i)];
}

function takeover(results: ClientResult[], killedAt: number, until: number): { ms: number | null; failed: number } {
  const window = results.filter((r) => r.t >= killedAt && r.t < until).sort((a, b) => a.t - b.t);
  const failed = window.filter((r) => !r.ok).length;
  const firstFail = window.find((r) => !r.ok);
  if (!firstFail) return { ms: window.length > 0 ? 0 : null, failed };
  const firstOk = window.find((r) => r.ok && r.t > firstFail.t);
  return { ms: firstOk ? firstOk.done - killedAt : null, failed };
}

const p = await PairLab.create('bench');
const cfg = { preempt: false, logLevel: 'info' } as const;
const samples: { kill: number; victim: NodeName; ms: number | null; failed: number; cause: string }[] = [];
let totalAttempts = 0;
let totalFailed = 0;
try {
  await p.start('lb1', cfg);
  await p.start('lb2', cfg);
  await p.waitRole('lb1', 'master', 5000);
  await p.waitRole('lb2', 'backup', 5000);
  await p.waitServing(5000);

  const budgetMs = KILLS * 4000 + 5000;
  const load = p.clientLoop(INTERVAL, budgetMs, CONNECT_TIMEOUT);
  await sleep(1000);
  for (let k = 1; k <= KILLS; k++) {
    const victim: NodeName = p.role('lb1') === 'master' ? 'lb1' : 'lb2';
    const survivor: NodeName = victim === 'lb1' ? 'lb2' : 'lb1';
    const killedAt = Date.now();
    await p.kill9(victim);
    await p.waitRole(survivor, 'master', 5000);
    await sleep(1200); // let the client see the takeover
    const r = takeover(load.results, killedAt, Date.now());
    samples.push({ kill: k, victim, ms: r.ms, failed: r.failed, cause: String(p.transitions(survivor).at(-1)?.cause ?? '') });
    process.stdout.write(`kill ${k}/${KILLS}: ${victim} → ${survivor} master, first success after ${r.ms} ms, ${r.failed} failed connects\n`);
    // The victim comes back (as backup: preempt false) for the next round.
    await p.start(victim, cfg);
    await p.waitRole(victim, 'backup', 5000);
    await sleep(600);
  }
  load.child.kill('SIGTERM');
  await load.done;
  totalAttempts = load.results.length;
  totalFailed = load.results.filter((r) => !r.ok).length;
} finally {
  await p.destroy();
}

const times = samples.map((s) => s.ms).filter((x): x is number => x !== null).sort((a, b) => a - b);
const missing = samples.length - times.length;
const median = quantile(times, 0.5);
const p95 = quantile(times, 0.95);
const max = times.at(-1) ?? NaN;
// keepalived defaults: advert_int 1 s, Master_Down_Interval = 3 × 1 s + Skew_Time
// ((256 − 100)/256 s for a priority-100 backup) ≈ 3.61 s before the backup even starts to take over.
const keepalived = 3 * 1000 + ((256 - 100) * 1000) / 256;

const md = `# Failover under load

\`node bench/failover/run.ts\` — ${new Date().toISOString().slice(0, 10)}, ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, Node ${process.version}.

Two fulcrum instances (\`bin/fulcrum run\`, 1 worker each) in network namespaces on one bridge,
heartbeat on a second bridge; ha.advert_interval 100ms, dead_after 3, preempt false; the master
killed with SIGKILL ${KILLS} times while a client opens a connection through the VIP every ${INTERVAL} ms
(250 ms connect timeout). Takeover = from the kill to the first successful connection after
the first failed one (the client sees the outage end).

| | median | p95 | max |
|---|---:|---:|---:|
| fulcrum takeover (advert 100ms × dead_after 3) | ${median} ms | ${p95} ms | ${max} ms |
| keepalived defaults (advert_int 1 s: Master_Down_Interval alone) | ≈ ${Math.round(keepalived)} ms | | |

- failed client connects: ${totalFailed} of ${totalAttempts} over the whole run (${(totalFailed / KILLS).toFixed(1)} per failover; the client tries every ${INTERVAL} ms, so ≈ outage ÷ ${INTERVAL} ms)${missing > 0 ? `\n- ${missing} kill(s) with no measured recovery inside the window` : ''}
- the master-down interval fulcrum computes for the priority-100 backup: 3 × 100 + (256 − 100) × 100 / 256 ≈ 361 ms (150: 341 ms); the rest is the VIP command, the listener resume and gratuitous ARP reaching the client.
- keepalived's figure is its detection time alone (RFC 5798 timers at its 1 s default); lowering its advert_int lowers it the same way.

| kill | killed | takeover (ms) | failed connects |
|---:|---|---:|---:|
${samples.map((s) => `| ${s.kill} | ${s.victim} | ${s.ms ?? 'none'} | ${s.failed} |`).join('\n')}
`;
mkdirSync(dirname(values.out!), { recursive: true });
writeFileSync(values.out!, md);
process.stdout.write(`\nmedian ${median} ms, p95 ${p95} ms, max ${max} ms; failed connects ${totalFailed}/${totalAttempts}\nwrote ${values.out}\n`);
