/**
 * UDP scenarios of `npm run bench` (bench/run.ts calls `runUdpBench`): fulcrum's UDP services (the
 * relay's batched path, and the same with batching off: FULCRUM_UDP_BATCH=1) against nginx 1.22's
 * `stream` module (Debian nginx-light + libnginx-mod-stream, `listen … udp reuseport`), the same
 * worker count, the same two udpgen echo backends, round robin on both, no log per flow.
 *
 *   udp-rr     FLOWS flows (sockets), each a 64-byte datagram, its echo, the next: datagrams per
 *              second and per proxy CPU-second (user + system, of every process of the proxy)
 *   udp-churn  a new socket (a new source port, a new flow) per request, 64 in flight; both ends
 *              the flow at its reply (fulcrum `udp.responses: 1`, nginx `proxy_responses 1`)
 *   udp-idle   a fresh proxy, RSS, N flows each proven by one echo, settle, RSS: bytes per flow
 *              (each flow holds a socket in the proxy: the open-files limit caps N)
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.ts';
import { jsonLines, OUT_DIR, spawnLoadgen, UDPGEN, withTimeout } from './loadgen.ts';
import { cpuTimes, rssBytes, sleep } from './procfs.ts';
import { NODE, REPO_DIR, spawnLogged, stopChild, waitServing } from './proxies.ts';
import { createSocket } from 'node:dgram';

export type UdpTargetName = 'fulcrum' | 'nginx';

/** Idle flows that fit under an open-files limit (a socket per flow in the proxy, and in udpgen), up to 100,000. */
export const udpIdleFlowsFor = (fdLimit: number): number => Math.min(100_000, Math.floor(fdLimit * 0.9) - 1000);

export interface UdpProxy {
  name: UdpTargetName;
  /** '', 'nobatch' (fulcrum with FULCRUM_UDP_BATCH=1) or 'js' (fulcrum's JavaScript path, node:dgram). */
  variant: string;
  workers: number;
  /** Every process of the proxy (nginx: master and workers), for CPU and RSS. */
  pids(): number[];
  listen: { rr: string; churn: string };
  stop(): Promise<void>;
}

/** nginx's version line (`nginx -v` writes it to stderr), or null. */
export function nginxVersion(): string | null {
  const r = spawnSync('nginx', ['-v'], { encoding: 'utf8' });
  return r.status === 0 ? (r.stderr || r.stdout).trim() : null;
}

const STREAM_MODULE = '/usr/lib/nginx/modules/ngx_stream_module.so';

/** Why nginx cannot run the UDP scenarios, or null. */
export function nginxMissing(): string | null {
  if (nginxVersion() === null) return 'nginx is not installed (apt-get install nginx-light libnginx-mod-stream)';
  try {
    readFileSync(STREAM_MODULE);
  } catch {
    return `${STREAM_MODULE} is missing (apt-get install libnginx-mod-stream)`;
  }
  return null;
}

/** One echo through `address`, from a fresh socket: the proxy and a backend answer. */
function udpEchoOnce(address: string, timeoutMs = 500): Promise<boolean> {
  const i = address.lastIndexOf(':');
  return new Promise((resolve) => {
    const s = createSocket('udp4');
    const done = (ok: boolean) => {
      clearTimeout(t);
      s.close();
      resolve(ok);
    };
    const t = setTimeout(() => done(false), timeoutMs);
    s.on('message', (m) => done(m.toString() === 'ping'));
    s.on('error', () => done(false));
    s.send('ping', Number(address.slice(i + 1)), address.slice(0, i));
  });
}

export interface UdpEcho {
  address: string;
  stop(): Promise<void>;
}

export async function startUdpEcho(host: string): Promise<UdpEcho> {
  const child = spawnLoadgen(['echo', '--listen', `${host}:0`], 'ignore', UDPGEN);
  const next = jsonLines(child);
  const ready = await withTimeout(next(), 5000, `udp echo on ${host}`, () => child.kill('SIGKILL'));
  return {
    address: `${host}:${ready.port}`,
    stop: async () => {
      child.kill('SIGTERM');
      await withTimeout(next(), 5000, 'udp echo stop', () => child.kill('SIGKILL')).catch(() => undefined);
    },
  };
}

async function ports(host: string): Promise<{ rr: number; churn: number; admin: number }> {
  const { freePort } = await import('./procfs.ts');
  return { rr: await freePort(host), churn: await freePort(host), admin: await freePort(host) };
}

