/**
 * The failover test network, built from real namespaces (see test/helpers/netns.ts):
 *
 *              ns sw:  br0 (LAN, 198.51.100.0/24)            br1 (heartbeat, 192.0.2.0/24)
 *                ┌──────┬─────────┬─────────┬────────┐           ┌─────────┬─────────┐
 *             client   lb1 eth0   lb2 eth0   be eth0           lb1 hb0   lb2 hb0
 *          .10–.17     .2         .3         .21 .22 .23       192.0.2.1  192.0.2.2
 *                      VIP 198.51.100.100/24 on the master's eth0
 *
 * Heartbeats use their own bridge, so setting lb2's port on br1 down partitions the pair while
 * the LAN stays up (a true split brain). Each balancer namespace runs the real `bin/fulcrum run
 * --config FILE`; its pino lines are kept and parsed (role changes, dropped heartbeats).
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { collectJsonLines, NetLab, NODE, ROOT, sleep, waitForLine } from '../helpers/netns.ts';

export const VIP = '198.51.100.100';
export const SERVICE_PORT = 8080;
export const BACKENDS = ['198.51.100.21:9000', '198.51.100.22:9000', '198.51.100.23:9000'];
/** The backends' TCP echo servers (PairConfig.echoPort's service): held connections. */
export const ECHO_BACKENDS = BACKENDS.map((b) => b.replace(/:9000$/, ':9001'));
export const CLIENTS = ['198.51.100.10', '198.51.100.11', '198.51.100.12', '198.51.100.13', '198.51.100.14', '198.51.100.15', '198.51.100.16', '198.51.100.17'];
export const SECRET = 'fulcrum-test-secret-0123456789abcdef';
export const NODES = {
  lb1: { lan: '198.51.100.2', hb: '192.0.2.1', priority: 150, swLan: 'l1', swHb: 'h1' },
  lb2: { lan: '198.51.100.3', hb: '192.0.2.2', priority: 100, swLan: 'l2', swHb: 'h2' },
} as const;
export type NodeName = keyof typeof NODES;
const FIXTURES = join(ROOT, 'test/failover/fixtures');

export interface LogLine {
  level: number;
  msg: string;
  component?: string;
  from?: string;
  to?: string;
  cause?: string;
  reason?: string;
  epoch?: number;
  [k: string]: unknown;
}

export interface Running {
  node: NodeName;
  child: ChildProcess;
  lines: LogLine[];
  exited: Promise<number | null>;
}

export interface PairConfig {
  /** Default: the node's own (NODES). */
  priority?: number;
  preempt?: boolean;
  advertInterval?: string;
  deadAfter?: number;
  minBackendsUp?: number;
  balance?: 'maglev' | 'leastconn' | 'roundrobin' | 'random';
  logLevel?: string;
  /** A second service, web2, on the VIP at this port (to the same backends). */
  extraPort?: number;
  /** A UDP service, game (maglev by source address), on the VIP at this port, to the backends' UDP ports. */
  udpPort?: number;
  /** The admin API on the node's LAN address, port ADMIN_PORT (no token: changes refused). */
  admin?: boolean;
  /** A service, echo, on the VIP at this port, to the backends' echo servers (ECHO_BACKENDS). */
  echoPort?: number;
  /** Default 1s. */
  shutdownGrace?: string;
  /**
   * Services `heavy0`… with this many backends in all (never connected to): what makes
   * the admin API's /metrics and /api/services work heavy on the main thread.
   */
  heavyBackends?: number;
}

export const ADMIN_PORT = 9900;

export class PairLab {
  readonly lab: NetLab;
  readonly dir: string;
  readonly running = new Map<NodeName, Running>();
  private backend: ChildProcess | null = null;

  private constructor(tag: string) {
    this.lab = new NetLab(tag);
    this.dir = mkdtempSync(join(tmpdir(), `fulcrum-h4-${tag}-`));
  }

  static async create(tag: string): Promise<PairLab> {
    const p = new PairLab(tag);
    try {
      await p.build();
    } catch (err) {
      await p.destroy();
      throw err;
    }
    return p;
  }

