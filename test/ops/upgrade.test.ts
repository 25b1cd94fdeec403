/**
 * `fulcrum upgrade`, as an operator runs it: `fulcrum run` as a real process (bin/fulcrum), new
 * connections opened without pause and 200 held connections with traffic, and `fulcrum upgrade`
 * ten times in a row. Not one new connection may be refused or reset, every held one keeps
 * working while its process drains, each old process exits, and the newest one serves — on the
 * native relay and on the JavaScript data path (FULCRUM_RELAY=off in the process's environment).
 * Then what carries over (runtime weight, admin state, a backend added through the API, health),
 * and upgrades that fail (a broken config, a new build that exits at once): the old process keeps
 * serving and `fulcrum upgrade` says why.
 *
 * Addresses: 127.61.0.0/24 (relay .1, JavaScript .2, failures .3, same sockets .4 relay and .5 JavaScript).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort, startEchoServer, startNamedServer, waitFor } from '../helpers/net.ts';
import { startUdpBackend, UdpClient } from '../helpers/udp.ts';
import { tcpMigrateReq } from '../../src/proxy/pool.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = join(ROOT, 'bin', 'fulcrum');
const CLI = join(ROOT, 'src', 'cli.ts');
const TOKEN = 'upgrade-test-token-0123456789';

const cleanups: Array<() => void | Promise<void>> = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

interface Result {
  code: number | null;
  out: string;
}

/** Runs a command to its end (bounded); stdout and stderr together. */
function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 90_000): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...env } });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${args.join(' ')} did not exit within ${timeoutMs}ms\n${out}`));
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

interface Lab {
  dir: string;
  config: string;
  host: string;
  port: number;
  admin: string;
  /** Everything every fulcrum process of this lab printed (they share the first one's stdout/stderr). */
  output(): string;
  first: ChildProcess;
  upgrade(): Promise<Result>;
  /** A pid of this lab's to kill at the end (one that SIGUSR2 started). */
  track(pid: number): void;
  status(): Promise<{ pid: number }>;
  services(): Promise<any>;
}

/**
 * Starts `fulcrum run` (through `entry`, bin/fulcrum by default) on a config made of `services`,
 * with an admin server and a token; every process it becomes is killed at the end.
 */
async function startLab(host: string, yaml: (port: number) => string, options: { env?: NodeJS.ProcessEnv; entry?: string[] } = {}): Promise<Lab> {
  const dir = mkdtempSync(join(tmpdir(), 'fulcrum-upgrade-'));
  const token = join(dir, 'token');
  writeFileSync(token, TOKEN, { mode: 0o600 });
  const port = await freePort(host);
  const adminPort = await freePort(host);
  const config = join(dir, 'fulcrum.yaml');
  writeFileSync(config, `logging:\n  connections: false\nadmin:\n  listen: ${host}:${adminPort}\n  token_file: ${token}\n${yaml(port)}`);
  const entry = options.entry ?? [BIN];
  const first = spawn(entry[0], [...entry.slice(1), 'run', '--config', config], { cwd: ROOT, env: { ...process.env, ...options.env } });
  let out = '';
  first.stdout!.on('data', (d) => (out += d));
  first.stderr!.on('data', (d) => (out += d));
  const admin = `http://${host}:${adminPort}`;
  const pids = new Set<number>([first.pid!]);
  cleanups.push(() => {
    for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  const get = async (path: string): Promise<any> => (await fetch(admin + path, { signal: AbortSignal.timeout(5000) })).json();
  const lab: Lab = {
    dir, config, host, port, admin, first,
    output: () => out,
    async upgrade() {
      const r = await run(BIN, ['upgrade', '--admin', admin, '--token-file', token]);
      const m = /upgraded: pid (\d+) serves/.exec(r.out);
      if (m) pids.add(Number(m[1]));
      return r;
    },
    track: (pid) => void pids.add(pid),
    status: () => get('/api/status'),
    services: () => get('/api/services'),
  };
  try {
    await waitFor(async () => {
      if (first.exitCode !== null) throw new Error(`fulcrum run exited with code ${first.exitCode}`);
      return (await lab.status().catch(() => null))?.pid === first.pid;
    }, 30_000, `fulcrum run (pid ${first.pid}) to serve`, 100);
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${out}`);
  }
  return lab;
}

/** One short connection: connect, send, read the echo, close. */
function oneConnection(host: string, port: number): Promise<'ok' | string> {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    let got = '';
    const timer = setTimeout(() => finish('timeout'), 10_000);
    function finish(r: string): void {
      clearTimeout(timer);
      s.destroy();
      resolve(r);
    }
    s.on('connect', () => s.write('ping\n'));
    s.on('data', (d) => {
      got += d;
      if (got === 'ping\n') finish('ok');
    });
    s.on('error', (err: NodeJS.ErrnoException) => finish(err.code ?? err.message));
    s.on('close', () => finish(got === '' ? 'closed without an answer' : `closed after ${JSON.stringify(got)}`));
  });
}

/**
 * New connections without pause, `parallel` at a time, until stop() (or `max`): counts the good
 * ones and every failure by kind (refused, reset, closed without an answer…).
 */
function churn(host: string, port: number, parallel = 32, max = 2_000_000): { stop(): Promise<void>; ok: () => number; failures: Map<string, number> } {
  let running = true;
  let ok = 0;
  let started = 0;
  const failures = new Map<string, number>();
  const loops = Array.from({ length: parallel }, async () => {
    while (running && started < max) {
      started++;
      const r = await oneConnection(host, port);
      if (r === 'ok') ok++;
      else failures.set(r, (failures.get(r) ?? 0) + 1);
    }
  });
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
    },
    ok: () => ok,
    failures,
  };
}

/** Held connections: each answers a line with its echo; `check` sends one on every connection and waits for all. */
async function hold(host: string, port: number, n: number): Promise<{ sockets: Socket[]; check(tag: string): Promise<void> }> {
  const sockets: Socket[] = [];
  for (let i = 0; i < n; i++) {
    sockets.push(await new Promise<Socket>((resolve, reject) => {
      const s = connect({ host, port }, () => resolve(s));
      s.once('error', reject);
    }));
  }
  for (const s of sockets) s.setEncoding('utf8');
  return {
    sockets,
    async check(tag) {
      await Promise.all(sockets.map((s, i) => new Promise<void>((resolve, reject) => {
        const want = `${tag} ${i}\n`;
        let got = '';
        const timer = setTimeout(() => done(new Error(`held connection ${i}: no echo of ${JSON.stringify(want)} (got ${JSON.stringify(got)})`)), 10_000);
        const onData = (d: string): void => {
          got += d;
          if (got === want) done(null);
        };
        const onClose = (): void => done(new Error(`held connection ${i} closed (before ${JSON.stringify(want)})`));
        function done(err: Error | null): void {
          clearTimeout(timer);
          s.off('data', onData);
          s.off('close', onClose);
          if (err) reject(err);
          else resolve();
        }
        s.on('data', onData);
        s.once('close', onClose);
        s.write(want);
      })));
    },
  };
}

describe.each([
  { path: 'relay', host: '127.61.0.1', env: {} },
  { path: 'javascript', host: '127.61.0.2', env: { FULCRUM_RELAY: 'off' } },
])('fulcrum upgrade, $path data path', ({ host, env, path }) => {
  it('ten upgrades under churn and 200 held connections: nothing refused or reset, every old process exits', async () => {
    const echo = await startEchoServer(host);
    cleanups.push(() => echo.close());
    const lab = await startLab(host, (port) => `workers: 2\nshutdown_grace: 120s\nservices:\n  - name: echo\n    listen: ${host}:${port}\n    backends:\n      - address: ${host}:${echo.port}\n`, { env });
    expect((await lab.status() as any).data_plane.data_path).toBe(path);
    const held = await hold(host, lab.port, 200);
    cleanups.push(() => held.sockets.forEach((s) => s.destroy()));
    await held.check('before');
    const load = churn(host, lab.port);
    const started = performance.now();
    try {
      let pid = lab.first.pid!;
      const olds: number[] = [];
      for (let i = 1; i <= 10; i++) {
        const before = load.ok();
        const r = await lab.upgrade();
        expect(r.code, r.out).toBe(0);
        const next = Number(/upgraded: pid (\d+) serves/.exec(r.out)![1]);
        expect(next).not.toBe(pid);
        expect((await lab.status()).pid).toBe(next);
        olds.push(pid);
        pid = next;
        // Traffic went on through it, and the held connections (on the first process) still answer.
        await waitFor(() => load.ok() > before + 100, 10_000, `new connections after upgrade ${i}`);
        await held.check(`after-${i}`);
        // The one it replaced had only short connections: it has drained and exited (the first holds the 200).
        if (olds.length > 1) await waitFor(() => !alive(olds[olds.length - 1]), 20_000, `old pid ${olds[olds.length - 1]} to exit`, 50);
        expect(load.failures).toEqual(new Map());
      }
      await load.stop();
      const seconds = (performance.now() - started) / 1000;
      console.log(`${path}: ${load.ok()} new connections in ${seconds.toFixed(1)} s (${Math.round(load.ok() / seconds)}/s) across 10 upgrades, none refused or reset`);
      expect(load.failures).toEqual(new Map());
      expect(load.ok()).toBeGreaterThan(2000);
      // The first process drains its 200 until they close (or its grace ends), then exits.
      expect(alive(olds[0])).toBe(true);
      await held.check('last');
      for (const s of held.sockets) s.end();
      await waitFor(() => !alive(olds[0]), 20_000, `the first process (pid ${olds[0]}) to exit once its connections closed`, 50);
      expect(await oneConnection(host, lab.port)).toBe('ok');
    } finally {
      await load.stop();
    }
  }, 300_000);
});

describe('what an upgrade carries over, and upgrades that fail', () => {
  const host = '127.61.0.3';

  it('keeps runtime weight, admin state, a backend added through the API and the health states', async () => {
    const a = await startNamedServer('a', host);
    const b = await startNamedServer('b', host);
    const c = await startNamedServer('c', host);
    const deadPort = await freePort(host);
    cleanups.push(() => a.close(), () => b.close(), () => c.close());
    const lab = await startLab(host, (port) => `workers: 1\nshutdown_grace: 10s\nservices:\n  - name: web\n    listen: ${host}:${port}\n    health: { type: tcp, interval: 1s, timeout: 800ms, rise: 3, fall: 3 }\n    backends:\n      - address: ${host}:${a.port}\n      - address: ${host}:${b.port}\n      - address: ${host}:${deadPort}\n`);
    const auth = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
    const post = async (path: string, body: unknown): Promise<void> => {
      const r = await fetch(lab.admin + path, { method: 'POST', headers: auth, body: JSON.stringify(body) });
      expect(r.status, await r.text()).toBeLessThan(300);
    };
    // The add first: an edit of membership re-applies the config in force, weights included.
    await post('/api/services/web/backends', { address: `${host}:${c.port}`, weight: 3 });
    await post(`/api/services/web/backends/${host}:${a.port}/weight`, { weight: 7 });
    await post(`/api/services/web/backends/${host}:${b.port}/state`, { state: 'drain' });
    const view = (svc: any): Record<string, unknown> => Object.fromEntries(svc.services[0].backends.map((x: any) => [x.address, { weight: x.weight, state: x.state }]));
    const expected = {
      [`${host}:${a.port}`]: { weight: 7, state: 'up' },
      [`${host}:${b.port}`]: { weight: 1, state: 'drain' },
      [`${host}:${c.port}`]: { weight: 3, state: 'up' },
      [`${host}:${deadPort}`]: { weight: 1, state: 'down' },
    };
    let before: Record<string, unknown> = {};
    await waitFor(async () => isDeepStrictEqual(before = view(await lab.services()), expected), 15_000, 'the dead backend down and the added one up').catch((err: Error) => {
      throw new Error(`${err.message}: ${JSON.stringify(before)}`);
    });
    expect(before).toEqual(expected);

    const r = await lab.upgrade();
    expect(r.code, r.out).toBe(0);
    const next = Number(/upgraded: pid (\d+) serves/.exec(r.out)![1]);
    expect((await lab.status()).pid).toBe(next);
    // At once, before any probe of the new process could decide (rise and fall are 3 probes a second apart).
    expect(view(await lab.services())).toEqual(expected);

    // SIGUSR2 (for service managers) does the same; the state carries on again.
    process.kill(next, 'SIGUSR2');
    let third = next;
    await waitFor(async () => (third = (await lab.status().catch(() => ({ pid: next }))).pid) !== next, 30_000, 'a new pid after SIGUSR2', 100);
    lab.track(third);
    await waitFor(() => !alive(next), 20_000, `pid ${next} to exit after SIGUSR2`, 50);
    expect(view(await lab.services())).toEqual(expected);
  }, 120_000);

  it('a broken config or a new build that exits at once: the old process keeps serving and the reason is printed', async () => {
    const echo = await startEchoServer(host);
    cleanups.push(() => echo.close());
    // The install is a copy of the entry point: a "new build" is what this file says when the new process starts.
    const dir = mkdtempSync(join(tmpdir(), 'fulcrum-upgrade-entry-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const entry = join(dir, 'fulcrum.mjs');
    writeFileSync(entry, `const { main } = await import(${JSON.stringify(CLI)});\nprocess.exit(await main(process.argv.slice(2)));\n`);
    const services = (port: number): string => `workers: 2\nshutdown_grace: 10s\nservices:\n  - name: echo\n    listen: ${host}:${port}\n    backends:\n      - address: ${host}:${echo.port}\n`;
    const lab = await startLab(host, services, { entry: [process.execPath, entry] });
    const pid = lab.first.pid!;
    const load = churn(host, lab.port, 8);
    try {
      // 1. A config that does not load.
      const good = readFileSync(lab.config, 'utf8');
      writeFileSync(lab.config, good.replace('workers: 2', 'workers: 99'));
      let r = await lab.upgrade();
      expect(r.code).not.toBe(0);
      expect(r.out).toContain('FULCRUM_ERR_UPGRADE');
      expect(r.out).toContain('workers: must be auto or an integer 1–16, got 99');
      expect(r.out).toMatch(new RegExp(`pid ${pid} keeps serving`));
      expect((await lab.status()).pid).toBe(pid);
      expect(alive(pid)).toBe(true);
      // The old process's log line: its output holds lines a moment to order them (observability/log.ts).
      await waitFor(() => lab.output().includes('upgrade failed, this fulcrum keeps serving'), 3000, 'the old process says the upgrade failed');

      // 2. A new build that exits at once.
      writeFileSync(lab.config, good);
      writeFileSync(entry, `process.stderr.write('this build is broken\\n');\nprocess.exit(3);\n`);
      r = await lab.upgrade();
      expect(r.code).not.toBe(0);
      expect(r.out, lab.output()).toContain('exited with code 3 before it was ready');
      expect((await lab.status()).pid).toBe(pid);
      await waitFor(() => lab.output().includes('this build is broken'), 5000, 'the broken build\'s message in the shared log');

      // 3. Mended: the upgrade goes through, and the old process exits.
      writeFileSync(entry, `const { main } = await import(${JSON.stringify(CLI)});\nprocess.exit(await main(process.argv.slice(2)));\n`);
      r = await lab.upgrade();
      expect(r.code, r.out).toBe(0);
      await waitFor(() => !alive(pid), 20_000, `old pid ${pid} to exit`, 50);
      await load.stop();
      expect(load.failures).toEqual(new Map());
      expect(load.ok()).toBeGreaterThan(100);
    } finally {
      await load.stop();
    }
  }, 180_000);
});

describe('net.ipv4.tcp_migrate_req', () => {
  it('is read from the kernel where it has it, and is null where it does not', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fulcrum-sysctl-'));
    try {
      writeFileSync(join(dir, 'on'), '1\n');
      writeFileSync(join(dir, 'off'), '0\n');
      expect(tcpMigrateReq(join(dir, 'on'))).toBe(1);
      expect(tcpMigrateReq(join(dir, 'off'))).toBe(0);
      expect(tcpMigrateReq(join(dir, 'missing'))).toBeNull();
      // This machine's kernel (5.14+) has it.
      expect([0, 1]).toContain(tcpMigrateReq());
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.each([
  { path: 'relay', host: '127.61.0.4', env: {} },
  { path: 'javascript', host: '127.61.0.5', env: { FULCRUM_RELAY: 'off' } },
])('the sockets handed over are the same sockets, $path data path', ({ host, env }) => {

  /** The inodes of the sockets bound at host:port, as the kernel lists them (/proc/net/tcp in listen state, or /proc/net/udp). */
  function inodes(proto: 'tcp' | 'udp', port: number): string[] {
    const addr = host.split('.').map((o) => Number(o).toString(16).padStart(2, '0').toUpperCase()).reverse().join('');
    const local = `${addr}:${port.toString(16).padStart(4, '0').toUpperCase()}`;
    return readFileSync(`/proc/net/${proto}`, 'utf8').split('\n').slice(1).map((l) => l.trim().split(/\s+/))
      .filter((f) => f[1] === local && (proto === 'udp' || f[3] === '0A')).map((f) => f[9]).sort();
  }

  it('TCP and UDP listeners keep their sockets (inodes) across an upgrade; datagrams are answered by the new process', async () => {
    const echo = await startEchoServer(host);
    const backend = await startUdpBackend('u', host);
    cleanups.push(() => echo.close(), () => backend.close());
    const udpPort = await freePort(host);
    const lab = await startLab(host, (port) => `workers: 2\nshutdown_grace: 10s\nservices:\n  - name: tcp\n    listen: ${host}:${port}\n    backends:\n      - address: ${host}:${echo.port}\n  - name: udp\n    protocol: udp\n    listen: ${host}:${udpPort}\n    backends:\n      - address: ${backend.address}\n`, { env });
    const tcpBefore = inodes('tcp', lab.port);
    const udpBefore = inodes('udp', udpPort);
    expect(tcpBefore).toHaveLength(2);
    expect(udpBefore).toHaveLength(2);
    const client = await UdpClient.open(host);
    cleanups.push(() => client.close());
    expect(await client.ask('ping', udpPort, host)).toBe('u|ping');

    const r = await lab.upgrade();
    expect(r.code, r.out).toBe(0);
    const pid = lab.first.pid!;
    await waitFor(() => !alive(pid), 20_000, `old pid ${pid} to exit`, 50);
    expect(inodes('tcp', lab.port)).toEqual(tcpBefore);
    expect(inodes('udp', udpPort)).toEqual(udpBefore);
    // The old flow ended with the old process; the next datagram is a new flow in the new one.
    expect(await client.ask('again', udpPort, host)).toBe('u|again');
    expect(await oneConnection(host, lab.port)).toBe('ok');
  }, 120_000);
});