/** fulcrum with the two UDP services; `batch` 1: FULCRUM_UDP_BATCH=1 (variant nobatch); `js`: FULCRUM_RELAY=off, node:dgram (variant js). */
export async function startUdpFulcrum(o: { workers: number; host: string; echo: string[]; batch?: number; js?: boolean }): Promise<UdpProxy> {
  const p = await ports(o.host);
  const service = (name: string, port: number, responses: number) => ({
    name, protocol: 'udp', listen: `${o.host}:${port}`, balance: 'roundrobin', max_connections: 1_000_000,
    timeouts: { idle: '60s' }, udp: { responses },
    backends: o.echo.map((address) => ({ address })),
  });
  const config = {
    workers: o.workers, shutdown_grace: '1s', admin: { listen: `${o.host}:${p.admin}` },
    logging: { level: 'warn', connections: false },
    services: [service('rr', p.rr, 0), service('churn', p.churn, 1)],
  };
  const text = stringify(config);
  parseConfig(text);
  mkdirSync(OUT_DIR, { recursive: true });
  const variant = o.js ? 'js' : o.batch === 1 ? 'nobatch' : '';
  const file = path.join(OUT_DIR, `fulcrum-udp${variant}-w${o.workers}.yaml`);
  writeFileSync(file, text);
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_OPTIONS: '' };
  if (o.batch !== undefined) env.FULCRUM_UDP_BATCH = String(o.batch);
  if (o.js) env.FULCRUM_RELAY = 'off';
  const { child, log } = spawnLogged(NODE, [path.join(REPO_DIR, 'src', 'cli.ts'), 'run', '--config', file], env, path.join(OUT_DIR, `fulcrum-udp${variant}-w${o.workers}.log`));
  const listen = { rr: `${o.host}:${p.rr}`, churn: `${o.host}:${p.churn}` };
  try {
    await waitServing('fulcrum', listen.rr, () => udpEchoOnce(listen.rr), child, log);
  } catch (err) {
    await stopChild(child, 1000);
    throw err;
  }
  return { name: 'fulcrum', variant, workers: o.workers, pids: () => [child.pid!], listen, stop: () => stopChild(child) };
}

/** nginx's stream proxy, as close to fulcrum's services as it goes: round robin, 60 s idle, responses 1 on churn. */
export async function startUdpNginx(o: { workers: number; host: string; echo: string[]; maxFlows: number }): Promise<UdpProxy> {
  const p = await ports(o.host);
  const dir = path.join(OUT_DIR, `nginx-udp-w${o.workers}`);
  mkdirSync(dir, { recursive: true });
  const conf = `load_module ${STREAM_MODULE};
daemon off;
worker_processes ${o.workers};
worker_rlimit_nofile ${o.maxFlows * 2 + 1000};
# a UDP session takes two connections (the client's, the upstream's)
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections ${o.maxFlows * 2 + 500}; }
stream {
  upstream echo {
${o.echo.map((a) => `    server ${a};`).join('\n')}
  }
  server { listen ${o.host}:${p.rr} udp reuseport; proxy_pass echo; proxy_timeout 60s; }
  server { listen ${o.host}:${p.churn} udp reuseport; proxy_pass echo; proxy_timeout 60s; proxy_responses 1; }
}
`;
  const file = path.join(dir, 'nginx.conf');
  writeFileSync(file, conf);
  const { child, log } = spawnLogged('nginx', ['-e', path.join(dir, 'error.log'), '-p', dir, '-c', file], process.env, path.join(dir, 'stdout.log'));
  const listen = { rr: `${o.host}:${p.rr}`, churn: `${o.host}:${p.churn}` };
  try {
    await waitServing('nginx', listen.rr, () => udpEchoOnce(listen.rr), child, () => `${log()}\n${safeRead(path.join(dir, 'error.log'))}`);
  } catch (err) {
    await stopChild(child, 1000);
    throw err;
  }
  const master = child.pid!;
  return { name: 'nginx', variant: '', workers: o.workers, pids: () => [master, ...childrenOf(master)], listen, stop: () => stopChild(child) };
}

function safeRead(file: string): string {
  try {
    return readFileSync(file, 'utf8').slice(-4000);
  } catch {
    return '';
  }
}

/** The pids whose parent is `pid` (nginx's workers). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(d));
    } catch { /* gone */ }
  }
  return out;
}

const cpuOf = (pids: number[]): number => pids.reduce((sum, p) => {
  try {
    const t = cpuTimes(p);
    return sum + t.user + t.sys;
  } catch {
    return sum;
  }
}, 0);

const rssOf = (pids: number[]): number => pids.reduce((sum, p) => {
  try {
    return sum + rssBytes(p);
  } catch {
    return sum;
  }
}, 0);

export interface UdpRun {
  scenario: 'udp-rr' | 'udp-churn' | 'udp-idle';
  variant: string;
  target: UdpTargetName;
  workers: number;
  rep: number;
  ok: boolean;
  errors: number;
  corrupt: number;
  cpuS: number | null;
  metrics: Record<string, number>;
}