  private async build(): Promise<void> {
    const l = this.lab;
    for (const n of ['sw', 'client', 'lb1', 'lb2', 'be']) await l.addNs(n);
    await l.bridge('sw', 'br0');
    await l.bridge('sw', 'br1');
    await l.veth('client', 'eth0', 'sw', 'c0', { bridgeB: 'br0' });
    await l.veth('be', 'eth0', 'sw', 'b0', { bridgeB: 'br0' });
    for (const [name, n] of Object.entries(NODES)) {
      await l.veth(name, 'eth0', 'sw', n.swLan, { bridgeB: 'br0' });
      await l.veth(name, 'hb0', 'sw', n.swHb, { bridgeB: 'br1' });
      await l.ip(name, 'addr', 'add', `${n.lan}/24`, 'dev', 'eth0');
      await l.ip(name, 'addr', 'add', `${n.hb}/24`, 'dev', 'hb0');
    }
    for (const c of CLIENTS) await l.ip('client', 'addr', 'add', `${c}/24`, 'dev', 'eth0');
    for (const b of BACKENDS) await l.ip('be', 'addr', 'add', `${b.split(':')[0]}/24`, 'dev', 'eth0');
    writeFileSync(join(this.dir, 'ha.secret'), SECRET + '\n', { mode: 0o600 });
    this.backend = l.spawn('be', NODE, [join(FIXTURES, 'backend.ts'), ...BACKENDS, ...ECHO_BACKENDS.map((b) => `echo:${b}`)]);
    await waitForLine(this.backend, /^ready$/, 10_000, 'stdout');
  }

  /** Writes lb1's or lb2's config and returns its path. */
  writeConfig(node: NodeName, c: PairConfig = {}): string {
    const self = NODES[node];
    const peer = NODES[node === 'lb1' ? 'lb2' : 'lb1'];
    const yaml = `# ${node}: written by test/failover/lab.ts
workers: 1
shutdown_grace: ${c.shutdownGrace ?? '1s'}
logging:
  level: ${c.logLevel ?? 'debug'}
  connections: false
services:
  - name: web
    listen: ${VIP}:${SERVICE_PORT}
    balance: ${c.balance ?? 'maglev'}
    table_size: 65537
    timeouts: { connect: 500ms }
    backends:
${BACKENDS.map((b) => `      - address: ${b}`).join('\n')}
${c.extraPort ? `  - name: web2\n    listen: ${VIP}:${c.extraPort}\n    backends:\n${BACKENDS.map((b) => `      - address: ${b}`).join('\n')}\n` : ''}${c.echoPort ? `  - name: echo\n    listen: ${VIP}:${c.echoPort}\n    backends:\n${ECHO_BACKENDS.map((b) => `      - address: ${b}`).join('\n')}\n` : ''}${c.udpPort ? `  - name: game\n    protocol: udp\n    listen: ${VIP}:${c.udpPort}\n    balance: maglev\n    backends:\n${BACKENDS.map((b) => `      - address: ${b}`).join('\n')}\n` : ''}${c.heavyBackends ? heavyServices(c.heavyBackends) : ''}${c.admin ? `admin:\n  listen: ${self.lan}:${ADMIN_PORT}\n` : ''}ha:
  vip: ${VIP}/24
  interface: eth0
  bind: ${self.hb}:7946
  peer: ${peer.hb}:7946
  priority: ${c.priority ?? self.priority}
  advert_interval: ${c.advertInterval ?? '100ms'}
  dead_after: ${c.deadAfter ?? 3}
  preempt: ${c.preempt ?? true}
  secret_file: ${join(this.dir, 'ha.secret')}
  track: { min_backends_up: ${c.minBackendsUp ?? 1} }
`;
    const file = join(this.dir, `${node}.yaml`);
    writeFileSync(file, yaml);
    return file;
  }

