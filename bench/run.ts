/**
 * `npm run bench` — fulcrum against HAProxy (and no proxy at all), in one command, written to
 * BENCHMARKS.md. See bench/lib/report.ts for what the report says and bench/lib/proxies.ts for how
 * the two proxies are configured alike.
 *
 *   node bench/run.ts [--quick] [--scenarios rr,churn,bulk,idle,redis,udp] [--workers 1,2]
 *                     [--churn-variants base,1src,c500,srvclose,nohealth,logs]
 *                     [--proxies fulcrum,haproxy] [--reps 3] [--install] [--no-profile]
 *                     [--out BENCHMARKS.md] [--report-only]
 *
 * Order of work: build the load generator; start the backends once; then for each thread count:
 * idle (fresh proxies per repetition), then both proxies up for rr, churn (the variants that
 * change only the load or the backends), bulk and redis, runs alternating fulcrum/HAProxy (with
 * the direct run interleaved the first time); then, per churn variant that changes both proxies'
 * configuration (no health checks, the connection log on), a pair started for it; then the UDP
 * scenarios against nginx's stream module (bench/lib/udp.ts); then profiles.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { BENCH_DIR, buildLoadgen, holdIdle, killAllLoadgens, OUT_DIR, runClient, startBackend, type Backend, type LoadgenResult } from './lib/loadgen.ts';
import { CHURN_SOURCES, CHURN_VARIANTS, churnVariantName, type ChurnVariant } from './lib/churn.ts';
import { summarizeProfile } from './lib/profile.ts';
import { fileLogCounter, settledLines, syslogCounter, type LogCounter } from './lib/logcount.ts';
import { cpuTimes, fdLimits, freePort, rssBytes, sleep } from './lib/procfs.ts';
import {
  cpuProfiles, fulcrumMissing, haproxyVersion, killAllProxies, REPO_DIR, startEpollProxy, startFulcrum, startHaproxy, type Proxy, type ProxyName,
  type ProxyVariant, type Upstreams,
} from './lib/proxies.ts';
import { renderMarkdown, type Machine, type Results, type Run, type TargetName } from './lib/report.ts';
import { loadRelay } from '../src/proxy/relay.ts';
import { nginxMissing, nginxVersion, runUdpBench, udpIdleFlowsFor } from './lib/udp.ts';

const ALL_SCENARIOS = ['rr', 'churn', 'bulk', 'idle', 'redis', 'udp'] as const;
type Scenario = (typeof ALL_SCENARIOS)[number];

// Loopback addresses of this harness (127.6.0.0/16): backends, proxies, client sources.
const BACKEND_NET = '127.6.0';
const PROXY_HOST = '127.6.1.1';
const SOURCE_BASE = '127.6.2.1';
const SOURCE_COUNT = CHURN_SOURCES;
const SYSLOG_HOST = '127.6.1.2';


const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    scenarios: { type: 'string', default: ALL_SCENARIOS.join(',') },
    'churn-variants': { type: 'string', default: CHURN_VARIANTS.map(churnVariantName).join(',') },
    workers: { type: 'string', default: '1,2' },
    proxies: { type: 'string', default: 'fulcrum,haproxy' },
    reps: { type: 'string' },
    install: { type: 'boolean', default: false },
    'no-profile': { type: 'boolean', default: false },
    'loadgen-threads': { type: 'string', default: '1' },
    out: { type: 'string', default: 'BENCHMARKS.md' },
    'report-only': { type: 'boolean', default: false },
  },
  allowPositionals: false,
});

const quick = flags.quick!;
const scenarios = flags.scenarios!.split(',').map((s) => s.trim()).filter(Boolean) as Scenario[];
for (const s of scenarios) if (!ALL_SCENARIOS.includes(s)) usageError(`--scenarios: unknown scenario ${s} (known: ${ALL_SCENARIOS.join(', ')})`);
const churnNames = flags['churn-variants']!.split(',').map((s) => s.trim()).filter(Boolean);
for (const n of churnNames) if (!CHURN_VARIANTS.some((v) => churnVariantName(v) === n)) usageError(`--churn-variants: unknown variant ${n} (known: ${CHURN_VARIANTS.map(churnVariantName).join(', ')})`);
const churnVariants = CHURN_VARIANTS.filter((v) => churnNames.includes(churnVariantName(v)));
const workerCounts = flags.workers!.split(',').map(Number);
if (workerCounts.some((w) => !Number.isInteger(w) || w < 1 || w > 64)) usageError(`--workers: expected a list like 1,2, got ${flags.workers}`);
const wantProxies = flags.proxies!.split(',').map((s) => s.trim()) as ProxyName[];
const reps = flags.reps ? Number(flags.reps) : quick ? 1 : 3;
// rr and churn report a p99, a tail figure that one unlucky 5-second run on a loaded 2-core machine
// moves by ±30 %: five runs each (≈ 1.5 min more) unless --reps says otherwise.
const requestReps = flags.reps ? reps : quick ? 1 : 5;
const loadgenThreads = Number(flags['loadgen-threads']);
const outFile = path.resolve(REPO_DIR, flags.out!);
const resultsFile = path.join(OUT_DIR, 'results.json');

const fdLimit = fdLimits().hard;
const S = {
  reps,
  requestReps,
  warmup: quick ? 0.2 : 0.5,
  rrConns: 50,
  rrDuration: quick ? 1 : 5,
  churnConns: 50,
  churnDuration: quick ? 1 : 5,
  bulkConns: 4,
  bulkDuration: quick ? 1 : 10,
  // Each proxied connection costs the proxy two descriptors; keep a margin for everything else.
  // Two descriptors a proxied connection; fulcrum stops accepting at its reserve's mark (5 % of
  // the limit, and 2 × 64 per relay worker: src/proxy/descriptors.ts), so stay under that.
  idleConns: quick ? 1000 : Math.min(10_000, Math.floor((fdLimit * 0.95 - 2 * 2 * 64 - 400) / 2)),
  // UDP: a socket per flow in the proxy (and one per flow in the client): 100,000 where the
  // open-files limit allows, else what fits under it.
  udpIdleFlows: quick ? 2000 : udpIdleFlowsFor(fdLimit),
  udpRrFlows: 256,
  udpChurnFlows: 64,
  redisN: quick ? 10_000 : 50_000,
  redisNP: quick ? 100_000 : 500_000,
  echoBackends: 2,
  sinkBackends: 2,
  backendThreads: 1,
  loadgenThreads,
  sources: SOURCE_COUNT,
  churnVariants: churnVariants.map((v) => `${churnVariantName(v)} (${v.what})`).join('; '),
  algorithm: 'leastconn',
  order: 'fulcrum, HAProxy, fulcrum, HAProxy, …',
};

function usageError(msg: string): never {
  process.stderr.write(`bench: ${msg}\n`);
  process.exit(2);
}

const say = (msg: string) => process.stdout.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

// ── environment ──────────────────────────────────────────────────────────────

function tryVersion(cmd: string, args: string[]): string | null {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n')[0].trim();
  } catch {
    return null;
  }
}

function install(): void {
  if (process.getuid?.() !== 0) {
    say('--install needs root: run  sudo apt-get install -y haproxy redis-server redis-tools nginx-light libnginx-mod-stream  instead');
    return;
  }
  say('installing haproxy, redis-server, redis-tools and nginx (the UDP scenarios\' reference) with apt-get');
  execFileSync('apt-get', ['install', '-y', '--no-install-recommends', 'haproxy', 'redis-server', 'redis-tools', 'nginx-light', 'libnginx-mod-stream'],
    { stdio: 'inherit' });
}

function machine(): Machine {
  const cpus = os.cpus();
  return {
    cores: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    kernel: `${os.type()} ${os.release()}`,
    node: tryVersion(path.join(REPO_DIR, 'node_modules', '.bin', 'node'), ['--version']) ?? process.version,
    haproxy: haproxyVersion() ?? 'not installed',
    nginx: nginxVersion() ?? 'not installed',
    redis: tryVersion('redis-server', ['--version']) ?? 'not installed',
    memory: `${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`,
    fdLimit,
    dataPath: dataPath(),
  };
}

/** Which data path fulcrum's workers will run (they load the relay the same way). */
function dataPath(): string {
  const relay = loadRelay();
  return typeof relay === 'string' ? `JavaScript (Node's TCP handles): ${relay}` : 'native relay (build/out/relay.node)';
}

