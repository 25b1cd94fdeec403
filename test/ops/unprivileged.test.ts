/**
 * fulcrum run as an unprivileged user with the documented capabilities and nothing else, as
 * packaging/fulcrum.service runs it: setpriv (util-linux) switches to nobody/nogroup, keeps
 * CAP_NET_BIND_SERVICE, CAP_NET_ADMIN and CAP_NET_RAW as ambient capabilities (so `ip` and
 * `arping` inherit them), bounds the set to them and sets no_new_privs. In a network namespace
 * with `ha`, it binds a port below 1024 on the VIP it takes (ip addr add) and announces
 * (arping); without CAP_NET_ADMIN it refuses at start, naming the capability and what needs it.
 *
 * What nobody must read (the sources, node_modules, the build output, the config, the key) is a
 * hard-linked copy in a temporary directory: the checkout is neither changed nor assumed readable.
 * A reload that adds a port below 1024 without CAP_NET_BIND_SERVICE is refused by name too, and
 * the running config keeps serving.
 * Addresses: 10.77.0.0/24, inside the namespaces only.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, cpSync, mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collectJsonLines, haveBinary, NetLab, netnsAvailable, NODE, ROOT, waitForLine } from '../helpers/netns.ts';
import { waitFor } from '../helpers/net.ts';

const VIP = '10.77.0.100';
const SELF = '10.77.0.1';
const PEER = '10.77.0.2';
const PORT = 80;
const ALL = ['net_bind_service', 'net_admin', 'net_raw'];

const available = netnsAvailable() && haveBinary('setpriv');

let lab: NetLab;
let dir = '';
let config = '';
const children: ChildProcess[] = [];

/** What `nobody` runs: a copy of the checkout's runtime files (hard links where the file system allows). */
function copyRuntime(into: string): void {
  const link = (from: string, to: string): void => {
    try {
      execFileSync('cp', ['-al', from, to]);
    } catch {
      cpSync(from, to, { recursive: true, verbatimSymlinks: true });
    }
  };
  link(join(ROOT, 'bin'), join(into, 'bin'));
  link(join(ROOT, 'src'), join(into, 'src'));
  link(join(ROOT, 'package.json'), join(into, 'package.json'));
  mkdirSync(join(into, 'build'));
  link(join(ROOT, 'build', 'out'), join(into, 'build', 'out'));
  link(realpathSync(join(ROOT, 'node_modules')), join(into, 'node_modules'));
}

/**
 * `fulcrum run` in namespace n as nobody, holding `caps` (ambient; also the bounding set, and
 * no_new_privs, unless `open`: then the bounding set stays full, as for a user's login shell).
 */
function runAsNobody(caps: string[], open = false, pathPrefix = '', file = config): { child: ChildProcess; lines: Array<Record<string, unknown> & { level: number; msg: string }>; output: () => string; exited: Promise<number | null> } {
  const list = caps.map((c) => `+${c}`).join(',');
  const capArgs = caps.length > 0 ? [`--inh-caps=-all,${list}`, `--ambient-caps=${list}`] : ['--inh-caps=-all'];
  if (!open) capArgs.push(caps.length > 0 ? `--bounding-set=-all,${list}` : '--bounding-set=-all', '--no-new-privs');
  const child = lab.spawn('n', 'setpriv', [
    '--reuid=nobody', '--regid=nogroup', '--clear-groups', ...capArgs, '--',
    join(dir, 'bin', 'fulcrum'), 'run', '--config', file,
  ], { env: { PATH: `${pathPrefix}/usr/sbin:/usr/bin:/sbin:/bin`, HOME: '/nonexistent' } });
  children.push(child);
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  const lines = collectJsonLines<Record<string, unknown> & { level: number; msg: string }>(child);
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, lines, output: () => output, exited };
}

const vipHeld = async (): Promise<boolean> => (await lab.ip('n', '-4', 'addr', 'show', 'dev', 'eth0')).includes(`${VIP}/24`);

