/**
 * `node bench/diag.ts` — the small A/B measurements BENCHMARKS.md's analysis quotes, next to the
 * full comparison (bench/run.ts): one proxy against HAProxy, alternating, one thread each, the
 * proxy's user and system time read from /proc around every run.
 *
 *   node bench/diag.ts [--scenario rr|churn|bulk] [--against fulcrum|minimal|epoll|epoll-yield] [--runs 3]
 *                      [--seconds 3] [--conns 50] [--haproxy-bufsize 65536] [--syscalls] [--sched]
 *
 * --against minimal   bench/diag/minimal-proxy.ts (the floor of Node's handles) instead of fulcrum
 * --against epoll     bench/diag/epoll-proxy.c, a minimal C epoll proxy (rr and churn only);
 *                     epoll-yield: the same with a CPU-clock read before each epoll_wait, the
 *                     scheduler's yield point relay.c yield_point() explains
 * --conns             concurrent connections (default: 50, bulk 4; 1 shows one request's way)
 * --perf              also samples each proxy's CPU during each run (perf record -e cpu-clock, 2 kHz,
 *                     the kernel's and user space's symbols; fulcrum runs with --perf-basic-prof,
 *                     so JavaScript functions are named) and prints its 25 hottest symbols
 * --epoll-options     with --against epoll: half-close,smart-connect (see bench/diag/epoll-proxy.c)
 * --relay-b PATH     also runs a second fulcrum on another build of the relay (FULCRUM_RELAY=PATH),
 *                     in the same rotation: an A/B of a relay change within the same minutes
 * --workers N         fulcrum's workers and HAProxy's nbthread (default 1; minimal and epoll have one)
 * --logs              the connection log on for both, as bench/run.ts's `logs` churn variant: fulcrum
 *                     `logging.connections` with its standard output appended to a file, HAProxy
 *                     `option tcplog` over UDP to a receiver here; each run's lines are counted
 *                     against its connections (lost lines are printed)
 * --warmup S          first S seconds of the load through each proxy, unrecorded (default 0: the
 *                     first run is then a cold one, JIT compilation included)
 * --srvclose          churn with the backend closing first (echo --close-after 64, the client reading
 *                     to EOF): the churn family's `srvclose` variant
 * --haproxy-bufsize   HAProxy's tune.bufsize (its default is 16 KiB; fulcrum's buffers grow to 64)
 * --syscalls          also counts each proxy's system calls per request/connection (perf stat on
 *                     the syscall tracepoints; needs root and perf)
 * --sched             also records the scheduler during each run (perf sched record, then perf
 *                     sched timehist) and prints, for every busy thread on the machine (the proxy's,
 *                     the backends', the load generator's): times switched out, time asleep, and
 *                     the scheduling delay (woken → running) p50/p99/max; needs root and perf
 *
 * Prints one line per run and the medians. Backends and proxies use 127.6.5.0/24 (bench/run.ts
 * uses 127.6.0–2).
 */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { buildLoadgen, killAllLoadgens, OUT_DIR, runClient, startBackend } from './lib/loadgen.ts';
import { fileLogCounter, settledLines, syslogCounter, type LogCounter } from './lib/logcount.ts';
import { cpuTimes, median } from './lib/procfs.ts';
import { haproxyVersion, killAllProxies, startEpollProxy, startFulcrum, startHaproxy, startMinimalProxy, type Upstreams } from './lib/proxies.ts';