// ── measuring ────────────────────────────────────────────────────────────────

const runs: Run[] = [];

/** Reads the proxy's CPU time at the start and the end of the load generator's measured window. */
async function withCpuWindow<T>(pid: number | null, startS: number, lengthS: number | null, work: () => Promise<T>):
  Promise<{ res: T; cpuS: number | null; userS: number; sysS: number }> {
  if (pid === null) return { res: await work(), cpuS: null, userS: NaN, sysS: NaN };
  let c0: { user: number; sys: number } | null = startS === 0 ? cpuTimes(pid) : null;
  let c1: { user: number; sys: number } | null = null;
  const t0 = startS > 0 ? setTimeout(() => { c0 = cpuTimes(pid); }, startS * 1000) : null;
  const t1 = lengthS !== null ? setTimeout(() => { c1 = cpuTimes(pid); }, (startS + lengthS) * 1000) : null;
  try {
    const res = await work();
    c0 ??= cpuTimes(pid);
    c1 ??= cpuTimes(pid);
    const userS = c1.user - c0.user;
    const sysS = c1.sys - c0.sys;
    return { res, cpuS: userS + sysS, userS, sysS };
  } finally {
    if (t0) clearTimeout(t0);
    if (t1) clearTimeout(t1);
  }
}

interface Target {
  name: TargetName;
  workers: number;
  pid: number | null;
  echo: string[];
  sink: string[];
  redis?: string;
  echoClose?: string[];
}