  /**
   * Starts `bin/fulcrum run --config …` in the node's namespace; resolves once its failover runs.
   * `pathPrefix`: a directory searched first for the commands fulcrum runs (`ip`, `arping`);
   * `env`: more of fulcrum's environment (FULCRUM_RELAY=off: the JavaScript data path).
   */
  async start(node: NodeName, c: PairConfig = {}, opts: { pathPrefix?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Running> {
    const file = this.writeConfig(node, c);
    const env = opts.pathPrefix || opts.env ? { ...process.env, ...opts.env, ...(opts.pathPrefix ? { PATH: `${opts.pathPrefix}:${process.env.PATH ?? ''}` } : {}) } : undefined;
    const child = this.lab.spawn(node, join(ROOT, 'bin/fulcrum'), ['run', '--config', file], env ? { env } : {});
    const lines = collectJsonLines<LogLine>(child);
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const r: Running = { node, child, lines, exited };
    this.running.set(node, r);
    const deadline = Date.now() + 15_000;
    while (!lines.some((l) => l.msg === 'failover starting')) {
      if (child.exitCode !== null || Date.now() > deadline) {
        throw new Error(`${node}: fulcrum did not start its failover (exit ${child.exitCode}):\n${lines.map((l) => JSON.stringify(l)).join('\n')}`);
      }
      await sleep(20);
    }
    return r;
  }

  /** The role from the last transition logged (init before any). */
  role(node: NodeName): string {
    const r = this.running.get(node);
    if (!r) return 'down';
    const t = r.lines.filter((l) => typeof l.to === 'string' && typeof l.from === 'string' && l.msg.startsWith('role '));
    return t.at(-1)?.to ?? 'init';
  }

  transitions(node: NodeName): LogLine[] {
    return (this.running.get(node)?.lines ?? []).filter((l) => typeof l.to === 'string' && l.msg.startsWith('role '));
  }

  async waitRole(node: NodeName, role: string, ms: number): Promise<number> {
    const t0 = Date.now();
    while (this.role(node) !== role) {
      if (Date.now() - t0 > ms) throw new Error(`${node} did not become ${role} within ${ms}ms (is ${this.role(node)}); transitions: ${JSON.stringify(this.transitions(node))}`);
      await sleep(10);
    }
    return Date.now() - t0;
  }

  /** Drops counted by reason, from the debug lines "heartbeat dropped". */
  drops(node: NodeName): Record<string, number> {
    const out: Record<string, number> = {};
    for (const l of this.running.get(node)?.lines ?? []) if (l.msg === 'heartbeat dropped' && l.reason) out[l.reason] = (out[l.reason] ?? 0) + 1;
    return out;
  }

  epoch(node: NodeName): number {
    const l = this.running.get(node)?.lines.find((x) => x.msg === 'failover starting');
    if (typeof l?.epoch !== 'number') throw new Error(`${node}: no epoch logged`);
    return l.epoch;
  }

  async kill9(node: NodeName): Promise<void> {
    const r = this.running.get(node);
    if (!r) return;
    // `ip netns exec` execs the command, so the child's pid is fulcrum's (node's) pid.
    r.child.kill('SIGKILL');
    await r.exited;
    this.running.delete(node);
  }

  /** Rewrites the node's config file and sends SIGHUP; resolves with the reload's log line. */
  async reload(node: NodeName, c: PairConfig): Promise<LogLine> {
    const r = this.running.get(node);
    if (!r) throw new Error(`${node} is not running`);
    const seen = r.lines.length;
    this.writeConfig(node, c);
    r.child.kill('SIGHUP');
    const deadline = Date.now() + 5000;
    for (;;) {
      const line = r.lines.slice(seen).find((l) => l.component === 'reload');
      if (line) return line;
      if (Date.now() > deadline) throw new Error(`${node}: no reload line within 5 s`);
      await sleep(20);
    }
  }

  async term(node: NodeName): Promise<number | null> {
    const r = this.running.get(node);
    if (!r) return null;
    r.child.kill('SIGTERM');
    const code = await Promise.race([r.exited, sleep(10_000).then(() => 'timeout' as const)]);
    if (code === 'timeout') {
      r.child.kill('SIGKILL');
      await r.exited;
    }
    this.running.delete(node);
    return code === 'timeout' ? null : code;
  }

  /** Heartbeat link of lb2 down (true) or up (false): a partition that leaves the LAN alone. */
  async partition(on: boolean): Promise<void> {
    await this.lab.ip('sw', 'link', 'set', NODES.lb2.swHb, on ? 'down' : 'up');
  }

  /** Does the node's eth0 hold the VIP? */
  async holdsVip(node: NodeName): Promise<boolean> {
    const out = await this.lab.ip(node, '-4', 'addr', 'show', 'dev', 'eth0');
    return out.includes(`${VIP}/`);
  }

  /** Polls until the node holds (or no longer holds) the VIP; VIP commands follow the role change by a few ms. */
  async waitVip(node: NodeName, held: boolean, ms = 2000): Promise<void> {
    const t0 = Date.now();
    while ((await this.holdsVip(node)) !== held) {
      if (Date.now() - t0 > ms) throw new Error(`${node} ${held ? 'did not take' : 'still holds'} the VIP after ${ms}ms`);
      await sleep(20);
    }
  }

  /** A bounded client loop in the client namespace: one connect per interval. */
  clientLoop(intervalMs: number, durationMs: number, timeoutMs: number): { child: ChildProcess; results: ClientResult[]; done: Promise<void> } {
    return this.clientRun(['loop', `${VIP}:${SERVICE_PORT}`, String(intervalMs), String(durationMs), String(timeoutMs)]);
  }

  /** A bounded UDP client in the client namespace: one socket bound to `src`, a datagram per interval. */
  udpLoop(port: number, src: string, intervalMs: number, durationMs: number): { child: ChildProcess; results: ClientResult[]; done: Promise<void> } {
    return this.clientRun(['udp', `${VIP}:${port}`, src, String(intervalMs), String(durationMs)]);
  }

  /** `n` connections to the echo service (PairConfig.echoPort) held open, each echoing a line every interval (client.ts hold). */
  holdLoop(port: number, n: number, intervalMs: number, durationMs: number): { child: ChildProcess; results: HeldResult[]; done: Promise<void> } {
    const r = this.clientRun(['hold', `${VIP}:${port}`, String(n), String(intervalMs), String(durationMs)]);
    return r as unknown as { child: ChildProcess; results: HeldResult[]; done: Promise<void> };
  }

  /** Runs the client fixture with `args`, collecting its JSON result lines. */
  private clientRun(args: string[]): { child: ChildProcess; results: ClientResult[]; done: Promise<void> } {
    const child = this.lab.spawn('client', NODE, [join(FIXTURES, 'client.ts'), ...args]);
    const results: ClientResult[] = [];
    let buf = '';
    child.stdout?.on('data', (d: Buffer) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        results.push(JSON.parse(buf.slice(0, i)) as ClientResult);
        buf = buf.slice(i + 1);
      }
    });
    const done = new Promise<void>((r) => child.once('exit', () => r()));
    return { child, results, done };
  }