const { values: flags } = parseArgs({
  options: {
    scenario: { type: 'string', default: 'rr' },
    against: { type: 'string', default: 'fulcrum' },
    runs: { type: 'string', default: '3' },
    seconds: { type: 'string', default: '3' },
    conns: { type: 'string' },
    'haproxy-bufsize': { type: 'string' },
    syscalls: { type: 'boolean', default: false },
    sched: { type: 'boolean', default: false },
    srvclose: { type: 'boolean', default: false },
    logs: { type: 'boolean', default: false },
    warmup: { type: 'string', default: '0' },
    perf: { type: 'boolean', default: false },
    workers: { type: 'string', default: '1' },
    'epoll-options': { type: 'string', default: '' },
    'relay-b': { type: 'string' },
  },
});
const scenario = flags.scenario as 'rr' | 'churn' | 'bulk';
if (!['rr', 'churn', 'bulk'].includes(scenario)) throw new Error(`--scenario: rr, churn or bulk, got ${flags.scenario}`);
if (!['fulcrum', 'minimal', 'epoll', 'epoll-yield'].includes(flags.against!)) throw new Error(`--against: fulcrum, minimal, epoll or epoll-yield, got ${flags.against}`);
if (flags.against!.startsWith('epoll') && scenario === 'bulk') throw new Error('--against epoll: rr or churn (the minimal C proxy does not buffer)');
if (!haproxyVersion()) throw new Error('haproxy is not installed (apt-get install haproxy)');
const runs = Number(flags.runs);
const seconds = Number(flags.seconds);
const bufsize = flags['haproxy-bufsize'] ? Number(flags['haproxy-bufsize']) : undefined;
const srvclose = flags.srvclose!;
if (srvclose && scenario !== 'churn') throw new Error('--srvclose: churn only');
if (flags.logs && flags.against !== 'fulcrum') throw new Error('--logs: against fulcrum only (the other proxies do not log)');

const NET = '127.6.5';
const SYSCALLS = ['accept4', 'socket', 'connect', 'getsockopt', 'setsockopt', 'getsockname', 'fcntl', 'epoll_ctl', 'epoll_wait', 'epoll_pwait',
  'io_uring_enter', 'read', 'write', 'recvfrom', 'sendto', 'shutdown', 'close', 'poll', 'futex', 'clock_gettime'];

/** perf stat over the run's window: counts per syscall, or null without --syscalls. */
function countSyscalls(pid: number, seconds: number): Promise<Record<string, number>> | null {
  if (!flags.syscalls) return null;
  const out = path.join(OUT_DIR, `diag-syscalls-${pid}.csv`);
  const events = SYSCALLS.map((s) => `syscalls:sys_enter_${s}`).join(',');
  const child = spawn('perf', ['stat', '-x', ',', '-e', events, '-p', String(pid), '-o', out, '--', 'sleep', String(seconds)], { stdio: 'ignore' });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', () => {
      const counts: Record<string, number> = {};
      for (const line of readFileSync(out, 'utf8').split('\n')) {
        const [value, , event] = line.split(',');
        if (event?.startsWith('syscalls:sys_enter_') && Number(value) > 0) counts[event.slice(19)] = Number(value);
      }
      rmSync(out, { force: true });
      resolve(counts);
    });
  });
}

/** perf record over the run's window: the proxy's 25 hottest symbols (share of its samples), or null without --perf. */
function sampleSymbols(pid: number, seconds: number): Promise<string[]> | null {
  if (!flags.perf) return null;
  const out = path.join(OUT_DIR, `diag-perf-${pid}.data`);
  const child = spawn('perf', ['record', '-q', '-e', 'cpu-clock', '-F', '2000', '-p', String(pid), '-o', out, '--', 'sleep', String(seconds)], { stdio: 'ignore' });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', () => {
      const report = execFileSync('perf', ['report', '-i', out, '--stdio', '--no-children', '--sort', 'sym', '--percent-limit', '0.5'], { encoding: 'utf8', maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'ignore'] });
      rmSync(out, { force: true });
      resolve(report.split('\n').filter((l) => /^\s+\d/.test(l)).slice(0, 25).map((l) => l.trim().replace(/\s+/g, ' ')));
    });
  });
}

/**
 * perf sched over the run's window: per thread with 100+ switches, how often it was switched out,
 * how long it slept and how long it waited for a core once woken. Null without --sched.
 */