function record(run: Run): void {
  runs.push(run);
  const m = Object.entries(run.metrics).map(([k, v]) => `${k}=${Number.isInteger(v) ? v : v.toFixed(2)}`).join(' ');
  say(`${run.scenario}${run.variant ? `/${run.variant}` : ''} ${run.target}${run.workers ? ` w${run.workers}` : ''} #${run.rep}: ${m}` +
    `${run.cpuS !== null ? ` cpu=${run.cpuS.toFixed(2)}s` : ''}${run.ok ? '' : ` ⚠ errors=${run.errors} corrupt=${run.corrupt}`}`);
  writeFileSync(resultsFile + '.partial', JSON.stringify(runs));
}

/** One churn run of a family variant through `t`; with `logs`, the connection log lines are counted against the connections. */
async function churnRun(v: ChurnVariant, t: Target, rep: number, logs?: LogCounter): Promise<void> {
  const duration = S.churnDuration;
  const targets = v.backendCloses ? t.echoClose : t.echo;
  if (!targets?.length) return;
  // The lines of what came before (the readiness probes, the last run) may still be on their way.
  const before = logs ? await settledLines(logs, Infinity) : 0;
  const { res, cpuS, userS, sysS } = await withCpuWindow(t.pid, S.warmup, duration, () => runClient({
    mode: 'churn', targets, conns: v.conns, durationS: duration, warmupS: S.warmup, threads: loadgenThreads,
    source: { base: SOURCE_BASE, count: v.sources }, readEof: v.backendCloses,
  }));
  const metrics = requestMetrics(res, cpuS, userS, sysS);
  metrics.total = res.total ?? NaN;
  metrics.connected = res.connected ?? NaN;
  if (logs) {
    // Every connection the load generator completed went through the proxy: each owes a line.
    const lines = (await settledLines(logs, before + (res.connected ?? res.total!))) - before;
    metrics.log_lines = lines;
    metrics.log_lost = Math.max(0, res.total! - lines);
  }
  record({ scenario: 'churn', variant: v.name, target: t.name, workers: t.workers, rep, ok: res.ok, errors: res.errors, corrupt: res.corrupt, cpuS, metrics });
}