  /** One connection from each client address: which backend answered each. */
  async clientOnce(sources: string[] = CLIENTS, timeoutMs = 1000, port = SERVICE_PORT): Promise<Map<string, string | null>> {
    const r = await this.lab.exec('client', NODE, [join(FIXTURES, 'client.ts'), 'once', `${VIP}:${port}`, sources.join(','), String(timeoutMs)], 30_000);
    const out = new Map<string, string | null>();
    for (const line of r.stdout.split('\n').filter(Boolean)) {
      const x = JSON.parse(line) as { src: string; ok: boolean; body?: string };
      out.set(x.src, x.ok ? x.body ?? null : null);
    }
    return out;
  }

  /** Until a connection through the VIP succeeds (or `ms` passes). */
  async waitServing(ms: number): Promise<void> {
    const t0 = Date.now();
    for (;;) {
      const m = await this.clientOnce([CLIENTS[0]], 300);
      if (m.get(CLIENTS[0])) return;
      if (Date.now() - t0 > ms) throw new Error(`nothing answered on ${VIP}:${SERVICE_PORT} within ${ms}ms`);
      await sleep(50);
    }
  }

  /** Sends raw UDP datagrams to `to`'s heartbeat port from inside `fromNs`, bound to `fromAddress`. */
  async inject(fromNs: string, fromAddress: string, to: NodeName, packets: Buffer[]): Promise<void> {
    const script = `
      import { createSocket } from 'node:dgram';
      const s = createSocket('udp4');
      const packets = ${JSON.stringify(packets.map((p) => p.toString('hex')))};
      s.bind(0, ${JSON.stringify(fromAddress)}, async () => {
        for (const hex of packets) {
          await new Promise((r) => s.send(Buffer.from(hex, 'hex'), 7946, ${JSON.stringify(NODES[to].hb)}, r));
          await new Promise((r) => setTimeout(r, 5));
        }
        s.close();
      });`;
    const r = await this.lab.exec(fromNs, NODE, ['--input-type=module', '-e', script]);
    if (r.code !== 0) throw new Error(`inject failed: ${r.stderr}`);
  }

  /** Every node's log, for a failing test's message. */
  dump(): string {
    return [...this.running.values()].map((r) => `── ${r.node}\n${r.lines.map((l) => JSON.stringify(l)).join('\n')}`).join('\n');
  }

  async destroy(): Promise<void> {
    for (const r of this.running.values()) r.child.kill('SIGKILL');
    this.running.clear();
    await this.lab.destroy();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * The services of PairConfig.heavyBackends: n backends on addresses nothing answers at, in services
 * `heavy0`, `heavy1`… of at most 1000 (a service holds up to MAX_MEMBERS), on 127.0.0.1:18100+.
 */
function heavyServices(n: number): string {
  const lines: string[] = [];
  for (let k = 0; k < n; k++) {
    if (k % 1000 === 0) lines.push(`  - name: heavy${k / 1000}`, `    listen: 127.0.0.1:${18100 + k / 1000}`, '    balance: leastconn', '    backends:');
    lines.push(`      - address: 203.0.113.${1 + (k % 250)}:${10000 + Math.floor(k / 250)}`);
  }
  return lines.join('\n') + '\n';
}

/** client.ts hold's lines: {opened} once, then one per connection at the end. */
export interface HeldResult {
  opened?: number;
  held?: number;
  ok?: boolean;
  echoes?: number;
  err?: string;
  at?: number;
}

export interface ClientResult {
  t: number;
  done: number;
  ok: boolean;
  body?: string;
  err?: string;
}
