/**
 * The two proxies under test, configured alike: fulcrum and HAProxy in `mode tcp`, the same
 * balance algorithm (leastconn, set explicitly on both), the same backends with TCP health checks
 * every 2 s, retries 2, connect timeout 2 s, idle timeout 30 min, no per-connection logging, and
 * the same number of threads (fulcrum workers = HAProxy nbthread). The churn family's variants
 * switch both alike: health checks off on both (`health: false`), or the connection log on for
 * both (`connLog`: HAProxy `option tcplog` to a syslog receiver over UDP, fulcrum
 * `logging.connections` with its standard output appended to a file).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.ts';
import { BENCH_DIR, OUT_DIR } from './loadgen.ts';
import { freePort, sleep } from './procfs.ts';

export const REPO_DIR = path.resolve(BENCH_DIR, '..');
export const NODE = path.join(REPO_DIR, 'node_modules', '.bin', 'node');
const CLI = path.join(REPO_DIR, 'src', 'cli.ts');

export type ProxyName = 'fulcrum' | 'haproxy';

/** What sits behind the proxies: one service per kind of backend. */
export interface Upstreams {
  echo: string[]; // host:port
  sink: string[];
  redis?: string;
  /** Echo backends that close after their reply (loadgen echo --close-after): the backend closes first. */
  echoClose?: string[];
}

/** The suffix of a variant's config and log files in bench/out/ ('' for the standard configuration). */
function variantTag(v: ProxyVariant): string {
  return `${v.health === false ? '-nohealth' : ''}${v.connLog ? '-logs' : ''}`;
}

/** What the churn family's variants change on both proxies alike. */
export interface ProxyVariant {
  /** TCP health checks every 2 s on every backend (the default), or none. */
  health?: boolean;
  /**
   * The connection log on: fulcrum writes its lines (standard output) to `file`; HAProxy sends
   * `option tcplog` lines over UDP to the syslog receiver at `syslog` (host:port).
   */
  connLog?: { file: string; syslog: string };
}

export interface Proxy {
  name: ProxyName;
  pid: number;
  workers: number;
  /** Where each service listens on this proxy. */
  listen: { echo: string; sink: string; redis?: string; echoClose?: string };
  stop(): Promise<void>;
}

