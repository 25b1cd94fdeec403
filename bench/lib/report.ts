/**
 * Writes BENCHMARKS.md from the harness's results: one table per scenario (absolute figures,
 * ratio to direct, ratio to HAProxy, per proxy CPU-second), the targets, the machine, the date,
 * the command, the profiles, and the engine and failover sections other parts of the project
 * leave in bench/out/.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { CHURN_VARIANTS } from './churn.ts';
import type { ProfileSummary } from './profile.ts';
import { median } from './procfs.ts';
import { udpTable, type UdpRun } from './udp.ts';

/** `bare`: bench/diag/epoll-proxy.c --half-close, one thread — the floor (rr and the base churn). */
export type TargetName = 'direct' | 'fulcrum' | 'haproxy' | 'nginx' | 'bare';

/** One measured run. */
export interface Run {
  scenario: string; // rr | churn | bulk | idle | redis
  variant: string; // '' or e.g. 'P16' for redis
  target: TargetName;
  workers: number; // 0 for direct
  rep: number;
  ok: boolean;
  errors: number;
  corrupt: number;
  cpuS: number | null; // proxy CPU seconds in the measured window
  metrics: Record<string, number>;
}

export interface Machine {
  cores: number;
  cpuModel: string;
  kernel: string;
  node: string;
  haproxy: string;
  /** nginx's version (the UDP scenarios' reference), absent in results from before them. */
  nginx?: string;
  redis: string;
  memory: string;
  fdLimit: number;
  /** fulcrum's data path in this run (absent in results from before the relay). */
  dataPath?: string;
}

export interface Results {
  date: string;
  command: string;
  quick: boolean;
  machine: Machine;
  settings: Record<string, string | number>;
  runs: Run[];
  skipped: string[];
  profiles: { scenario: string; workers: number; summaries: ProfileSummary[] }[];
}

interface Agg {
  runs: number;
  bad: number;
  errors: number;
  corrupt: number;
  m: Record<string, number>;
}

function aggregate(runs: Run[]): Agg | null {
  if (!runs.length) return null;
  const keys = new Set(runs.flatMap((r) => Object.keys(r.metrics)));
  const m: Record<string, number> = {};
  for (const k of keys) m[k] = median(runs.map((r) => r.metrics[k]).filter((v) => Number.isFinite(v)));
  return {
    runs: runs.length,
    bad: runs.filter((r) => !r.ok).length,
    errors: runs.reduce((a, r) => a + r.errors, 0),
    corrupt: runs.reduce((a, r) => a + r.corrupt, 0),
    m,
  };
}

export function pick(res: Results, scenario: string, variant: string, target: TargetName, workers: number): Agg | null {
  return aggregate(res.runs.filter((r) => r.scenario === scenario && r.variant === variant && r.target === target &&
    (target === 'direct' || r.workers === workers)));
}

// ── number formatting ────────────────────────────────────────────────────────

function si(v: number | undefined): string {
  if (v === undefined || !Number.isFinite(v)) return '—';
  const a = Math.abs(v);
  if (a >= 1e6) return `${Number((v / 1e6).toPrecision(3))}M`;
  if (a >= 1e3) return `${Number((v / 1e3).toPrecision(3))}k`;
  return String(Number(v.toPrecision(3)));
}
const gb = (bytes: number | undefined) => (bytes === undefined || !Number.isFinite(bytes) ? '—' : `${(bytes / 1e9).toFixed(2)} GB`);
const fix = (v: number | undefined, d = 1) => (v === undefined || !Number.isFinite(v) ? '—' : v.toFixed(d));
const ratio = (a: number | undefined, b: number | undefined) =>
  a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0 ? '—' : `${(a / b).toFixed(2)}×`;
const kb = (bytes: number | undefined) => (bytes === undefined || !Number.isFinite(bytes) ? '—' : `${(bytes / 1024).toFixed(2)} KB`);
const mb = (bytes: number | undefined) => (bytes === undefined || !Number.isFinite(bytes) ? '—' : `${(bytes / 1048576).toFixed(1)} MB`);