/** A request run (rr or churn) against `p`, with the proxy's CPU time over the measured window. */
export async function udpRequestRun(p: UdpProxy, mode: 'rr' | 'churn', o: { flows: number; durationS: number; warmupS: number; source: string; rep: number }): Promise<UdpRun> {
  const target = mode === 'rr' ? p.listen.rr : p.listen.churn;
  const child = spawnLoadgen([mode, '--target', target, '--flows', String(o.flows), '--duration', String(o.durationS), '--warmup', String(o.warmupS),
    '--size', '64', '--source', o.source], 'ignore', UDPGEN);
  const next = jsonLines(child);
  let c0 = 0;
  let c1 = 0;
  const t0 = setTimeout(() => { c0 = cpuOf(p.pids()); }, o.warmupS * 1000);
  const t1 = setTimeout(() => { c1 = cpuOf(p.pids()); }, (o.warmupS + o.durationS) * 1000);
  const res = await withTimeout(next(), (o.warmupS + o.durationS + 20) * 1000, `udpgen ${mode}`, () => child.kill('SIGKILL'));
  clearTimeout(t0);
  clearTimeout(t1);
  if (c1 === 0) c1 = cpuOf(p.pids());
  const cpuS = c1 - c0;
  const count = Number(res.count);
  return {
    scenario: mode === 'rr' ? 'udp-rr' : 'udp-churn', variant: p.variant, target: p.name, workers: p.workers, rep: o.rep,
    ok: res.ok === true, errors: Number(res.errors), corrupt: Number(res.corrupt), cpuS,
    metrics: { per_s: Number(res.per_s), lost: Number(res.lost), cpu_s: cpuS, per_cpu_s: cpuS > 0 ? count / cpuS : NaN },
  };
}

/** Idle: RSS of a fresh proxy, `flows` flows opened (each proven by an echo), settle, RSS again. */
export async function udpIdleRun(p: UdpProxy, o: { flows: number; source: string; rep: number }): Promise<UdpRun> {
  await sleep(1000);
  const before = rssOf(p.pids());
  const child = spawnLoadgen(['idle', '--target', p.listen.rr, '--flows', String(o.flows), '--source', o.source], 'pipe', UDPGEN);
  const next = jsonLines(child);
  const est = await withTimeout(next(), 150_000, 'udpgen idle', () => child.kill('SIGKILL'));
  await sleep(2000);
  const after = rssOf(p.pids());
  child.stdin!.end();
  await new Promise<void>((resolve) => (child.exitCode !== null ? resolve() : child.once('exit', () => resolve())));
  const flows = Number(est.established);
  return {
    scenario: 'udp-idle', variant: p.variant, target: p.name, workers: p.workers, rep: o.rep,
    ok: est.ok === true, errors: Number(est.errors), corrupt: 0, cpuS: null,
    metrics: { flows, rss_before: before, rss_after: after, bytes_per_flow: flows > 0 ? (after - before) / flows : NaN, open_ms: Number(est.ms), lost: Number(est.lost) },
  };
}

