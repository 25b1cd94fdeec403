/**
 * The BGP scale-out test network (real namespaces, test/helpers/netns.ts; the lab notes'
 * topology, ../shared/notes/bgp-ecmp-lab.md):
 *
 *   client 10.251.9.2 ── router (FRR bgpd, AS 65000, ECMP, L4 hash) ── lbN 10.251.N.2 (fulcrum + its speaker)
 *                               └── be 10.251.8.21–23:9000
 *
 * Each lbN runs the real `bin/fulcrum run` with a bgp section; the VIP 10.250.0.100 goes on its
 * `lo` (fulcrum puts it there). The router runs zebra + bgpd with `no zebra nexthop kernel
 * enable` (lab finding F3) and `bgp bestpath as-path multipath-relax` (F2).
 */
import type { ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { collectJsonLines, NetLab, NODE, ROOT, sleep, waitForLine } from '../helpers/netns.ts';

export const VIP = '10.250.0.100';
export const PORT = 8080;
export const CLIENT = '10.251.9.2';
export const BACKENDS = ['10.251.8.21:9000', '10.251.8.22:9000', '10.251.8.23:9000'];
const FIXTURES = join(ROOT, 'test/bgp/fixtures');
const CLIENT_JS = join(ROOT, 'test/failover/fixtures/client.ts');

export interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

export interface NodeRun {
  n: number;
  child: ChildProcess;
  lines: LogLine[];
  exited: Promise<number | null>;
  file: string;
}

/** One attempt of the client loop: started at t, ended at done (epoch ms), from local `port`. */
export interface ClientResult {
  t: number;
  done: number;
  port: number;
  ok: boolean;
  body?: string;
  err?: string;
}

export interface NodeOptions {
  speaker?: 'gobgp' | 'command';
  drain?: string;
  liveness?: string;
  /** command speaker: the announce/withdraw commands. */
  announce?: string;
  withdraw?: string;
}

export interface LabOptions {
  /** 'none': no routing daemon on the router (the test programs its table itself). Default FRR. */
  router?: 'frr' | 'none';
  /** Backends keep each connection open and echo what they receive after their first line. */
  holdBackends?: boolean;
}

export class BgpLab {
  readonly lab: NetLab;
  readonly dir: string;
  readonly nodes: number[];
  readonly running = new Map<number, NodeRun>();

  private readonly opts: LabOptions;
  /** Route samplers still running (stopped by destroy). */
  private readonly samplers: (() => Promise<unknown>)[] = [];

  private constructor(tag: string, nodes: number, opts: LabOptions) {
    this.opts = opts;
    this.lab = new NetLab(tag);
    this.dir = mkdtempSync(join(tmpdir(), `fulcrum-bgplab-${tag}-`));
    chmodSync(this.dir, 0o755);
    this.nodes = Array.from({ length: nodes }, (_, i) => i + 1);
  }

  static async create(tag: string, nodes = 3, opts: LabOptions = {}): Promise<BgpLab> {
    const b = new BgpLab(tag, nodes, opts);
    try {
      await b.build();
    } catch (err) {
      await b.destroy();
      throw err;
    }
    return b;
  }

  private async build(): Promise<void> {
    const l = this.lab;
    for (const n of ['router', 'client', 'be', ...this.nodes.map((i) => `lb${i}`)]) await l.addNs(n);
    const link = async (ns: string, rIf: string, nIf: string, net: string, hostOctet: number) => {
      await l.veth('router', rIf, ns, nIf);
      await l.ip('router', 'addr', 'add', `${net}.1/24`, 'dev', rIf);
      await l.ip(ns, 'addr', 'add', `${net}.${hostOctet}/24`, 'dev', nIf);
      await l.ip(ns, 'route', 'add', 'default', 'via', `${net}.1`);
    };
    for (const i of this.nodes) await link(`lb${i}`, `r-lb${i}`, 'up0', `10.251.${i}`, 2);
    await link('client', 'r-cl', 'eth0', '10.251.9', 2);
    await l.veth('router', 'r-be', 'be', 'eth0');
    await l.ip('router', 'addr', 'add', '10.251.8.1/24', 'dev', 'r-be');
    for (const b of BACKENDS) await l.ip('be', 'addr', 'add', `${b.split(':')[0]}/24`, 'dev', 'eth0');
    await l.ip('be', 'route', 'add', 'default', 'via', '10.251.8.1');
    await l.sysctl('router', 'net.ipv4.ip_forward', 1);
    await l.sysctl('router', 'net.ipv4.fib_multipath_hash_policy', 1);
    const be = l.spawn('be', NODE, [join(FIXTURES, 'backend.ts'), ...(this.opts.holdBackends ? ['--hold'] : []), ...BACKENDS]);
    await waitForLine(be, /^ready$/, 10_000, 'stdout');
    if (this.opts.router !== 'none') await this.startRouter();
  }

  /** zebra + bgpd in the router namespace, in the foreground (NetLab kills them by pid). */
  private async startRouter(): Promise<void> {
    const d = join(this.dir, 'router');
    mkdirSync(d, { mode: 0o777 });
    chmodSync(d, 0o777);
    writeFileSync(join(d, 'zebra.conf'), 'hostname router\nno zebra nexthop kernel enable\n');
    const neighbors = this.nodes.map((i) => ` neighbor 10.251.${i}.2 peer-group LB`).join('\n');
    writeFileSync(join(d, 'bgpd.conf'), `frr defaults datacenter
hostname router
log file ${d}/bgpd.log informational
router bgp 65000
 bgp router-id 10.251.9.1
 no bgp ebgp-requires-policy
 bgp bestpath as-path multipath-relax
 neighbor LB peer-group
 neighbor LB remote-as external
 neighbor LB timers 1 3
 neighbor LB timers connect 1
${neighbors}
 address-family ipv4 unicast
  maximum-paths 8
  neighbor LB route-map NONE out
 exit-address-family
route-map NONE deny 10
`);
    const common = ['-F', 'datacenter', '-z', join(d, 'zserv.api'), '--vty_socket', d, '-u', 'frr', '-g', 'frr'];
    const zebra = this.lab.spawn('router', '/usr/lib/frr/zebra', ['-f', join(d, 'zebra.conf'), '-i', join(d, 'zebra.pid'), ...common]);
    await this.waitFile(join(d, 'zserv.api'), zebra, 'zebra');
    const bgpd = this.lab.spawn('router', '/usr/lib/frr/bgpd', ['-f', join(d, 'bgpd.conf'), '-i', join(d, 'bgpd.pid'), '-p', '179', ...common]);
    await this.waitFile(join(d, 'bgpd.vty'), bgpd, 'bgpd');
  }

  private async waitFile(file: string, child: ChildProcess, what: string): Promise<void> {
    let out = '';
    child.stdout?.on('data', (b: Buffer) => (out += b));
    child.stderr?.on('data', (b: Buffer) => (out += b));
    const t0 = Date.now();
    for (;;) {
      const r = await this.lab.exec('router', 'test', ['-e', file]);
      if (r.code === 0) return;
      if (child.exitCode !== null || Date.now() - t0 > 10_000) throw new Error(`${what} did not start: ${out}`);
      await sleep(50);
    }
  }

  /** `vtysh -c CMD` on the router. */
  async vtysh(cmd: string): Promise<string> {
    const r = await this.lab.exec('router', 'vtysh', ['--vty_socket', join(this.dir, 'router'), '-c', cmd]);
    return r.stdout + r.stderr;
  }

  /** The nodes (by number) the router's kernel route for the VIP points to. */
  async nextHops(): Promise<number[]> {
    const out = await this.lab.ip('router', 'route', 'show', VIP);
    return [...out.matchAll(/via 10\.251\.(\d)\.2/g)].map((m) => Number(m[1])).sort();
  }

  /** Polls every 5 ms until the next hops equal `want`; resolves with the time it took (ms). */
  async waitNextHops(want: number[], ms: number): Promise<number> {
    const t0 = performance.now();
    for (;;) {
      const got = await this.nextHops();
      if (got.join(',') === [...want].sort().join(',')) return performance.now() - t0;
      if (performance.now() - t0 > ms) throw new Error(`next hops ${JSON.stringify(got)} ≠ ${JSON.stringify(want)} after ${ms}ms\n${await this.vtysh('show bgp summary')}\n${this.dump()}`);
      await sleep(5);
    }
  }

  /**
   * The client ports node n has a TCP socket with, in any state: open, closing, or TIME_WAIT (60 s,
   * and the node closes first, so each connection it served stays listed). Kernel state of its
   * namespace: readable after its fulcrum exited.
   */
  async peerPorts(n: number): Promise<Set<number>> {
    const r = await this.lab.exec(`lb${n}`, 'ss', ['-Htan', 'dst', CLIENT], 10_000);
    return new Set([...r.stdout.matchAll(/ 10\.251\.9\.2:(\d+)\s*$/gm)].map((m) => Number(m[1])));
  }

  /**
   * Samples the router's route for the VIP (every ~5 ms plus an `ip` run) until stop(): how many
   * samples, and how many lacked node n's next hop.
   */
  sampleNextHops(n: number): { stop(): Promise<{ samples: number; missing: number }> } {
    let on = true;
    let samples = 0;
    let missing = 0;
    const loop = (async () => {
      while (on) {
        // A test that failed half-way destroys the lab under a running sampler: it just ends.
        const hops = await this.nextHops().catch((err: Error) => (on ? Promise.reject(err) : null));
        if (hops === null) break;
        samples++;
        if (!hops.includes(n)) missing++;
        await sleep(5);
      }
    })();
    this.samplers.push(() => {
      on = false;
      return loop.catch(() => undefined);
    });
    return {
      async stop() {
        on = false;
        await loop;
        return { samples, missing };
      },
    };
  }

  writeConfig(n: number, o: NodeOptions = {}): string {
    const speaker = o.speaker ?? 'gobgp';
    const bgp = speaker === 'gobgp'
      ? `  speaker: gobgp
  asn: ${65000 + n}
  router_id: 10.251.${n}.2
  neighbors: [ { address: 10.251.${n}.1, asn: 65000 } ]
  liveness: ${o.liveness ?? '1s'}`
      : `  speaker: command
  announce: ${JSON.stringify(o.announce)}
  withdraw: ${JSON.stringify(o.withdraw)}`;
    writeFileSync(join(this.dir, `admin${n}.token`), 'bgp-test-admin-token-0123456789\n', { mode: 0o600 });
    const yaml = `workers: 1
shutdown_grace: 1s
logging: { level: debug, connections: false }
admin: { listen: 127.0.0.1:9900, token_file: ${join(this.dir, `admin${n}.token`)} }
services:
  - name: web
    listen: ${VIP}:${PORT}
    balance: maglev
    hash_key: source_ip
    table_size: 65537
    timeouts: { connect: 500ms }
    backends:
${BACKENDS.map((b) => `      - address: ${b}`).join('\n')}
bgp:
${bgp}
  vips: [ ${VIP}/32 ]
  announce_when: { min_backends_up: 1 }
  drain: ${o.drain ?? '1s'}
`;
    const file = join(this.dir, `lb${n}.yaml`);
    writeFileSync(file, yaml);
    return file;
  }

  /** Starts fulcrum on node n; resolves once it logged an announce (or `until` matched). */
  async start(n: number, o: NodeOptions = {}, until: (l: LogLine) => boolean = (l) => l.action === 'announce'): Promise<NodeRun> {
    const file = this.writeConfig(n, o);
    const child = this.lab.spawn(`lb${n}`, join(ROOT, 'bin/fulcrum'), ['run', '--config', file]);
    const lines = collectJsonLines<LogLine>(child);
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const r: NodeRun = { n, child, lines, exited, file };
    this.running.set(n, r);
    await this.waitLog(n, until, 15_000);
    return r;
  }

  async waitLog(n: number, pred: (l: LogLine) => boolean, ms: number, from = 0): Promise<LogLine> {
    const r = this.running.get(n)!;
    const t0 = Date.now();
    for (;;) {
      const line = r.lines.slice(from).find(pred);
      if (line) return line;
      if (r.child.exitCode !== null || Date.now() - t0 > ms) throw new Error(`lb${n}: no matching log line within ${ms}ms (exit ${r.child.exitCode}):\n${this.dump()}`);
      await sleep(10);
    }
  }

  /** `fulcrum ctl --config <lbN's> ARGS` inside node n. */
  ctl(n: number, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return this.lab.exec(`lb${n}`, join(ROOT, 'bin/fulcrum'), ['ctl', '--config', join(this.dir, `lb${n}.yaml`), ...args], 15_000);
  }

  /** Node n's Prometheus text, read from its admin server inside its namespace. */
  async metrics(n: number): Promise<string> {
    const r = await this.lab.exec(`lb${n}`, 'bash', ['-c', 'exec 3<>/dev/tcp/127.0.0.1/9900; printf "GET /metrics HTTP/1.0\\r\\n\\r\\n" >&3; cat <&3'], 5000);
    return r.stdout;
  }

  /** `count` connections from the client address (a new source port each): body or null per attempt. */
  async connect(count: number, timeoutMs = 1000): Promise<(string | null)[]> {
    const r = await this.lab.exec('client', NODE, [CLIENT_JS, 'once', `${VIP}:${PORT}`, Array(count).fill(CLIENT).join(','), String(timeoutMs)], 120_000);
    return r.stdout.split('\n').filter(Boolean).map((l) => {
      const x = JSON.parse(l) as { ok: boolean; body?: string };
      return x.ok ? x.body ?? null : null;
    });
  }

  /** A client loop: one connection per interval for duration (test/failover/fixtures/client.ts). */
  clientLoop(intervalMs: number, durationMs: number, timeoutMs: number): { results: ClientResult[]; done: Promise<void>; stop: () => void } {
    const child = this.lab.spawn('client', NODE, [CLIENT_JS, 'loop', `${VIP}:${PORT}`, String(intervalMs), String(durationMs), String(timeoutMs)]);
    // The client's lines are JSON too (no level: it never fails to print one).
    const results = collectJsonLines(child) as unknown as ClientResult[];
    return { results, done: new Promise<void>((r) => child.once('exit', () => r())), stop: () => void child.kill('SIGTERM') };
  }

  kill(n: number, signal: NodeJS.Signals): void {
    this.running.get(n)?.child.kill(signal);
  }

  dump(): string {
    return [...this.running.values()].map((r) => `── lb${r.n}\n${r.lines.filter((l) => l.component === 'bgp' || l.level >= 40).map((l) => JSON.stringify(l)).join('\n')}`).join('\n');
  }

  async destroy(): Promise<void> {
    for (const stop of this.samplers.splice(0)) await stop();
    for (const r of this.running.values()) r.child.kill('SIGKILL');
    this.running.clear();
    await this.lab.destroy();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The node (by number) a backend's answer names: the backend saw the node's address 10.251.N.2. */
export function nodeOf(body: string): number {
  const m = / 10\.251\.(\d)\.2$/.exec(body);
  if (!m) throw new Error(`not a backend answer: ${JSON.stringify(body)}`);
  return Number(m[1]);
}