/** Is haproxy installed? Its version line, or null. */
export function haproxyVersion(): string | null {
  try {
    const out = execFileSync('haproxy', ['-v'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    return out.split('\n')[0].trim();
  } catch {
    return null;
  }
}

/** Can fulcrum run here (the data plane and the CLI exist, and the engine is built)? Why not, or null. */
export function fulcrumMissing(): string | null {
  if (!existsSync(CLI)) return `${path.relative(REPO_DIR, CLI)} is missing`;
  if (!existsSync(path.join(REPO_DIR, 'src', 'main.ts'))) return 'src/main.ts is missing';
  if (!existsSync(path.join(REPO_DIR, 'build', 'out', 'engine.wasm'))) return 'build/out/engine.wasm is missing (npm run build:wasm)';
  return null;
}

const children = new Set<ChildProcess>();

export function killAllProxies(): void {
  for (const c of children) if (c.exitCode === null && c.pid) {
    try {
      process.kill(c.pid, 'SIGKILL');
    } catch { /* gone */ }
  }
}

/** One round trip through host:port (an echo service): proves the proxy accepts and has a backend up. */
function echoOnce(address: string, timeoutMs = 1000): Promise<boolean> {
  const i = address.lastIndexOf(':');
  return new Promise((resolve) => {
    const s = net.connect({ host: address.slice(0, i), port: Number(address.slice(i + 1)) });
    const done = (ok: boolean) => {
      clearTimeout(t);
      s.destroy();
      resolve(ok);
    };
    const t = setTimeout(() => done(false), timeoutMs);
    s.once('connect', () => s.write('ping'));
    s.once('data', (d) => done(d.toString() === 'ping'));
    s.once('error', () => done(false));
    s.once('close', () => done(false));
  });
}

/**
 * Waits until `probe` (one request through the proxy) succeeds several times in a row: with N
 * workers every one should have its listener up. Shared by the TCP proxies here and the UDP ones
 * (bench/lib/udp.ts).
 */
export async function waitServing(name: string, where: string, probe: () => Promise<boolean>, child: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + 30_000;
  let okInARow = 0;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${name} exited (${child.exitCode}) before it was ready:\n${log()}`);
    if (await probe()) {
      if (++okInARow >= 8) return;
    } else {
      okInARow = 0;
      await sleep(100);
    }
  }
  throw new Error(`${name} did not pass traffic to ${where} within 30 s:\n${log()}`);
}

function waitReady(child: ChildProcess, name: string, echoAddr: string, log: () => string): Promise<void> {
  return waitServing(name, echoAddr, () => echoOnce(echoAddr), child, log);
}

export function stopChild(child: ChildProcess, graceMs = 5000): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/** `stdoutFile`: the child's standard output is appended to that file (fulcrum's log lines), not kept. */
export function spawnLogged(cmd: string, args: string[], env: NodeJS.ProcessEnv, logFile: string, stdoutFile?: string): { child: ChildProcess; log: () => string } {
  const outFd = stdoutFile ? openSync(stdoutFile, 'a') : null;
  const child = spawn(cmd, args, { stdio: ['ignore', outFd ?? 'pipe', 'pipe'], env, cwd: REPO_DIR });
  if (outFd !== null) closeSync(outFd);
  children.add(child);
  child.once('exit', () => children.delete(child));
  let out = '';
  const keep = (d: Buffer) => {
    out += d.toString();
    if (out.length > 100_000) out = out.slice(-50_000);
  };
  child.stdout?.on('data', keep);
  child.stderr!.on('data', keep);
  child.once('exit', () => writeFileSync(logFile, out));
  return { child, log: () => out.slice(-4000) };
}

export interface FulcrumOptions extends ProxyVariant {
  workers: number;
  host: string;
  upstreams: Upstreams;
  /** Directory for node --cpu-prof output (one .cpuprofile per thread), or none. */
  cpuProfDir?: string;
  /** Extra node flags (experiments; the benchmark itself runs fulcrum with none). */
  nodeArgs?: string[];
  /** Extra environment (experiments). */
  env?: Record<string, string>;
}

/** The config fulcrum runs with: every data-plane feature on, limits high but present. */
export async function fulcrumConfig(o: { workers: number; host: string; upstreams: Upstreams } & ProxyVariant) {
  const service = (name: string, port: number, backends: string[]) => ({
    name,
    listen: `${o.host}:${port}`,
    balance: 'leastconn',
    // Admission control stays in the path: a limit far above what the runs reach.
    max_connections: 1_000_000,
    queue: { max: 100_000, timeout: '5s' },
    retries: 2,
    timeouts: { connect: '2s', idle: '30m' },
    ...(o.health === false ? {} : { health: { type: 'tcp', interval: '2s', timeout: '1s', rise: 2, fall: 3 } }),
    backends: backends.map((address) => ({ address, max_connections: 1_000_000 })),
  });
  const ports = { echo: await freePort(o.host), sink: await freePort(o.host), redis: await freePort(o.host), admin: await freePort(o.host), echoClose: await freePort(o.host) };
  const services = [service('echo', ports.echo, o.upstreams.echo), service('sink', ports.sink, o.upstreams.sink)];
  if (o.upstreams.redis) services.push(service('redis', ports.redis, [o.upstreams.redis]));
  if (o.upstreams.echoClose) services.push(service('echoclose', ports.echoClose, o.upstreams.echoClose));
  const config = {
    workers: o.workers,
    shutdown_grace: '1s',
    admin: { listen: `${o.host}:${ports.admin}` },
    // Throughput runs: no line per connection (HAProxy runs without a log target either); the
    // logs-on variant: a line per connection (info), as HAProxy's option tcplog.
    logging: o.connLog ? { level: 'info', connections: true } : { level: 'warn', connections: false },
    services,
  };
  const listen = {
    echo: `${o.host}:${ports.echo}`,
    sink: `${o.host}:${ports.sink}`,
    redis: o.upstreams.redis ? `${o.host}:${ports.redis}` : undefined,
    echoClose: o.upstreams.echoClose ? `${o.host}:${ports.echoClose}` : undefined,
  };
  return { config, listen };
}

export async function startFulcrum(o: FulcrumOptions): Promise<Proxy> {
  const { config, listen } = await fulcrumConfig(o);
  const text = stringify(config);
  parseConfig(text); // fail here, with the schema's message, rather than inside the child
  mkdirSync(OUT_DIR, { recursive: true });
  const tag = variantTag(o);
  const file = path.join(OUT_DIR, `fulcrum-w${o.workers}${tag}.yaml`);
  writeFileSync(file, text);
  const args: string[] = [...(o.nodeArgs ?? [])];
  if (o.cpuProfDir) {
    mkdirSync(o.cpuProfDir, { recursive: true });
    args.push('--cpu-prof', '--cpu-prof-dir', o.cpuProfDir);
  }
  args.push(CLI, 'run', '--config', file);
  const { child, log } = spawnLogged(NODE, args, { ...process.env, NODE_OPTIONS: '', ...o.env }, path.join(OUT_DIR, `fulcrum-w${o.workers}${tag}.log`),
    o.connLog?.file);
  try {
    await waitReady(child, 'fulcrum', listen.echo, log);
  } catch (err) {
    await stopChild(child, 1000);
    throw err;
  }
  return { name: 'fulcrum', pid: child.pid!, workers: o.workers, listen, stop: () => stopChild(child) };
}

export function haproxyConfig(o: { workers: number; host: string; upstreams: Upstreams; ports: { echo: number; sink: number; redis: number; echoClose: number }; maxconn: number; bufsize?: number } & ProxyVariant): string {
  const check = o.health === false ? '' : ' check inter 2s rise 2 fall 3';
  const backend = (name: string, servers: string[]) => [
    `backend ${name}`,
    '    balance leastconn',
    ...servers.map((s, i) => `    server ${name}${i + 1} ${s}${check}`),
    '',
  ];
  const frontend = (name: string, port: number) => [`frontend ${name}_in`, `    bind ${o.host}:${port}`, `    default_backend ${name}`, ''];
  return [
    '# Written by bench/run.ts — the HAProxy side of the comparison.',
    'global',
    `    nbthread ${o.workers}`,
    `    maxconn ${o.maxconn}`,
    // Only bench/diag.ts sets it (the comparison runs HAProxy's default, 16 KiB).
    ...(o.bufsize ? [`    tune.bufsize ${o.bufsize}`] : []),
    // The logs-on variant: one line per connection over UDP to the harness's syslog receiver.
    ...(o.connLog ? [`    log ${o.connLog.syslog} local0 info`] : []),
    '',
    'defaults',
    '    mode tcp',
    ...(o.connLog ? ['    log global', '    option tcplog'] : []),
    '    timeout connect 2s',
    '    timeout client 30m',
    '    timeout server 30m',
    '    retries 2',
    '    option redispatch',
    '',
    ...frontend('echo', o.ports.echo),
    ...frontend('sink', o.ports.sink),
    ...(o.upstreams.redis ? frontend('redis', o.ports.redis) : []),
    ...(o.upstreams.echoClose ? frontend('echoclose', o.ports.echoClose) : []),
    ...backend('echo', o.upstreams.echo),
    ...backend('sink', o.upstreams.sink),
    ...(o.upstreams.redis ? backend('redis', [o.upstreams.redis]) : []),
    ...(o.upstreams.echoClose ? backend('echoclose', o.upstreams.echoClose) : []),
  ].join('\n');
}

export async function startHaproxy(o: { workers: number; host: string; upstreams: Upstreams; maxconn: number; bufsize?: number } & ProxyVariant): Promise<Proxy> {
  const ports = { echo: await freePort(o.host), sink: await freePort(o.host), redis: await freePort(o.host), echoClose: await freePort(o.host) };
  const tag = variantTag(o);
  const file = path.join(OUT_DIR, `haproxy-w${o.workers}${tag}.cfg`);
  mkdirSync(OUT_DIR, { recursive: true });
  writeFileSync(file, haproxyConfig({ ...o, ports }));
  // -db: foreground, no master process: the pid we spawn is the one doing the work.
  const { child, log } = spawnLogged('haproxy', ['-db', '-f', file], process.env, path.join(OUT_DIR, `haproxy-w${o.workers}${tag}.log`));
  const listen = {
    echo: `${o.host}:${ports.echo}`,
    sink: `${o.host}:${ports.sink}`,
    redis: o.upstreams.redis ? `${o.host}:${ports.redis}` : undefined,
    echoClose: o.upstreams.echoClose ? `${o.host}:${ports.echoClose}` : undefined,
  };
  try {
    await waitReady(child, 'haproxy', listen.echo, log);
  } catch (err) {
    await stopChild(child, 1000);
    throw err;
  }
  return { name: 'haproxy', pid: child.pid!, workers: o.workers, listen, stop: () => stopChild(child) };
}

/** bench/diag/minimal-proxy.ts in front of the same upstreams (echo and sink; one thread). */
export async function startMinimalProxy(o: { host: string; upstreams: Upstreams }): Promise<Omit<Proxy, 'name'> & { name: 'minimal' }> {
  const listen = { echo: `${o.host}:${await freePort(o.host)}`, sink: `${o.host}:${await freePort(o.host)}` };
  const args = [path.join(BENCH_DIR, 'diag', 'minimal-proxy.ts'), `${listen.echo}=${o.upstreams.echo.join(',')}`, `${listen.sink}=${o.upstreams.sink.join(',')}`];
  const { child, log } = spawnLogged(NODE, args, { ...process.env, NODE_OPTIONS: '' }, path.join(OUT_DIR, 'minimal-proxy.log'));
  try {
    await waitReady(child, 'minimal proxy', listen.echo, log);
  } catch (err) {
    await stopChild(child, 1000);
    throw err;
  }
  return { name: 'minimal', pid: child.pid!, workers: 1, listen, stop: () => stopChild(child) };
}

/**
 * bench/diag/epoll-proxy.c (a minimal C epoll proxy, built here into bench/out/) in front of the
 * echo upstreams; `yieldPoint`: with the CPU-clock read before each epoll_wait (see that file);
 * `options`: more of its options (`--half-close`, `--smart-connect`).
 */
export async function startEpollProxy(o: { host: string; upstreams: Upstreams; yieldPoint: boolean; options?: string[] }): Promise<Omit<Proxy, 'name'> & { name: 'epoll' | 'epoll-yield' }> {
  const source = path.join(BENCH_DIR, 'diag', 'epoll-proxy.c');
  const binary = path.join(OUT_DIR, 'epoll-proxy');
  execFileSync('cc', ['-O2', '-Wall', '-Werror', '-o', binary, source], { stdio: ['ignore', 'inherit', 'inherit'] });
  const echo = `${o.host}:${await freePort(o.host)}`;
  const name = o.yieldPoint ? 'epoll-yield' : 'epoll';
  const args = [...(o.yieldPoint ? ['--yield-point'] : []), ...(o.options ?? []), echo, ...o.upstreams.echo];
  const { child, log } = spawnLogged(binary, args, process.env, path.join(OUT_DIR, `${name}-proxy.log`));
  try {
    await waitReady(child, name, echo, log);
  } catch (err) {
    await stopChild(child, 1000);
    throw err;
  }
  // Request/response only: no sink service (bench/diag.ts refuses bulk with it).
  return { name, pid: child.pid!, workers: 1, listen: { echo, sink: echo }, stop: () => stopChild(child) };
}

/** The .cpuprofile files in dir (one per thread that ran JavaScript). */
export function cpuProfiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')).map((f) => path.join(dir, f));
}