function recordSched(seconds: number): Promise<string[]> | null {
  if (!flags.sched) return null;
  const data = path.join(OUT_DIR, `diag-sched-${process.pid}.data`);
  const child = spawn('perf', ['sched', 'record', '-o', data, '--', 'sleep', String(seconds)], { stdio: 'ignore' });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', () => {
      const text = execFileSync('perf', ['sched', 'timehist', '-i', data], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 256 << 20 });
      rmSync(data, { force: true });
      // Lines: time, [cpu], task name, wait time, sch delay, run time (ms); three header lines.
      const perTask = new Map<string, { waits: number; runs: number; delays: number[] }>();
      for (const line of text.split('\n').slice(3)) {
        const f = line.trim().split(/\s+/);
        if (f.length < 6) continue;
        const [wait, delay, run] = [Number(f[f.length - 3]), Number(f[f.length - 2]), Number(f[f.length - 1])];
        const task = f.slice(2, f.length - 3).join(' ');
        if (!Number.isFinite(wait) || !Number.isFinite(delay) || task.startsWith('<idle>')) continue;
        const t = perTask.get(task) ?? { waits: 0, runs: 0, delays: [] };
        t.waits += wait;
        t.runs += Number.isFinite(run) ? run : 0;
        t.delays.push(delay);
        perTask.set(task, t);
      }
      const q = (a: number[], p: number) => a[Math.min(a.length - 1, Math.floor(p * a.length))];
      resolve([...perTask].filter(([, t]) => t.delays.length >= 100).sort((a, b) => b[1].delays.length - a[1].delays.length).map(([task, t]) => {
        const d = t.delays.sort((x, y) => x - y);
        const sum = (a: number[]) => a.reduce((x, y) => x + y, 0);
        const long = d.filter((x) => x >= 1);
        return `${task}: switched out ${d.length}, ran ${t.runs.toFixed(0)} ms, asleep ${t.waits.toFixed(0)} ms, waited for a core ${sum(d).toFixed(0)} ms (${long.length} waits ≥ 1 ms: ${sum(long).toFixed(0)} ms), scheduling delay p50 ${q(d, 0.5).toFixed(3)} p99 ${q(d, 0.99).toFixed(3)} max ${d[d.length - 1].toFixed(3)} ms`;
      }));
    });
  });
}