function health(a: Agg): string {
  const parts = [`${a.runs}`];
  if (a.errors || a.corrupt || a.bad) parts.push(`⚠ ${a.bad} flagged: ${a.errors} errors, ${a.corrupt} corrupt`);
  return parts.join(' ');
}

function table(head: string[], rows: string[][]): string {
  return [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

function workerList(res: Results): number[] {
  return [...new Set(res.runs.filter((r) => r.target !== 'direct').map((r) => r.workers))].sort((a, b) => a - b);
}

const label = (t: TargetName, w: number) => (t === 'direct' ? 'direct (no proxy)' : `${t === 'haproxy' ? 'HAProxy' : 'fulcrum'}, ${w} thread${w > 1 ? 's' : ''}`);

// ── scenario tables ──────────────────────────────────────────────────────────

function requestTable(res: Results, scenario: 'rr' | 'churn'): string {
  const unit = scenario === 'rr' ? 'req/s' : 'conn/s';
  const head = ['target', unit, 'p50 µs', 'p90 µs', 'p99 µs', 'p99.9 µs', 'proxy CPU s', `proxy user / sys µs per ${scenario === 'rr' ? 'request' : 'connection'}`,
    `${unit.split('/')[0]} per proxy CPU-s`, 'vs direct', 'vs HAProxy', 'per CPU-s vs HAProxy', 'p99 vs HAProxy', 'runs'];
  const rows: string[][] = [];
  const direct = pick(res, scenario, '', 'direct', 0);
  if (direct) {
    rows.push([label('direct', 0), si(direct.m.per_s), fix(direct.m.p50_us), fix(direct.m.p90_us), fix(direct.m.p99_us), fix(direct.m.p999_us),
      '—', '—', '—', '1.00×', '—', '—', '—', health(direct)]);
  }
  for (const w of workerList(res)) {
    const h = pick(res, scenario, '', 'haproxy', w);
    for (const t of ['haproxy', 'fulcrum'] as const) {
      const a = pick(res, scenario, '', t, w);
      if (!a) continue;
      rows.push([label(t, w), si(a.m.per_s), fix(a.m.p50_us), fix(a.m.p90_us), fix(a.m.p99_us), fix(a.m.p999_us), fix(a.m.cpu_s, 2),
        `${fix(a.m.user_us, 2)} / ${fix(a.m.sys_us, 2)}`, si(a.m.per_cpu_s), ratio(a.m.per_s, direct?.m.per_s), t === 'fulcrum' ? ratio(a.m.per_s, h?.m.per_s) : '—',
        t === 'fulcrum' ? ratio(a.m.per_cpu_s, h?.m.per_cpu_s) : '—', t === 'fulcrum' ? ratio(a.m.p99_us, h?.m.p99_us) : '—', health(a)]);
    }
  }
  const bare = pick(res, scenario, '', 'bare', 1);
  const h1 = pick(res, scenario, '', 'haproxy', 1);
  if (bare) {
    rows.push(['the floor: a bare C proxy (half-close kept, no features), 1 thread', si(bare.m.per_s), fix(bare.m.p50_us), fix(bare.m.p90_us), fix(bare.m.p99_us), fix(bare.m.p999_us),
      fix(bare.m.cpu_s, 2), `${fix(bare.m.user_us, 2)} / ${fix(bare.m.sys_us, 2)}`, si(bare.m.per_cpu_s), ratio(bare.m.per_s, direct?.m.per_s), ratio(bare.m.per_s, h1?.m.per_s),
      ratio(bare.m.per_cpu_s, h1?.m.per_cpu_s), ratio(bare.m.p99_us, h1?.m.p99_us), health(bare)]);
  }
  return rows.length ? table(head, rows) : '_not run_';
}


function churnRatio(res: Results, variant: string, w: number): number | undefined {
  const f = pick(res, 'churn', variant, 'fulcrum', w);
  const h = pick(res, 'churn', variant, 'haproxy', w);
  return f && h ? f.m.per_cpu_s / h.m.per_cpu_s : undefined;
}

/** One row per variant and thread count: connections per proxy CPU-second, user µs per connection, errors, log lines. */
function churnFamilyTable(res: Results): string {
  const head = ['variant', 'threads', 'fulcrum conn per CPU-s', 'HAProxy conn per CPU-s', 'per CPU-s vs HAProxy', 'fulcrum user / sys µs per conn',
    'HAProxy user / sys µs per conn', 'fulcrum conn/s', 'HAProxy conn/s', 'errors (fulcrum / HAProxy)', 'log lines lost (fulcrum / HAProxy)', 'runs'];
  const rows: string[][] = [];
  for (const v of CHURN_VARIANTS) {
    for (const w of workerList(res)) {
      const f = pick(res, 'churn', v.name, 'fulcrum', w);
      const h = pick(res, 'churn', v.name, 'haproxy', w);
      if (!f && !h) continue;
      const errs = (a: Agg | null) => (a ? `${a.errors + a.corrupt}${a.bad ? ' ⚠' : ''}` : '—');
      // Lost lines summed over the runs (the median would hide one bad run).
      const lost = (t: TargetName) => {
        const rs = res.runs.filter((r) => r.scenario === 'churn' && r.variant === v.name && r.target === t && r.workers === w && 'log_lost' in r.metrics);
        if (!rs.length) return '—';
        const sum = (k: string) => rs.reduce((a, r) => a + r.metrics[k], 0);
        return `${sum('log_lost')} of ${sum('total')}`;
      };
      rows.push([v.label, String(w), si(f?.m.per_cpu_s), si(h?.m.per_cpu_s), ratio(f?.m.per_cpu_s, h?.m.per_cpu_s),
        `${fix(f?.m.user_us, 1)} / ${fix(f?.m.sys_us, 1)}`, `${fix(h?.m.user_us, 1)} / ${fix(h?.m.sys_us, 1)}`, si(f?.m.per_s), si(h?.m.per_s),
        `${errs(f)} / ${errs(h)}`, v.name === 'logs' ? `${lost('fulcrum')} / ${lost('haproxy')}` : '—', `${f?.runs ?? 0} / ${h?.runs ?? 0}`]);
    }
  }
  return rows.length ? table(head, rows) : '_not run_';
}

function bulkTable(res: Results): string {
  const head = ['target', 'Gbit/s', 'proxy CPU s', 'user share', 'Gbit per proxy CPU-s', 'vs direct', 'vs HAProxy', 'per CPU-s vs HAProxy', 'bytes checked', 'runs'];
  const rows: string[][] = [];
  const direct = pick(res, 'bulk', '', 'direct', 0);
  if (direct) rows.push([label('direct', 0), fix(direct.m.gbit_s, 2), '—', '—', '—', '1.00×', '—', '—', gb(direct.m.bytes), health(direct)]);
  for (const w of workerList(res)) {
    const h = pick(res, 'bulk', '', 'haproxy', w);
    for (const t of ['haproxy', 'fulcrum'] as const) {
      const a = pick(res, 'bulk', '', t, w);
      if (!a) continue;
      rows.push([label(t, w), fix(a.m.gbit_s, 2), fix(a.m.cpu_s, 2), a.m.user_share === undefined ? '—' : `${fix(100 * a.m.user_share, 0)} %`, fix(a.m.gbit_per_cpu_s, 2), ratio(a.m.gbit_s, direct?.m.gbit_s),
        t === 'fulcrum' ? ratio(a.m.gbit_s, h?.m.gbit_s) : '—', t === 'fulcrum' ? ratio(a.m.gbit_per_cpu_s, h?.m.gbit_per_cpu_s) : '—',
        gb(a.m.bytes), health(a)]);
    }
  }
  return rows.length ? table(head, rows) : '_not run_';
}

function idleTable(res: Results): string {
  const head = ['proxy', 'connections', 'RSS before', 'RSS after', 'RSS per connection', 'vs HAProxy', 'open all (ms)', 'runs'];
  const rows: string[][] = [];
  for (const w of workerList(res)) {
    const h = pick(res, 'idle', '', 'haproxy', w);
    for (const t of ['haproxy', 'fulcrum'] as const) {
      const a = pick(res, 'idle', '', t, w);
      if (!a) continue;
      rows.push([label(t, w), String(a.m.conns), mb(a.m.rss_before), mb(a.m.rss_after), kb(a.m.bytes_per_conn),
        t === 'fulcrum' ? ratio(a.m.bytes_per_conn, h?.m.bytes_per_conn) : '—', fix(a.m.open_ms, 0), health(a)]);
    }
  }
  return rows.length ? table(head, rows) : '_not run_';
}

const REDIS_TESTS = ['PING_INLINE', 'PING_MBULK', 'SET', 'GET'];

function redisTable(res: Results, variant: string): string {
  const head = ['target', ...REDIS_TESTS.map((t) => `${t} req/s`), 'GET p99 ms', 'all req per proxy CPU-s', 'GET vs direct', 'GET vs HAProxy', 'per CPU-s vs HAProxy', 'runs'];
  const rows: string[][] = [];
  const direct = pick(res, 'redis', variant, 'direct', 0);
  if (direct) rows.push([label('direct', 0), ...REDIS_TESTS.map((t) => si(direct.m[t])), fix(direct.m.GET_p99_ms, 3), '—', '1.00×', '—', '—', health(direct)]);
  for (const w of workerList(res)) {
    const h = pick(res, 'redis', variant, 'haproxy', w);
    for (const t of ['haproxy', 'fulcrum'] as const) {
      const a = pick(res, 'redis', variant, t, w);
      if (!a) continue;
      rows.push([label(t, w), ...REDIS_TESTS.map((x) => si(a.m[x])), fix(a.m.GET_p99_ms, 3), si(a.m.per_cpu_s), ratio(a.m.GET, direct?.m.GET),
        t === 'fulcrum' ? ratio(a.m.GET, h?.m.GET) : '—', t === 'fulcrum' ? ratio(a.m.per_cpu_s, h?.m.per_cpu_s) : '—', health(a)]);
    }
  }
  return rows.length ? table(head, rows) : '_not run_';
}

// ── targets ─────────────────────────────────────────────────────────────────

interface TargetCheck {
  what: string;
  goal: string;
  value: (res: Results, w: number) => number | undefined;
  met: (v: number) => boolean;
  show: (v: number) => string;
}

const perCpu = (scenario: string, key: string) => (res: Results, w: number) => {
  const f = pick(res, scenario, '', 'fulcrum', w);
  const h = pick(res, scenario, '', 'haproxy', w);
  return f && h ? f.m[key] / h.m[key] : undefined;
};

const TARGETS: TargetCheck[] = [
  { what: 'rr, requests per proxy CPU-second vs HAProxy', goal: '≥ 1.05×', value: perCpu('rr', 'per_cpu_s'), met: (v) => v >= 1.05, show: (v) => `${v.toFixed(2)}×` },
  ...CHURN_VARIANTS.map((c): TargetCheck => ({
    what: `churn (${c.label}), connections per proxy CPU-second vs HAProxy`, goal: `≥ ${c.goal.toFixed(2)}×`,
    value: (res, w) => churnRatio(res, c.name, w), met: (v) => v >= c.goal, show: (v) => `${v.toFixed(2)}×`,
  })),
  {
    what: 'churn with the connection log on: fulcrum lines lost', goal: '0',
    value: (res, w) => {
      const rs = res.runs.filter((r) => r.scenario === 'churn' && r.variant === 'logs' && r.target === 'fulcrum' && r.workers === w && 'log_lost' in r.metrics);
      return rs.length ? rs.reduce((a, r) => a + r.metrics.log_lost, 0) : undefined;
    },
    met: (v) => v === 0, show: (v) => String(v),
  },
  { what: 'bulk, Gbit per proxy CPU-second vs HAProxy (no splice)', goal: '≥ 0.90×', value: perCpu('bulk', 'gbit_per_cpu_s'), met: (v) => v >= 0.9, show: (v) => `${v.toFixed(2)}×` },
  { what: 'idle, RSS per connection', goal: '≤ 6 KB', value: (res, w) => pick(res, 'idle', '', 'fulcrum', w)?.m.bytes_per_conn, met: (v) => v <= 6 * 1024, show: (v) => kb(v) },
  { what: 'rr p99 vs HAProxy', goal: '≤ 1.30×', value: perCpu('rr', 'p99_us'), met: (v) => v <= 1.3, show: (v) => `${v.toFixed(2)}×` },
  {
    what: 'errors and corrupted bytes (all fulcrum runs)', goal: '0',
    value: (res, w) => {
      const runs = res.runs.filter((r) => r.target === 'fulcrum' && r.workers === w);
      return runs.length ? runs.reduce((a, r) => a + r.errors + r.corrupt + (r.ok ? 0 : 1), 0) : undefined;
    },
    met: (v) => v === 0, show: (v) => String(v),
  },
];

/** The floor's ratios to HAProxy (one thread), beside the targets: the most a proxy making the same system calls got in this run. */
function floorLine(res: Results): string {
  const parts = (['rr', 'churn'] as const).flatMap((sc) => {
    const b = pick(res, sc, '', 'bare', 1);
    const h = pick(res, sc, '', 'haproxy', 1);
    return b && h ? [`${sc === 'rr' ? 'rr' : 'churn (base)'} ${ratio(b.m.per_cpu_s, h.m.per_cpu_s)}`] : [];
  });
  return parts.length ? `\nThe floor — a bare C proxy with the same system calls and none of the features (see "How it is measured"), one thread — per CPU-second vs HAProxy in this run: ${parts.join(', ')}.\n` : '';
}

function targetsTable(res: Results): string {
  const ws = workerList(res);
  const head = ['target', 'goal', ...ws.map((w) => `${w} thread${w > 1 ? 's' : ''}`)];
  // A target whose scenario or variant was not run in this results file is left out.
  const rows = TARGETS.map((t) => [t.what, t.goal, ...ws.map((w) => {
    const v = t.value(res, w);
    return v === undefined || !Number.isFinite(v) ? '—' : `${t.show(v)} ${t.met(v) ? '✅' : '❌'}`;
  })]).filter((r) => r.slice(2).some((c) => c !== '—'));
  return table(head, rows);
}

// ── profiles and included sections ──────────────────────────────────────────

function profileSection(res: Results): string {
  if (!res.profiles.length) return '_No profile was taken in this run (profiles are taken by the full run, not with --quick or --no-profile)._';
  const out: string[] = [];
  for (const p of res.profiles) {
    // The busiest thread is the data plane (a worker); the main thread mostly idles.
    const busiest = [...p.summaries].sort((a, b) => b.busyMs - a.busyMs)[0];
    if (!busiest) continue;
    out.push(`### ${p.scenario}, ${p.workers} worker${p.workers > 1 ? 's' : ''}: busiest thread (${fix(busiest.busyMs, 0)} ms on CPU in JavaScript's view, ${fix(busiest.idlePct, 0)} % idle)`);
    out.push('');
    out.push(table(['self %', 'frame'], busiest.top.map((f) => [fix(f.selfPct, 1), `\`${f.frame}\``])));
    out.push('');
    out.push('By file: ' + busiest.byFile.map((f) => `${f.file} ${fix(f.selfPct, 1)} %`).join(' · '));
    out.push('');
  }
  return out.join('\n');
}

function include(file: string, missing: string, demote = true): string {
  if (!existsSync(file)) return missing;
  const text = readFileSync(file, 'utf8').trim();
  // Demote another part's headings so they sit under this document's section.
  return demote ? text.replace(/^(#+) /gm, '$1## ') : text;
}

export function renderMarkdown(res: Results, benchDir: string): string {
  const s = res.settings;
  const m = res.machine;
  const outDir = path.join(benchDir, 'out');
  const udpRuns = res.runs.filter((r) => r.scenario.startsWith('udp-')) as UdpRun[];
  return `# Benchmarks

Fulcrum against HAProxy ${m.haproxy.replace(/^HAProxy version /, '').split(' ')[0]} (\`mode tcp\`) on the same machine, in one command, written by the harness (\`bench/run.ts\`) on ${res.date}${res.quick ? ' — **a --quick smoke run: short, one repetition, not for comparison**' : ''}.

\`\`\`
${res.command}
\`\`\`

## Machine

| | |
|---|---|
| CPU | ${m.cores} × ${m.cpuModel} |
| memory | ${m.memory} |
| kernel | ${m.kernel} |
| Node | ${m.node} |
| HAProxy | ${m.haproxy} |
| redis | ${m.redis} |
| open files limit | ${m.fdLimit} |
| fulcrum's data path | ${m.dataPath ?? "JavaScript (Node's TCP handles)"} |

## How it is measured

- **Load** comes from \`bench/loadgen/loadgen.c\` (epoll, built by the harness with \`cc -O2\` into \`bench/out/\`), ${s.loadgenThreads} thread(s); the backends are the same program in echo and sink modes (${s.backendThreads} thread each), started once for the whole run: ${s.echoBackends} echo backends, ${s.sinkBackends} sink backends, and a redis-server for the real-client runs. The proxy, the backends and the load share the ${m.cores} cores, as the issue's reference harness did.
- **Alternation**: each figure is the **median of ${s.requestReps ?? s.reps}** runs for rr and churn (their p99 is a tail figure a single run moves) and of ${s.reps} for the others, alternating ${s.order}; every proxy, freshly started for a thread count, is given one unrecorded second of churn and one of rr first; the direct runs (no proxy, the physical limit) are interleaved with the first thread count, and so is, in rr and the base churn with one thread, **the floor**: \`bench/diag/epoll-proxy.c --half-close\`, a bare single-threaded C epoll proxy that keeps TCP's half-close as both proxies do (a side's EOF is passed on with \`shutdown\`, the pair ends at the second) and has nothing else — no engine, counters, limits, retries, health checks or logs: what any proxy making the same system calls gets on this machine, and so the most a ratio to HAProxy can be.
- **CPU** is the proxy process's utime + stime from \`/proc/PID/stat\` (all threads, including exited ones), read at the start and the end of the measured window; "per proxy CPU-second" divides the work done in the window by it.
- **Both proxies alike**: ${s.algorithm} on both (set explicitly), TCP health checks every 2 s (rise 2, fall 3), retries 2, connect timeout 2 s, idle timeout 30 min; fulcrum's worker count = HAProxy's \`nbthread\`. HAProxy runs without splicing (its default; \`option splice-auto\` is not set), with its default 16 KiB \`tune.bufsize\`, and without a log target; fulcrum's relay reads up to 64 KiB at a time into one buffer per worker and keeps only what the kernel did not take (on the JavaScript path: read buffers of 256 B growing to 64 KiB on streaming connections). Fulcrum runs with every data-plane feature on: admission and the backend pick in WebAssembly over shared memory, counters, service and backend limits (set to 1,000,000: present, never reached), queueing and retries; **\`logging.connections\` is off** for these runs (as HAProxy has no log target), but in the churn family's "connection log on" variant, where both log every connection. The churn family's variants that configure the proxies differently (no health checks, the log on) run on a pair of their own, started for them and given one unrecorded second of their load first. Configs: \`bench/out/fulcrum-w*.yaml\`, \`bench/out/haproxy-w*.cfg\`.
- **Correctness**: every rr/churn reply is compared byte for byte with its request (which carries its connection and sequence number); every bulk stream is a known pattern the sink checks, and the sink's byte count must equal what was sent. A run with errors or corrupted bytes is flagged ⚠ in the tables.

Scenarios: **rr** — ${s.rrConns} persistent connections, 64-byte request, echo, next (${s.rrDuration} s after ${s.warmup} s warm-up); **churn** — a new connection per 64-byte request, ${s.churnConns} at a time (${s.churnDuration} s, client sources rotated over ${s.sources} addresses); **bulk** — ${s.bulkConns} connections streaming one way for ${s.bulkDuration} s in 16 KiB writes; **idle** — ${s.idleConns} idle connections, each proven by a 1-byte echo, on a freshly started proxy (RSS before and after)${Number(s.idleConns) < 10000 ? `: ${s.idleConns} rather than 10,000 because every process here is capped at ${m.fdLimit} open files, a proxied connection takes two, and fulcrum keeps 5 % of its descriptors in reserve (it stops accepting at that mark)` : ''}; **redis** — \`redis-benchmark -t ping,set,get -c 50 -n ${s.redisN}\` and \`-P 16 -n ${s.redisNP}\` against redis-server through each proxy.

## Targets

Per proxy CPU-second against HAProxy with the same number of threads (from the issue):

${targetsTable(res)}
${floorLine(res)}
${res.skipped.length ? `Not measured in this run:\n\n${res.skipped.map((x) => `- ${x}`).join('\n')}\n` : ''}
## rr — request/response on persistent connections

${requestTable(res, 'rr')}

## churn — a new connection per request

The base variant (${s.sources} client addresses, ${s.churnConns} in flight, the client closing first, health checks on):

${requestTable(res, 'churn')}

### The churn family: one factor changed at a time

${s.churnVariants ? `Variants in this run: ${s.churnVariants}. ` : ''}Each row: medians over the runs (fulcrum and HAProxy alternating), connections per proxy CPU-second (user + system time from \`/proc\`), and the user and system time per connection. "Backend closes first": the echo backend closes after its 64-byte reply and the client reads to EOF. "Connection log on": fulcrum with \`logging.connections: true\` (its standard output appended to a file) and HAProxy with \`option tcplog\` sent over UDP to a syslog receiver the harness runs; lines lost are the connections the load generator completed minus the lines counted after the run (summed over the runs; HAProxy's UDP lines may be dropped by the receiver's socket buffer, and that is counted as lost).

${churnFamilyTable(res)}

## bulk — one-way streaming

${bulkTable(res)}

## idle — memory per open connection

${idleTable(res)}

## Real clients — redis-benchmark through each proxy

Without pipelining (\`-c 50 -n ${s.redisN}\`):

${redisTable(res, '')}

With \`-P 16\` (\`-c 50 -n ${s.redisNP}\`):

${redisTable(res, 'P16')}

## Profiles (fulcrum, \`node --cpu-prof\`)

Taken in separate runs (a profiler slows what it watches, so these runs are not in the tables above). Self time as share of the samples where the thread was busy.

${profileSection(res)}
## UDP — datagrams through fulcrum's relay and nginx 1.22 stream

${udpRuns.length > 0 ? udpTable(udpRuns, [...new Set(udpRuns.map((r) => r.workers))].sort((a, b) => a - b)) : '_No UDP runs in this result (`--scenarios` without udp, or a result from before them)._'}
${include(path.join(benchDir, 'udp.md'), '', false)}
${include(path.join(benchDir, 'analysis.md'), '', false)}

## Engine microbenchmarks

${include(path.join(outDir, 'engine.md'), '_bench/out/engine.md was not present when this file was written: run `npm run bench:engine`, then `npm run bench` (or `node bench/run.ts --report-only`) to include it._')}

${include(path.join(benchDir, 'selection.md'), '', false)}

## Failover

${include(path.join(outDir, 'failover.md'), '_bench/out/failover.md was not present when this file was written (the failover benchmark writes it), so this section is empty._')}

${include(path.join(benchDir, 'scaleout.md'), '', false)}
`;
}
