/**
 * A real dnsmasq (Debian's package) for discovery tests: authoritative for `.test` (--local), no
 * upstream, its A/AAAA records from a hosts file the test rewrites (setHosts: the file, then
 * SIGHUP — dnsmasq re-reads --addn-hosts on SIGHUP, never its config), and fixed SRV records
 * (--srv-host) whose targets resolve through that file. pause()/resume() stop and continue the
 * process (SIGSTOP/SIGCONT): a resolver that stops answering.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { Resolver } from 'node:dns/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitFor } from './net.ts';

export interface Dnsmasq {
  host: string;
  port: number;
  /** "host:port", as discover.dns.resolvers takes it. */
  address: string;
  /** Rewrites the hosts file ("127.3.23.1 db.test" lines) and sends SIGHUP; resolves once dnsmasq answers with it. */
  setHosts(lines: string[]): Promise<void>;
  pause(): void;
  resume(): void;
  stop(): Promise<void>;
}

export async function startDnsmasq(host: string, opts: { srv?: string[]; hosts?: string[] } = {}): Promise<Dnsmasq> {
  const dir = await mkdtemp(join(tmpdir(), 'fulcrum-dnsmasq-'));
  const hostsFile = join(dir, 'hosts');
  await writeFile(hostsFile, (opts.hosts ?? []).join('\n') + '\n');
  const port = await freePort(host);
  const child: ChildProcess = spawn('dnsmasq', [
    '-k', '--conf-file=/dev/null', '--no-resolv', '--no-hosts', `--addn-hosts=${hostsFile}`,
    `--listen-address=${host}`, '--bind-interfaces', `--port=${port}`, '--local=/test/', '--user=root', '--pid-file=',
    ...(opts.srv ?? []).map((s) => `--srv-host=${s}`),
  ], { stdio: 'ignore' });
  let exited = false;
  const exitPromise = new Promise<void>((resolve) => child.once('exit', () => { exited = true; resolve(); }));
  const resolver = new Resolver({ timeout: 300, tries: 1 });
  resolver.setServers([`${host}:${port}`]);
  // A marker name in the hosts file: once it resolves to the generation written, dnsmasq has the file.
  let generation = 0;
  const marker = (g: number) => `127.255.${Math.floor(g / 250)}.${(g % 250) + 1} marker.test`;
  const answersWith = async (g: number) => (await resolver.resolve4('marker.test').catch((): string[] => [])).includes(marker(g).split(' ')[0]);
  const setHosts = async (lines: string[]) => {
    const g = ++generation;
    await writeFile(hostsFile, [...lines, marker(g)].join('\n') + '\n');
    child.kill('SIGHUP');
    await waitFor(() => answersWith(g), 5000, 'dnsmasq to re-read its hosts file', 20);
  };
  const stop = async () => {
    if (!exited) {
      child.kill('SIGCONT');
      child.kill('SIGKILL');
      await exitPromise;
    }
    await rm(dir, { recursive: true, force: true });
  };
  const up = await waitFor(async () => exited || (await resolver.resolve4('marker.test').then(() => true, (e) => e.code === 'ENOTFOUND')), 10_000, 'dnsmasq to answer', 50).then(() => !exited, () => false);
  if (!up) {
    await stop();
    throw new Error(`dnsmasq on ${host}:${port} did not start (is dnsmasq installed?)`);
  }
  if (opts.hosts) await setHosts(opts.hosts);
  return {
    host, port, address: `${host}:${port}`, setHosts, stop,
    pause: () => child.kill('SIGSTOP'),
    resume: () => child.kill('SIGCONT'),
  };
}