async function main(): Promise<void> {
  buildLoadgen();
  const backends = await Promise.all([
    startBackend('echo', `${NET}.1:0`, 1, srvclose ? 64 : 0), startBackend('echo', `${NET}.2:0`, 1, srvclose ? 64 : 0),
    startBackend('sink', `${NET}.11:0`), startBackend('sink', `${NET}.12:0`),
  ]);
  const upstreams: Upstreams = { echo: [backends[0].address, backends[1].address], sink: [backends[2].address, backends[3].address] };
  const host = `${NET}.100`;
  // --logs: fulcrum's lines to a file, HAProxy's to a receiver here (bench/run.ts variantPair).
  const logFile = path.join(OUT_DIR, 'diag-fulcrum-connections.log');
  if (flags.logs) writeFileSync(logFile, '');
  const syslog = flags.logs ? await syslogCounter('echo_in', `${NET}.102`) : null;
  const connLog = syslog ? { file: logFile, syslog: syslog.address } : undefined;
  const subject = flags.against === 'minimal' ? await startMinimalProxy({ host, upstreams })
    : flags.against!.startsWith('epoll') ? await startEpollProxy({ host, upstreams, yieldPoint: flags.against === 'epoll-yield', options: flags['epoll-options']!.split(',').filter(Boolean).map((o) => `--${o}`) })
    : await startFulcrum({ workers: Number(flags.workers), host, upstreams, nodeArgs: flags.perf ? ['--perf-basic-prof'] : undefined, connLog });
  const haproxy = await startHaproxy({ workers: Number(flags.workers), host: `${NET}.101`, upstreams, maxconn: 9000, bufsize, connLog });
  const proxies: { name: string; pid: number; listen: { echo: string; sink: string }; stop: () => Promise<void> }[] = [subject, haproxy];
  const logs: Record<string, LogCounter | undefined> = { [subject.name]: syslog ? fileLogCounter(logFile) : undefined, haproxy: syslog ?? undefined };
  if (flags['relay-b']) {
    if (flags.logs) throw new Error('--relay-b: without --logs (one log file per run)');
    const b = await startFulcrum({ workers: Number(flags.workers), host: `${NET}.103`, upstreams, env: { FULCRUM_RELAY: path.resolve(flags['relay-b']) } });
    proxies.splice(1, 0, { ...b, name: 'fulcrum-b' });
  }
  const perCpu: Record<string, number[]> = Object.fromEntries(proxies.map((p) => [p.name, []]));
  const p99: Record<string, number[]> = Object.fromEntries(proxies.map((p) => [p.name, []]));
  const load = (target: string, durationS: number) => runClient({
    mode: scenario, targets: [target], conns: flags.conns ? Number(flags.conns) : scenario === 'bulk' ? 4 : 50, durationS, warmupS: 0,
    source: scenario === 'churn' ? { base: `${NET}.201`, count: 32 } : undefined, readEof: srvclose,
  });
  try {
    if (Number(flags.warmup) > 0) for (const p of proxies) await load(scenario === 'bulk' ? p.listen.sink : p.listen.echo, Number(flags.warmup));
    for (let i = 1; i <= runs; i++) {
      for (const p of proxies) {
        const target = scenario === 'bulk' ? p.listen.sink : p.listen.echo;
        const counter = logs[p.name];
        // The lines of what came before (readiness probes, the last run) may still be on their way.
        const linesBefore = counter ? await settledLines(counter, Infinity) : 0;
        const c0 = cpuTimes(p.pid);
        const counting = countSyscalls(p.pid, seconds);
        const scheduling = recordSched(seconds);
        const sampling = sampleSymbols(p.pid, seconds);
        const res = await load(target, seconds);
        const c1 = cpuTimes(p.pid);
        const cpu = c1.user - c0.user + (c1.sys - c0.sys);
        const work = scenario === 'bulk' ? (res.received! * 8) / 1e9 : res.count!;
        perCpu[p.name].push(work / cpu);
        if (scenario !== 'bulk') p99[p.name].push(res.p99_us!);
        const unit = scenario === 'bulk' ? 'Gbit' : scenario === 'rr' ? 'req' : 'conn';
        let line = `${scenario} ${p.name} #${i}: ${(work / cpu).toFixed(scenario === 'bulk' ? 2 : 0)} ${unit} per CPU-s`;
        if (scenario !== 'bulk') {
          line += `, user ${((c1.user - c0.user) * 1e6 / res.count!).toFixed(2)} µs / sys ${((c1.sys - c0.sys) * 1e6 / res.count!).toFixed(2)} µs per ${unit}, p50 ${res.p50_us} µs, p99 ${res.p99_us} µs`;
        }
        if (!res.ok) line += ` ⚠ errors=${res.errors} corrupt=${res.corrupt}`;
        if (counter) {
          // Every connection the load generator completed owes a line.
          const lines = (await settledLines(counter, linesBefore + (res.connected ?? res.total!))) - linesBefore;
          line += `, log lines ${lines} of ${res.total} (lost ${Math.max(0, res.total! - lines)})`;
        }
        console.log(line);
        if (counting) {
          const counts = await counting;
          console.log(`  syscalls per ${unit}: ` + Object.entries(counts).map(([k, v]) => `${k} ${(v / work).toFixed(2)}`).join(', '));
        }
        if (scheduling) for (const l of await scheduling) console.log(`  ${l}`);
        if (sampling) for (const l of await sampling) console.log(`  ${l}`);
      }
    }
    for (const p of proxies) {
      if (p === haproxy) continue;
      const a = median(perCpu[p.name]);
      const b = median(perCpu.haproxy);
      console.log(`median per CPU-second: ${p.name} ${a.toFixed(2)}, HAProxy${bufsize ? ` (tune.bufsize ${bufsize})` : ''} ${b.toFixed(2)}: ${(a / b).toFixed(2)}×`);
      if (scenario !== 'bulk') {
        const [x, y] = [median(p99[p.name]), median(p99.haproxy)];
        console.log(`median p99: ${p.name} ${x.toFixed(0)} µs, HAProxy ${y.toFixed(0)} µs: ${(x / y).toFixed(2)}×`);
      }
    }
  } finally {
    await Promise.all(proxies.map((p) => p.stop()));
    await Promise.all(backends.map((b) => b.stop()));
    syslog?.close();
  }
}

main().catch((err) => {
  killAllProxies();
  killAllLoadgens();
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