beforeAll(async () => {
  if (!available) return;
  lab = new NetLab('priv');
  await lab.addNs('n');
  await lab.addNs('peer');
  await lab.veth('n', 'eth0', 'peer', 'eth0');
  await lab.ip('n', 'addr', 'add', `${SELF}/24`, 'dev', 'eth0');
  await lab.ip('peer', 'addr', 'add', `${PEER}/24`, 'dev', 'eth0');
  // The peer keeps what a gratuitous ARP announces (it would only refresh an existing entry).
  await lab.sysctl('peer', 'net.ipv4.conf.eth0.arp_accept', 1);
  // The backend, in the namespace, on its loopback.
  const backend = lab.spawn('n', NODE, ['-e', `
    require('node:net').createServer((s) => s.on('data', (d) => s.end('echo ' + d))).listen(9000, '127.0.0.1', () => console.log('ready'));
  `]);
  children.push(backend);
  await waitForLine(backend, /^ready$/, 10_000, 'stdout');

  dir = mkdtempSync(join(tmpdir(), 'fulcrum-priv-'));
  chmodSync(dir, 0o755);
  copyRuntime(dir);
  const key = join(dir, 'ha.key');
  writeFileSync(key, 'an unprivileged test key, 32 bytes+\n', { mode: 0o600 });
  // The key is fulcrum's own (mode 0600, owned by its user), as secret files must be.
  const nobody = Number(execFileSync('id', ['-u', 'nobody'], { encoding: 'utf8' }));
  chownSync(key, nobody, -1);
  config = join(dir, 'fulcrum.yaml');
  writeFileSync(config, `
workers: 1
shutdown_grace: 1s
logging: { level: info, connections: false }
services:
  - name: web
    listen: ${VIP}:${PORT}
    backends:
      - address: 127.0.0.1:9000
ha:
  vip: ${VIP}/24
  interface: eth0
  bind: ${SELF}:694
  peer: ${PEER}:694
  priority: 100
  advert_interval: 100ms
  secret_file: ${key}
  garp: { count: 2, interval: 200ms }
`, { mode: 0o644 });
});

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await lab?.destroy();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!available)('fulcrum as nobody with only the documented capabilities', () => {
  it('binds port 80 on the VIP it takes, announces it, serves, and stops cleanly', async () => {
    const run = runAsNobody(ALL);
    // No peer answers: master after dead_after heartbeats, the VIP added by `ip` as nobody.
    await waitFor(() => run.lines.some((l) => l.msg.startsWith('role ') && l.to === 'master') || run.child.exitCode !== null, 20_000, 'master');
    expect(run.child.exitCode, run.output()).toBeNull();
    await waitFor(vipHeld, 5000, `the VIP on eth0 (fulcrum said: ${run.output()})`);
    // The gratuitous ARP (arping as nobody, CAP_NET_RAW inherited) reached the peer before any traffic did.
    await waitFor(async () => (await lab.ip('peer', 'neigh', 'show', VIP)).includes('lladdr'), 5000, 'the peer learned the VIP from the gratuitous ARP');
    // A client on the wire reaches port 80 on the VIP, and the backend behind it.
    const reply = await lab.exec('peer', NODE, ['-e', `
      const s = require('node:net').connect(${PORT}, '${VIP}', () => s.write('hi'));
      let got = ''; s.on('data', (d) => (got += d)); s.on('close', () => { console.log(got); process.exit(0); });
      s.on('error', (e) => { console.log('error ' + e.message); process.exit(1); });
    `]);
    expect(reply.stdout.trim()).toBe('echo hi');
    // Nothing fulcrum ran failed: no ip, no arping, no bind error.
    expect(run.lines.filter((l) => l.level >= 50).map((l) => l.msg)).toEqual([]);
    // It runs as nobody: the process holds only the three capabilities.
    const status = execFileSync('cat', [`/proc/${run.child.pid}/status`], { encoding: 'utf8' });
    expect(status).toMatch(/^NoNewPrivs:\s*1$/m);
    run.child.kill('SIGTERM');
    expect(await run.exited).toBe(0);
    await waitFor(async () => !(await vipHeld()), 5000, 'the VIP released at stop');
  });

  it('without CAP_NET_ADMIN refuses at start, naming it and what needs it, and touches nothing', async () => {
    const run = runAsNobody(['net_bind_service', 'net_raw']);
    expect(await run.exited).toBe(1);
    expect(run.output()).toContain('[FULCRUM_ERR_CAPABILITY]');
    expect(run.output()).toContain(`CAP_NET_ADMIN: needed by ha (ip addr add ${VIP}/24 dev eth0)`);
    expect(run.output()).not.toContain('CAP_NET_BIND_SERVICE:');
    expect(run.output()).not.toContain('CAP_NET_RAW:');
    // Refused before anything started: not one log line of fulcrum's logger, no VIP.
    expect(run.lines.filter((l) => l.app === 'fulcrum')).toEqual([]);
    expect(await vipHeld()).toBe(false);
  });

  it('with no capabilities names all three (no_new_privs: arping cannot get one from a file capability)', async () => {
    const run = runAsNobody([]);
    expect(await run.exited).toBe(1);
    expect(run.output()).toContain(`CAP_NET_BIND_SERVICE: needed by services[web].listen ${VIP}:${PORT} (ports below 1024)`);
    expect(run.output()).toContain('CAP_NET_BIND_SERVICE: needed by ha.bind 10.77.0.1:694 (ports below 1024)');
    expect(run.output()).toContain('CAP_NET_ADMIN: needed by ha');
    expect(run.output()).toContain(`CAP_NET_RAW: needed by ha (arping, the gratuitous ARP for ${VIP}/24)`);
  });

  it('without CAP_NET_RAW but where a file capability on arping could give it: starts and warns; an arping without one fails as warned', async () => {
    // Debian's arping carries cap_net_raw as a file capability; this copy does not (a copy
    // leaves the extended attributes behind).
    const bin = join(dir, 'plain-bin');
    mkdirSync(bin, { mode: 0o755 });
    copyFileSync(execFileSync('sh', ['-c', 'command -v arping'], { encoding: 'utf8' }).trim(), join(bin, 'arping'));
    chmodSync(join(bin, 'arping'), 0o755);
    const run = runAsNobody(['net_bind_service', 'net_admin'], true, `${bin}:`);
    await waitFor(() => run.output().includes('fulcrum run: warning: CAP_NET_RAW (ha (arping, the gratuitous ARP for 10.77.0.100/24)): this process does not hold it'), 10_000, `the warning (fulcrum said: ${run.output()})`);
    await waitFor(() => run.lines.some((l) => l.code === 'FULCRUM_ERR_GARP') || run.child.exitCode !== null, 20_000, 'the failed arping');
    expect(run.child.exitCode, run.output()).toBeNull();
    run.child.kill('SIGTERM');
    expect(await run.exited).toBe(0);
    await waitFor(async () => !(await vipHeld()), 5000, 'the VIP released at stop');
  });
  it('refuses a reload that adds a port below 1024 without CAP_NET_BIND_SERVICE, naming it; the running config keeps serving', async () => {
    const file = join(dir, 'reload.yaml');
    const yaml = (extra: string): string => `
workers: 1
shutdown_grace: 1s
logging: { level: info, connections: false }
services:
  - name: high
    listen: ${SELF}:8080
    backends:
      - address: 127.0.0.1:9000
${extra}`;
    writeFileSync(file, yaml(''), { mode: 0o644 });
    const run = runAsNobody([], false, '', file);
    const ask = async (port: number): Promise<string> => (await lab.exec('peer', NODE, ['-e', `
      const s = require('node:net').connect(${port}, '${SELF}', () => s.write('hi'));
      let got = ''; s.on('data', (d) => (got += d)); s.on('close', () => { console.log(got); process.exit(0); });
      s.on('error', (e) => { console.log('error ' + e.code); process.exit(0); });
    `])).stdout.trim();
    await waitFor(async () => (await ask(8080)) === 'echo hi', 20_000, `fulcrum serving on 8080 (it said: ${run.output()})`);
    writeFileSync(file, yaml(`  - name: low
    listen: ${SELF}:81
    backends:
      - address: 127.0.0.1:9000
`), { mode: 0o644 });
    run.child.kill('SIGHUP');
    await waitFor(() => run.lines.some((l) => l.msg.startsWith('reload refused')), 10_000, `the refusal (fulcrum said: ${run.output()})`);
    const refused = run.lines.find((l) => l.msg.startsWith('reload refused'))!;
    expect(refused.code).toBe('FULCRUM_ERR_CAPABILITY');
    expect(refused.msg).toContain(`CAP_NET_BIND_SERVICE: needed by services[low].listen ${SELF}:81 (ports below 1024)`);
    // Nothing of the new config applied, the old one serves.
    expect(await ask(81)).toBe('error ECONNREFUSED');
    expect(await ask(8080)).toBe('echo hi');
    expect(run.child.exitCode).toBeNull();
    run.child.kill('SIGTERM');
    expect(await run.exited).toBe(0);
  });
});