function requestMetrics(res: LoadgenResult, cpuS: number | null, userS: number, sysS: number): Record<string, number> {
  const metrics: Record<string, number> = {
    per_s: res.per_s!, p50_us: res.p50_us!, p90_us: res.p90_us ?? NaN, p99_us: res.p99_us!, p999_us: res.p999_us!, loadgen_cpu_s: res.cpu_s ?? NaN,
  };
  if (cpuS !== null) {
    metrics.cpu_s = cpuS;
    metrics.per_cpu_s = cpuS > 0 ? res.count! / cpuS : NaN;
    // Where a request's (a connection's) CPU goes: the proxy's own code, or the kernel.
    metrics.user_us = (userS * 1e6) / res.count!;
    metrics.sys_us = (sysS * 1e6) / res.count!;
  }
  return metrics;
}

async function rrRun(t: Target, rep: number): Promise<void> {
  const duration = S.rrDuration;
  const { res, cpuS, userS, sysS } = await withCpuWindow(t.pid, S.warmup, duration, () => runClient({
    mode: 'rr', targets: t.echo, conns: S.rrConns, durationS: duration, warmupS: S.warmup, threads: loadgenThreads,
  }));
  const metrics = requestMetrics(res, cpuS, userS, sysS);
  record({ scenario: 'rr', variant: '', target: t.name, workers: t.workers, rep, ok: res.ok, errors: res.errors, corrupt: res.corrupt, cpuS, metrics });
}

async function bulkRun(t: Target, rep: number): Promise<void> {
  const { res, cpuS, userS } = await withCpuWindow(t.pid, 0, null, () =>
    runClient({ mode: 'bulk', targets: t.sink, conns: S.bulkConns, durationS: S.bulkDuration, threads: loadgenThreads }));
  const r = res as LoadgenResult;
  const metrics: Record<string, number> = { gbit_s: r.gbit_s!, bytes: r.received!, loadgen_cpu_s: r.cpu_s ?? NaN };
  if (cpuS !== null) {
    metrics.cpu_s = cpuS;
    metrics.gbit_per_cpu_s = cpuS > 0 ? (r.received! * 8) / 1e9 / cpuS : NaN;
    metrics.user_share = cpuS > 0 ? userS / cpuS : NaN;
  }
  record({ scenario: 'bulk', variant: '', target: t.name, workers: t.workers, rep, ok: r.ok, errors: r.errors, corrupt: r.corrupt + (r.reports_missing ?? 0), cpuS, metrics });
}