/** The UDP table of BENCHMARKS.md: medians per target and scenario, and the ratios to nginx. */
export function udpTable(runs: readonly UdpRun[], workers: readonly number[]): string {
  const med = (xs: number[]) => {
    const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
    return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  };
  const pick = (scenario: string, target: string, variant: string, w: number, key: string) =>
    med(runs.filter((r) => r.scenario === scenario && r.target === target && r.variant === variant && r.workers === w).map((r) => r.metrics[key]));
  const fmt = (x: number, d = 0) => (Number.isFinite(x) ? x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d }) : '—');
  const rows: string[] = [
    '| workers | target | rr dgram/s | rr dgram per CPU-s | churn flows/s | churn flows per CPU-s | idle flows | bytes per idle flow |',
    '|---|---|---|---|---|---|---|---|',
  ];
  const targets: [string, string, string][] = [
    ['fulcrum', '', 'fulcrum (relay, batched)'], ['fulcrum', 'nobatch', 'fulcrum (relay, batch 1)'], ['fulcrum', 'js', 'fulcrum (JavaScript path, node:dgram)'],
    ['nginx', '', 'nginx 1.22 stream'],
  ];
  for (const w of workers) {
    for (const [t, v, label] of targets) {
      if (!runs.some((r) => r.target === t && r.variant === v && r.workers === w)) continue;
      rows.push(`| ${w} | ${label} | ${fmt(pick('udp-rr', t, v, w, 'per_s'))} | ${fmt(pick('udp-rr', t, v, w, 'per_cpu_s'))} | ${fmt(pick('udp-churn', t, v, w, 'per_s'))} | ${fmt(pick('udp-churn', t, v, w, 'per_cpu_s'))} | ${fmt(pick('udp-idle', t, v, w, 'flows'))} | ${fmt(pick('udp-idle', t, v, w, 'bytes_per_flow'))} |`);
    }
    const ratio = (scenario: string, key: string, v = '') => pick(scenario, 'fulcrum', v, w, key) / pick(scenario, 'nginx', '', w, key);
    rows.push('');
    rows.push(`${w} worker(s): fulcrum ÷ nginx per CPU-second — rr ${fmt(ratio('udp-rr', 'per_cpu_s'), 2)}× (target ≥ 1.2×), churn ${fmt(ratio('udp-churn', 'per_cpu_s'), 2)}× (target ≥ 1.0×); ` +
      `batching: batched ÷ batch 1 per CPU-second — rr ${fmt(pick('udp-rr', 'fulcrum', '', w, 'per_cpu_s') / pick('udp-rr', 'fulcrum', 'nobatch', w, 'per_cpu_s'), 2)}×, ` +
      `churn ${fmt(pick('udp-churn', 'fulcrum', '', w, 'per_cpu_s') / pick('udp-churn', 'fulcrum', 'nobatch', w, 'per_cpu_s'), 2)}×.`);
    rows.push('');
    rows.push('| workers | target | rr dgram/s | rr dgram per CPU-s | churn flows/s | churn flows per CPU-s | idle flows | bytes per idle flow |');
    rows.push('|---|---|---|---|---|---|---|---|');
  }
  rows.splice(rows.length - 3, 3);
  return rows.join('\n');
}

export interface UdpBenchOptions {
  workers: readonly number[];
  reps: number;
  durationS: number;
  warmupS: number;
  /** rr's flows (sockets), churn's in flight. */
  rrFlows: number;
  churnFlows: number;
  idleFlows: number;
  /** Backends and proxies listen here; clients send from `source`. */
  backendHost: string;
  proxyHost: string;
  source: string;
  withNginx: boolean;
  say(msg: string): void;
  record(run: UdpRun): void;
}

/**
 * The UDP scenarios, in one call: two echo backends; per worker count, idle with fresh proxies
 * per repetition, then the three targets up for rr and churn, alternating fulcrum (batched),
 * fulcrum (batch 1), nginx, repetition by repetition.
 */
export async function runUdpBench(o: UdpBenchOptions): Promise<void> {
  const echo = [await startUdpEcho(o.backendHost), await startUdpEcho(o.backendHost)];
  const addrs = echo.map((e) => e.address);
  const starters: (() => (w: number) => Promise<UdpProxy>)[] = [
    () => (w) => startUdpFulcrum({ workers: w, host: o.proxyHost, echo: addrs }),
    () => (w) => startUdpFulcrum({ workers: w, host: o.proxyHost, echo: addrs, batch: 1 }),
  ];
  if (o.withNginx) starters.push(() => (w) => startUdpNginx({ workers: w, host: o.proxyHost, echo: addrs, maxFlows: o.idleFlows + 1000 }));
  try {
    for (const w of o.workers) {
      o.say(`udp idle, ${w} worker(s): ${o.idleFlows} flows, fresh proxy per run`);
      for (let rep = 1; rep <= o.reps; rep++) {
        // The JavaScript path's memory per flow (node:dgram: a Node socket per flow), beside the relay's.
        const js = await startUdpFulcrum({ workers: w, host: o.proxyHost, echo: addrs, js: true });
        try {
          o.record(await udpIdleRun(js, { flows: o.idleFlows, source: o.source, rep }));
        } finally {
          await js.stop();
        }
        for (const [i, start] of starters.entries()) {
          if (i === 1) continue; // batching changes no memory per flow
          const p = await start()(w);
          try {
            o.record(await udpIdleRun(p, { flows: o.idleFlows, source: o.source, rep }));
          } finally {
            await p.stop();
          }
        }
      }
      const running: UdpProxy[] = [];
      try {
        for (const start of starters) running.push(await start()(w));
        for (const mode of ['rr', 'churn'] as const) {
          o.say(`udp ${mode}, ${w} worker(s)`);
          for (let rep = 1; rep <= o.reps; rep++) {
            for (const p of running) {
              o.record(await udpRequestRun(p, mode, { flows: mode === 'rr' ? o.rrFlows : o.churnFlows, durationS: o.durationS, warmupS: o.warmupS, source: o.source, rep }));
            }
          }
        }
      } finally {
        for (const p of running) await p.stop();
      }
    }
  } finally {
    for (const e of echo) await e.stop();
  }
}