/** redis-benchmark's CSV: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms". */
function runRedisBenchmark(address: string, n: number, pipeline: number): Promise<{ rows: Record<string, number[]>; ok: boolean; err: string }> {
  const i = address.lastIndexOf(':');
  const args = ['-h', address.slice(0, i), '-p', address.slice(i + 1), '-t', 'ping,set,get', '-c', '50', '-n', String(n), '--csv'];
  if (pipeline > 1) args.push('-P', String(pipeline));
  return new Promise((resolve) => {
    const child = spawn('redis-benchmark', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      const rows: Record<string, number[]> = {};
      for (const line of out.split('\n')) {
        const cells = line.split(',').map((c) => c.replace(/"/g, ''));
        if (cells.length >= 7 && cells[0] !== 'test') rows[cells[0]] = cells.slice(1).map(Number);
      }
      const ok = code === 0 && Object.keys(rows).length === 4 && !/error/i.test(err + out.replace(/^"test".*$/m, ''));
      resolve({ rows, ok, err: err.trim() });
    });
  });
}

async function redisRun(t: Target, rep: number, variant: '' | 'P16'): Promise<void> {
  if (!t.redis) return;
  const n = variant ? S.redisNP : S.redisN;
  const { res, cpuS } = await withCpuWindow(t.pid, 0, null, () => runRedisBenchmark(t.redis!, n, variant ? 16 : 1));
  const metrics: Record<string, number> = {};
  let total = 0;
  for (const [test, cells] of Object.entries(res.rows)) {
    metrics[test] = cells[0];
    if (test === 'GET') metrics.GET_p99_ms = cells[5];
    total += n;
  }
  if (cpuS !== null) {
    metrics.cpu_s = cpuS;
    metrics.per_cpu_s = cpuS > 0 ? total / cpuS : NaN;
  }
  if (!res.ok) say(`redis-benchmark through ${t.name}: ${res.err || 'incomplete output'}`);
  record({ scenario: 'redis', variant, target: t.name, workers: t.workers, rep, ok: res.ok, errors: res.ok ? 0 : 1, corrupt: 0, cpuS, metrics });
}

/** Idle: a fresh proxy, RSS, open S.idleConns connections (each proven by an echo), settle, RSS, release. */
async function idleRun(start: () => Promise<Proxy>, rep: number): Promise<void> {
  const proxy = await start();
  try {
    await sleep(1000);
    const before = rssBytes(proxy.pid);
    const hold = await holdIdle(proxy.listen.echo, S.idleConns, 120);
    await sleep(1000);
    const after = rssBytes(proxy.pid);
    const done = await hold.release();
    const est = hold.established;
    const ok = est.ok === true && done.ok === true;
    record({
      scenario: 'idle', variant: '', target: proxy.name, workers: proxy.workers, rep, ok,
      errors: Number(est.errors) + Number(done.errors ?? 0), corrupt: Number(est.corrupt ?? 0), cpuS: null,
      metrics: { conns: Number(est.established), rss_before: before, rss_after: after, bytes_per_conn: (after - before) / S.idleConns, open_ms: Number(est.ms) },
    });
  } finally {
    await proxy.stop();
  }
}

/** Starts both proxies with the variant's configuration, runs the variant alternating, stops them. */
async function variantPair(v: ChurnVariant, w: number, proxies: ProxyName[],
  starters: Record<ProxyName, (w: number, prof?: string, variant?: ProxyVariant) => Promise<Proxy>>, asTarget: (p: Proxy) => Target): Promise<void> {
  const running: { t: Target; stop: () => Promise<void>; logs?: LogCounter }[] = [];
  try {
    for (const p of proxies) {
      let variant = v.proxy!;
      let logs: LogCounter | undefined;
      if (variant.connLog) {
        // fulcrum's lines go to a file, HAProxy's to a receiver here; each proxy is given both names.
        const file = path.join(OUT_DIR, `fulcrum-w${w}-connections.log`);
        if (p === 'fulcrum') writeFileSync(file, '');
        const syslog = p === 'haproxy' ? await syslogCounter('echo_in', SYSLOG_HOST) : null;
        variant = { ...variant, connLog: { file, syslog: syslog?.address ?? `${SYSLOG_HOST}:9` } };
        logs = syslog ?? fileLogCounter(file);
      }
      const proxy = await starters[p](w, undefined, variant);
      running.push({ t: asTarget(proxy), stop: () => proxy.stop(), logs });
    }
    // A fresh pair: one unrecorded second of the variant's load each first, as the shared pair has
    // had rr and the other variants before it (JIT-compiled code, warm caches and pools).
    for (const r of running) {
      await runClient({ mode: 'churn', targets: v.backendCloses ? r.t.echoClose! : r.t.echo, conns: v.conns, durationS: 1, warmupS: 0,
        source: { base: SOURCE_BASE, count: v.sources }, readEof: v.backendCloses });
    }
    for (let rep = 1; rep <= requestReps; rep++) for (const r of running) await churnRun(v, r.t, rep, r.logs);
  } finally {
    for (const r of running) {
      await r.stop();
      r.logs?.close();
    }
  }
}

// ── main ─────────────────────────────────────────────────────────────────────

async function main(): Promise<void> {
  mkdirSync(OUT_DIR, { recursive: true });
  const command = `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`;
  if (flags['report-only']) {
    const res = JSON.parse(readFileSync(resultsFile, 'utf8')) as Results;
    writeFileSync(outFile, renderMarkdown(res, BENCH_DIR));
    say(`re-rendered ${path.relative(REPO_DIR, outFile)} from ${path.relative(REPO_DIR, resultsFile)}`);
    return;
  }

  if (flags.install && (!haproxyVersion() || !tryVersion('redis-server', ['--version']) || nginxMissing() !== null)) install();
  const skipped: string[] = [];
  const proxies: ProxyName[] = [];
  if (wantProxies.includes('haproxy')) {
    if (haproxyVersion()) proxies.push('haproxy');
    else {
      const how = 'HAProxy is not installed: apt-get install haproxy (or run `npm run bench -- --install` as root)';
      say(how);
      skipped.push(how);
    }
  }
  if (wantProxies.includes('fulcrum')) {
    const why = fulcrumMissing();
    if (why === null) proxies.unshift('fulcrum');
    else {
      say(`fulcrum cannot run: ${why}`);
      skipped.push(`fulcrum: ${why}`);
    }
  }
  const redisOk = tryVersion('redis-server', ['--version']) !== null && tryVersion('redis-benchmark', ['--version']) !== null;
  if (scenarios.includes('redis') && !redisOk) skipped.push('redis: redis-server or redis-benchmark is not installed (apt-get install redis-server redis-tools, or --install as root)');

  say(`building the load generator`);
  buildLoadgen();

  // ── backends, once ──
  const backends: Backend[] = [];
  let redisPid: number | null = null;
  const cleanup = async () => {
    killAllProxies();
    for (const b of backends) await b.stop();
    killAllLoadgens();
    if (redisPid) try { process.kill(redisPid, 'SIGTERM'); } catch { /* gone */ }
  };
  process.once('SIGINT', () => { void cleanup().then(() => process.exit(130)); });
  process.once('SIGTERM', () => { void cleanup().then(() => process.exit(143)); });

  const profiles: Results['profiles'] = [];
  try {
    for (let i = 0; i < S.echoBackends; i++) backends.push(await startBackend('echo', `${BACKEND_NET}.${1 + i}:0`, S.backendThreads));
    for (let i = 0; i < S.sinkBackends; i++) backends.push(await startBackend('sink', `${BACKEND_NET}.${11 + i}:0`, S.backendThreads));
    // The churn variant where the backend closes first: echo backends that close after the 64-byte reply.
    const echoClose: string[] = [];
    if (scenarios.includes('churn') && churnVariants.some((v) => v.backendCloses)) {
      for (let i = 0; i < S.echoBackends; i++) {
        const b = await startBackend('echo', `${BACKEND_NET}.${31 + i}:0`, S.backendThreads, 64);
        backends.push(b);
        echoClose.push(b.address);
      }
    }
    let redisAddr: string | undefined;
    if (scenarios.includes('redis') && redisOk) {
      const port = await freePort(`${BACKEND_NET}.21`);
      const child = spawn('redis-server', ['--bind', `${BACKEND_NET}.21`, '--port', String(port), '--save', '', '--appendonly', 'no',
        '--protected-mode', 'no', '--daemonize', 'no', '--maxclients', '10000', '--loglevel', 'warning'], { stdio: 'ignore' });
      redisPid = child.pid!;
      redisAddr = `${BACKEND_NET}.21:${port}`;
      for (let i = 0; i < 50 && tryVersion('redis-cli', ['-h', `${BACKEND_NET}.21`, '-p', String(port), 'ping']) !== 'PONG'; i++) await sleep(100);
    }
    const upstreams: Upstreams = {
      echo: backends.filter((b) => b.mode === 'echo' && !echoClose.includes(b.address)).map((b) => b.address),
      sink: backends.filter((b) => b.mode === 'sink').map((b) => b.address),
      redis: redisAddr,
      echoClose: echoClose.length ? echoClose : undefined,
    };
    say(`backends: echo ${upstreams.echo.join(' ')} · sink ${upstreams.sink.join(' ')}${redisAddr ? ` · redis ${redisAddr}` : ''}` +
      `${echoClose.length ? ` · echo closing first ${echoClose.join(' ')}` : ''}`);
    const direct: Target = { name: 'direct', workers: 0, pid: null, echo: upstreams.echo, sink: upstreams.sink, redis: redisAddr };
    const starters: Record<ProxyName, (w: number, prof?: string, variant?: ProxyVariant) => Promise<Proxy>> = {
      fulcrum: (w, prof, variant) => startFulcrum({ workers: w, host: PROXY_HOST, upstreams, cpuProfDir: prof, ...variant }),
      haproxy: (w, _prof, variant) => startHaproxy({ workers: w, host: PROXY_HOST, upstreams, maxconn: S.idleConns + 50, ...variant }),
    };
    const asTarget = (p: Proxy): Target => ({
      name: p.name, workers: p.workers, pid: p.pid, echo: [p.listen.echo], sink: [p.listen.sink], redis: p.listen.redis,
      echoClose: p.listen.echoClose ? [p.listen.echoClose] : undefined,
    });

    for (const [wi, w] of workerCounts.entries()) {
      if (scenarios.includes('idle') && proxies.length) {
        say(`idle, ${w} thread(s): ${S.idleConns} connections, fresh proxy per run`);
        for (let rep = 1; rep <= reps; rep++) for (const p of proxies) await idleRun(() => starters[p](w), rep);
      }
      const running: Proxy[] = [];
      // The floor, with one thread: a bare C epoll proxy with TCP's half-close kept as both proxies
      // keep it (bench/diag/epoll-proxy.c --half-close) — no engine, counters, limits, health checks
      // or logs. What a proxy with the same system calls and no features gets on this machine; in
      // rr and the base churn only (it neither buffers nor closes first).
      let bare: Target | null = null;
      const withBare = (list: Target[]) => (bare ? [...list, bare] : list);
      try {
        for (const p of proxies) running.push(await starters[p](w));
        if (w === 1 && proxies.includes('haproxy') && (scenarios.includes('rr') || scenarios.includes('churn'))) {
          const b = await startEpollProxy({ host: PROXY_HOST, upstreams, yieldPoint: false, options: ['--half-close'] });
          running.push(b as unknown as Proxy);
          bare = { name: 'bare', workers: 1, pid: b.pid, echo: [b.listen.echo], sink: [] };
        }
        const targets = running.filter((p) => p.name === 'fulcrum' || p.name === 'haproxy').map(asTarget);
        const order = wi === 0 ? [direct, ...targets] : targets;
        // Fresh processes: one unrecorded second of churn and one of rr each first (page faults of
        // their pools and buffers, JIT-compiled code), as the variant pairs get — rr comes first
        // and would otherwise measure a proxy still settling in.
        if (!quick) {
          for (const t of withBare(targets)) {
            await runClient({ mode: 'churn', targets: t.echo, conns: 50, durationS: 1, warmupS: 0, source: { base: SOURCE_BASE, count: SOURCE_COUNT } });
            await runClient({ mode: 'rr', targets: t.echo, conns: S.rrConns, durationS: 1, warmupS: 0 });
          }
        }
        for (const scenario of scenarios) {
          if (scenario === 'idle' || scenario === 'udp') continue;
          if (scenario === 'redis' && !redisAddr) continue;
          say(`${scenario}, ${w} thread(s)`);
          if (scenario === 'churn') {
            // The variants on these proxies; the direct run with the base only (its table's "vs direct").
            for (const v of churnVariants.filter((x) => x.proxy === null)) {
              if (v.name) say(`churn/${v.name} (${v.what}), ${w} thread(s)`);
              for (let rep = 1; rep <= requestReps; rep++) for (const t of v.name ? targets : withBare(order)) await churnRun(v, t, rep);
            }
            continue;
          }
          const scenarioReps = scenario === 'rr' ? requestReps : reps;
          for (let rep = 1; rep <= scenarioReps; rep++) {
            for (const t of scenario === 'rr' ? withBare(order) : order) {
              if (scenario === 'rr') await rrRun(t, rep);
              else if (scenario === 'bulk') await bulkRun(t, rep);
              else if (scenario === 'redis') {
                await redisRun(t, rep, '');
                await redisRun(t, rep, 'P16');
              }
            }
          }
        }
      } finally {
        for (const p of running) await p.stop();
      }
      // The churn variants that configure both proxies differently: a pair each, alternating.
      if (scenarios.includes('churn')) {
        for (const v of churnVariants.filter((x) => x.proxy !== null)) {
          say(`churn/${v.name} (${v.what}), ${w} thread(s): a pair of its own`);
          await variantPair(v, w, proxies, starters, asTarget);
        }
      }
    }

    // ── UDP: fulcrum's relay (batched, and batch 1) against nginx stream, the same workers ──
    if (scenarios.includes('udp') && proxies.includes('fulcrum')) {
      const why = nginxMissing();
      if (why !== null) skipped.push(`udp against nginx: ${why}`);
      await runUdpBench({
        workers: workerCounts, reps: requestReps, durationS: S.rrDuration, warmupS: S.warmup,
        rrFlows: S.udpRrFlows, churnFlows: S.udpChurnFlows, idleFlows: S.udpIdleFlows,
        backendHost: `${BACKEND_NET}.31`, proxyHost: '127.6.1.2', source: '127.6.2.100', withNginx: why === null, say,
        record: (r) => record(r),
      });
    }

    // ── profiles: fulcrum under rr, churn and bulk, one thread count, in runs of their own ──
    if (!quick && !flags['no-profile'] && proxies.includes('fulcrum')) {
      for (const scenario of ['rr', 'churn', 'bulk'] as const) {
        if (!scenarios.includes(scenario)) continue;
        const w = workerCounts[0];
        const dir = path.join(OUT_DIR, 'profiles', `${scenario}-w${w}`);
        rmSync(dir, { recursive: true, force: true });
        say(`profiling fulcrum under ${scenario}, ${w} worker(s) → ${path.relative(REPO_DIR, dir)}`);
        const p = await starters.fulcrum(w, dir);
        try {
          if (scenario === 'bulk') await runClient({ mode: 'bulk', targets: [p.listen.sink], conns: S.bulkConns, durationS: S.rrDuration });
          else await runClient({ mode: scenario, targets: [p.listen.echo], conns: 50, durationS: S.rrDuration, warmupS: S.warmup,
            source: scenario === 'churn' ? { base: SOURCE_BASE, count: SOURCE_COUNT } : undefined });
        } finally {
          await p.stop();
        }
        const files = cpuProfiles(dir);
        if (files.length) profiles.push({ scenario, workers: w, summaries: files.map((f) => summarizeProfile(f, REPO_DIR)) });
        else say(`no .cpuprofile was written in ${dir}`);
      }
    }
  } finally {
    await cleanup();
  }

  const results: Results = {
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    command,
    quick,
    machine: machine(),
    settings: S,
    runs,
    skipped,
    profiles,
  };
  writeFileSync(resultsFile, JSON.stringify(results, null, 1));
  writeFileSync(outFile, renderMarkdown(results, BENCH_DIR));
  say(`wrote ${path.relative(REPO_DIR, outFile)} (raw: ${path.relative(REPO_DIR, resultsFile)})`);
  const flagged = runs.filter((r) => !r.ok);
  if (flagged.length) say(`⚠ ${flagged.length} run(s) had errors or corrupted bytes: see the tables`);
}

main().catch((err) => {
  process.stderr.write(`bench: ${(err as Error).stack ?? err}\n`);
  killAllProxies();
  killAllLoadgens();
  process.exit(1);
});
