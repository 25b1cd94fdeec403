/**
 * The command line, run as an operator runs it: bin/fulcrum as a subprocess.
 * Addresses: 127.2.7.0/24.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { CTL_USAGE } from '../../src/admin/ctl.ts';
import { describeDemo } from '../../src/demo/demo.ts';
import { connectClient, freePort, staysFalse, startEchoServer, waitClose, waitFor, type TestServer } from '../helpers/net.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = join(ROOT, 'bin', 'fulcrum');
const FIXTURES = join(ROOT, 'test', 'cli', 'fixtures');
const HOST = '127.2.7.1';

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function fulcrum(args: string[], timeoutMs = 20_000, env: Record<string, string> = {}): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, args, { cwd: ROOT, env: { ...process.env, PATH: '/usr/bin:/bin', ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`fulcrum ${args.join(' ')} did not exit within ${timeoutMs}ms\n${stdout}\n${stderr}`));
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Each broken fixture, and what its report must quote: the path and the offending value. */
const BROKEN: Record<string, string[]> = {
  'bad-weight.yaml': ['services[0].backends[0].weight: must be an integer 0–256, got -1'],
  'unknown-key.yaml': ['services[0].balanse: unknown key; did you mean "balance"?'],
  'bad-duration.yaml': ['services[0].timeouts.connect:', 'got "5 seconds"'],
  'bad-address.yaml': ['services[0].listen:', 'got "127.2.7.1:70000"', 'services[0].backends[0].address:', 'got "db1.internal"'],
  'duplicate-listen.yaml': ['services[1].listen: duplicates services[0].listen, got "127.2.7.1:15432"'],
  'no-backends.yaml': ['services[0].backends: must list at least one backend'],
  'many-problems.yaml': [
    '4 problems',
    'workers: must be auto or an integer 1–16, got 99',
    'services[0].balance:', 'got "fastest"',
    'services[0].table_size: must be a prime', 'got 100',
    'services[0].backends[0].max_connections:', 'got -5',
  ],
  // One message, at the [ left open (the parser notices at the end of the file).
  'not-yaml.yaml': ['1 problem:', 'YAML: line 3, column 13: the [ opened here is not closed'],
};

let tmp = '';
let echo: TestServer;
const children: ChildProcess[] = [];

/** Starts bin/fulcrum with `args` (killed in afterAll if still running); `output()` is everything it printed so far. */
function startLive(args: string[], env: Record<string, string> = {}): { child: ChildProcess; output: () => string } {
  const child = spawn(BIN, args, { cwd: ROOT, env: { ...process.env, PATH: '/usr/bin:/bin', ...env } });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  return { child, output: () => out };
}

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'fulcrum-cli-'));
  echo = await startEchoServer(HOST);
});

afterAll(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  await echo.close();
  rmSync(tmp, { recursive: true, force: true });
});

describe('fulcrum check', () => {
  for (const [file, expected] of Object.entries(BROKEN)) {
    it(`prints every problem of ${file} and exits 1`, async () => {
      const path = join(FIXTURES, file);
      const r = await fulcrum(['check', '--config', path]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(path);
      expect(r.stderr).toContain('FULCRUM_ERR_CONFIG_INVALID');
      for (const e of expected) expect(r.stderr).toContain(e);
      expect(r.stdout).not.toContain('config OK');
    });
  }

  it('says config OK and exits 0 for a good config', async () => {
    const r = await fulcrum(['check', '--config', join(FIXTURES, 'good.yaml')]);
    expect(r.stdout).toContain('config OK');
    expect(r.code).toBe(0);
  });

  it('exits 1 naming the file when it cannot be read', async () => {
    const r = await fulcrum(['check', '--config', join(tmp, 'missing.yaml')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('FULCRUM_ERR_CONFIG_UNREADABLE');
    expect(r.stderr).toContain('missing.yaml');
  });
});

/**
 * Configs the file's own validation passes but this machine cannot run: `fulcrum check` reports
 * each as `fulcrum run` refuses it (src/control/preflight.ts serves both). Built in beforeAll:
 * each names files in `tmp`.
 */
const PREFLIGHT_NAMES = [
  'one address under two names (localhost and 127.0.0.1)', 'a missing admin.token_file', 'a missing ha.secret_file',
  'a heartbeat key too short', 'a probe password file others can read', 'a missing ca_file', "the admin server on a service's address",
  'every problem at once',
];
function preflightCases(): Record<string, { yaml: string; expected: string[] }> {
  const secret = (name: string, text: string, mode: number): string => {
    const f = join(tmp, name);
    writeFileSync(f, text, { mode });
    chmodSync(f, mode);
    return f;
  };
  const service = (name: string, listen: string, extra = '') => `  - name: ${name}\n    listen: ${listen}\n${extra}    backends: [{ address: ${HOST}:6001 }]\n`;
  const ha = (secretFile: string) => `ha:\n  vip: 198.51.100.10/24\n  interface: lo\n  bind: 127.2.7.1:5999\n  peer: 127.2.7.2:5999\n  priority: 100\n  secret_file: ${secretFile}\n`;
  const openPw = secret('open.pw', 'pw\n', 0o644);
  const shortKey = secret('short.key', 'short\n', 0o600);
  return {
    'one address under two names (localhost and 127.0.0.1)': {
      yaml: `services:\n${service('a', '127.0.0.1:6380')}${service('b', 'localhost:6380')}`,
      expected: ['services[1].listen: is the address of services[0].listen (127.0.0.1:6380): the two would share its connections, got "localhost:6380"'],
    },
    'a missing admin.token_file': {
      yaml: `admin: { listen: ${HOST}:9911, token_file: no-such.token }\nservices:\n${service('a', `${HOST}:6380`)}`,
      expected: [`admin.token_file: ${join(tmp, 'no-such.token')}: cannot read (ENOENT)`],
    },
    'a missing ha.secret_file': {
      yaml: `${ha(join(tmp, 'no-such.secret'))}services:\n${service('a', `${HOST}:6380`)}`,
      expected: [`ha.secret_file: ${join(tmp, 'no-such.secret')}: cannot read (ENOENT)`],
    },
    'a heartbeat key too short': {
      yaml: `${ha(shortKey)}services:\n${service('a', `${HOST}:6380`)}`,
      expected: [`ha.secret_file: ${shortKey}: must hold at least 16 bytes of key, has 5`],
    },
    'a probe password file others can read': {
      yaml: `services:\n${service('a', `${HOST}:6380`, `    health: { type: postgres, postgres: { user: u, password_file: ${openPw} } }\n`)}`,
      expected: [`services[0].health.postgres.password_file: ${openPw}: is accessible by group or others (mode 0644); a secret file must be 0600 or 0400`],
    },
    'a missing ca_file': {
      yaml: `services:\n${service('a', `${HOST}:6380`, `    health: { type: redis, redis: { tls: verify-full, ca_file: no-such-ca.pem } }\n`)}`,
      expected: [`services[0].health.redis.ca_file: ${join(tmp, 'no-such-ca.pem')}: cannot read (ENOENT)`],
    },
    'the admin server on a service\'s address': {
      yaml: `admin: { listen: localhost:6380 }\nservices:\n${service('a', '127.0.0.1:6380')}`,
      expected: ['admin.listen: is the address of services[0].listen (127.0.0.1:6380), got "localhost:6380"'],
    },
    'every problem at once': {
      yaml: `admin: { listen: ${HOST}:9911, token_file: no-such.token }\nservices:\n${service('a', '127.0.0.1:6380')}${service('b', 'localhost:6380', `    health: { type: postgres, postgres: { password_file: ${openPw} } }\n`)}`,
      expected: ['3 problems', 'services[1].listen: is the address of services[0].listen', 'admin.token_file:', 'services[1].health.postgres.password_file:'],
    },
  };
}

describe('fulcrum check catches what fulcrum run refuses (one preflight for both)', () => {
  let cases: ReturnType<typeof preflightCases>;
  beforeAll(() => {
    cases = preflightCases();
  });
  for (const name of PREFLIGHT_NAMES) {
    it(name, async () => {
      expect(Object.keys(cases)).toEqual(PREFLIGHT_NAMES);
      const { yaml, expected } = cases[name];
      const file = join(tmp, `preflight-${Object.keys(cases).indexOf(name)}.yaml`);
      writeFileSync(file, yaml);
      const [check, run] = await Promise.all([fulcrum(['check', '--config', file]), fulcrum(['run', '--config', file])]);
      for (const r of [check, run]) {
        expect(r.code, r.stderr).toBe(1);
        expect(r.stderr).toContain('FULCRUM_ERR_CONFIG_INVALID');
        for (const e of expected) expect(r.stderr).toContain(e);
      }
      expect(check.stdout).not.toContain('config OK');
      // The same report, word for word, after the command's name.
      expect(check.stderr.replace(/^fulcrum check: /, '')).toBe(run.stderr.replace(/^fulcrum run: /, ''));
    });
  }
});

describe('fulcrum run', () => {
  for (const file of Object.keys(BROKEN)) {
    it(`refuses to start on ${file}`, async () => {
      const r = await fulcrum(['run', '--config', join(FIXTURES, file)]);
      expect(r.code).not.toBe(0);
      for (const e of BROKEN[file]) expect(r.stderr).toContain(e);
    });
  }

  it('serves a good config and stops gracefully on SIGTERM, letting an open session finish', async () => {
    const port = await freePort(HOST);
    const file = join(tmp, 'run.yaml');
    writeFileSync(file, `
workers: 2
shutdown_grace: 10s
logging: { level: info, connections: true }
services:
  - name: echo
    listen: ${HOST}:${port}
    backends: [{ address: ${echo.address} }]
`);
    const { child, output } = startLive(['run', '--config', file]);
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await waitFor(() => output().includes('data plane ready'), 15_000, `fulcrum run to be ready; output: ${output()}`);
    const s = await connectClient(port, HOST);
    const roundTrip = (text: string): Promise<string> => new Promise((resolve) => {
      s.once('data', (d) => resolve(d.toString()));
      s.write(text);
    });
    expect(await roundTrip('hello')).toBe('hello');
    child.kill('SIGTERM');
    await waitFor(() => output().includes('stopping'), 5000, 'the stop to begin').catch((e) => { throw new Error(e.message + output() + ' exit=' + child.exitCode + ' sig=' + child.signalCode); });
    expect(await roundTrip('still here')).toBe('still here');
    s.end();
    expect(await exited).toBe(0);
    // The connection log line of the finished session (one JSON line per closed connection).
    const line = output().split('\n').find((l) => l.includes('"msg":"connection"'));
    expect(line, output()).toBeDefined();
    const rec = JSON.parse(line as string);
    expect(rec).toMatchObject({ service: 'echo', backend: echo.address, bytes_in: 15, bytes_out: 15, reason: 'client_closed' });
  });

  it('a reload turns the log level and per-connection lines on and off, without a restart', async () => {
    const port = await freePort(HOST);
    const file = join(tmp, 'logging.yaml');
    const yaml = (logging: string) => `
workers: 2
logging: ${logging}
services:
  - name: logged
    listen: ${HOST}:${port}
    backends: [{ address: ${echo.address} }]
`;
    writeFileSync(file, yaml('{ level: warn, connections: false }'));
    const { child, output } = startLive(['run', '--config', file]);
    const lines = (msg: string) => output().split('\n').filter((l) => l.includes(`"msg":"${msg}"`)).length;
    const oneSession = async (text: string) => {
      const s = await connectClient(port, HOST);
      const echoed = new Promise<string>((resolve) => s.once('data', (d) => resolve(d.toString())));
      s.write(text);
      expect(await echoed).toBe(text);
      s.end();
      await waitClose(s, 3000);
    };
    // Level warn: not even 'data plane ready' is printed; wait for the listener instead.
    await waitFor(async () => {
      try {
        (await connectClient(port, HOST)).destroy();
        return true;
      } catch {
        return false;
      }
    }, 15_000, 'fulcrum run to listen');
    await oneSession('quiet');
    // Nothing must come: a bounded look in real time (another process), longer than the workers'
    // flush period (their lines are flushed at least once a second).
    await staysFalse(() => lines('connection') > 0, 1500, 'a connection line at level warn');

    writeFileSync(file, yaml('{ level: info, connections: true }'));
    child.kill('SIGHUP');
    await waitFor(() => output().includes('reload applied'), 5000, 'the reload');
    expect(output()).not.toContain('needs a restart');
    await oneSession('loud');
    await waitFor(() => lines('connection') === 1, 3000, 'a connection line after the reload');
    expect(output()).toContain('"bytes_in":4');

    writeFileSync(file, yaml('{ level: info, connections: false }'));
    child.kill('SIGHUP');
    await waitFor(() => output().split('reload applied').length === 3, 5000, 'the second reload');
    await oneSession('quiet again');
    await staysFalse(() => lines('connection') > 1, 1500, 'a connection line with connections: false'); // as above
    expect(lines('connection')).toBe(1);
    child.kill('SIGTERM');
  });

  /**
   * Lowers a running process's open-files limit (prlimit) so that exactly `spare` more
   * descriptors fit; returns what puts the old limit back.
   */
  function lowerOpenFiles(pid: number, spare: number): () => void {
    const open = new Set(readdirSync(`/proc/${pid}/fd`).map(Number));
    const free: number[] = [];
    for (let fd = 0; free.length <= spare; fd++) if (!open.has(fd)) free.push(fd);
    const soft = readFileSync(`/proc/${pid}/limits`, 'utf8').match(/Max open files\s+(\d+)/)![1];
    execFileSync('prlimit', ['--pid', String(pid), `--nofile=${free[spare]}:`]);
    return () => execFileSync('prlimit', ['--pid', String(pid), `--nofile=${soft}:`]);
  }

  /** `fulcrum run` with one service, `tight`, in front of the echo server (`extra`: more of its settings). */
  async function runTight(name: string, extra = ''): Promise<ReturnType<typeof startLive> & { port: number }> {
    const port = await freePort(HOST);
    const file = join(tmp, `${name}.yaml`);
    writeFileSync(file, `
workers: 1
logging: { level: info, connections: false }
services:
  - name: tight
    listen: ${HOST}:${port}
${extra}    backends: [{ address: ${echo.address} }]
`);
    return { ...startLive(['run', '--config', file]), port };
  }

  it('out of open files for a backend socket: says so, does not blame the backend, serves again once files are free', async () => {
    // One connect failure in the data plane would mark the backend down (passive health); the
    // next probe is 30 s away, after the test.
    const { child, output, port } = await runTight('emfile', '    health: { type: tcp, interval: 30s, observe_failures: 1 }\n');
    await waitFor(() => output().includes('data plane ready') && output().includes('"msg":"backend healthy"'), 15_000, 'fulcrum run to be ready');
    // Exactly one more descriptor fits: the next client is accepted into it, and the backend
    // socket for that client cannot be made.
    const restore = lowerOpenFiles(child.pid!, 1);
    const s = await connectClient(port, HOST);
    s.on('error', () => {});
    s.write('x');
    await waitClose(s, 3000);
    await waitFor(() => /cannot open a backend connection on service tight: EMFILE: the open-files limit is reached/.test(output()), 3000,
      'the EMFILE in the log');
    restore();
    // The backend was not blamed (no passive-health failure, no state change), and the next client is served.
    expect(output()).not.toContain('"to":"down"');
    const again = await connectClient(port, HOST);
    const reply = new Promise<string>((resolve) => again.once('data', (d) => resolve(d.toString())));
    again.write('again');
    expect(await reply).toBe('again');
    again.destroy();
    child.kill('SIGTERM');
  });

  it('out of open files at accept: says so, pauses accepting, and serves the waiting client once files are free', async () => {
    const { child, output, port } = await runTight('emfile-accept');
    await waitFor(() => output().includes('data plane ready'), 15_000, 'fulcrum run to be ready');
    // No descriptor left: the next connection waits in the listen backlog, accept fails.
    const restore = lowerOpenFiles(child.pid!, 0);
    const s = await connectClient(port, HOST); // the kernel completes the handshake from the backlog
    s.on('error', () => {});
    const reply = new Promise<string>((resolve) => s.once('data', (d) => resolve(d.toString())));
    s.write('waited');
    await waitFor(() => /accept failed on service tight: EMFILE: the open-files limit is reached/.test(output()), 3000,
      'the EMFILE in the log');
    restore();
    // The listener was paused, not closed: the same client is accepted and served.
    expect(await reply).toBe('waited');
    s.destroy();
    child.kill('SIGTERM');
  });

  it('fails with a clear message when the listen address is taken', async () => {
    const file = join(tmp, 'busy.yaml');
    writeFileSync(file, `
workers: 1
logging: { level: silent }
services:
  - name: busy
    listen: ${echo.address}
    backends: [{ address: 127.2.7.9:1 }]
`);
    const r = await fulcrum(['run', '--config', file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('FULCRUM_ERR_LISTEN');
    expect(r.stderr).toContain(echo.address);
  });
});

describe('usage', () => {
  it('--help prints the commands and exits 0', async () => {
    const r = await fulcrum(['--help']);
    expect(r.code).toBe(0);
    for (const c of ['run', 'check', 'demo']) expect(r.stdout).toContain(c);
  });

  it('--version prints the package version and the commit the build recorded, without git at run time', async () => {
    const { version } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
    const { commit } = JSON.parse(readFileSync(join(ROOT, 'build', 'out', 'version.json'), 'utf8'));
    // No PATH at all: nothing (git included) can be run by name.
    const out = execFileSync(process.execPath, [join(ROOT, 'src', 'cli.ts'), '--version'], { cwd: ROOT, env: { PATH: '' }, encoding: 'utf8' });
    expect(out).toBe(`fulcrum ${version}${commit ? ` (commit ${commit})` : ''} on Node.js ${process.version}\n`);
    const r = await fulcrum(['-V']);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(out);
    expect((await fulcrum(['--help'])).stdout).toContain('fulcrum --version');
  });

  it('the build records the commit from git, or from FULCRUM_COMMIT, or null', () => {
    const file = join(tmp, 'version.json');
    const head = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
    const builder = join(ROOT, 'build', 'version.ts');
    const run = (env: Record<string, string>, cwd = ROOT): string => execFileSync(process.execPath, ['-e',
      `import(${JSON.stringify(builder)}).then((m) => process.stdout.write(JSON.stringify(m.writeVersion(${JSON.stringify(file)}))))`],
    { cwd, env: { ...process.env, ...env }, encoding: 'utf8' });
    expect(JSON.parse(run({ FULCRUM_COMMIT: '' })).commit).toMatch(new RegExp(`^${head}(-dirty)?$`));
    expect(JSON.parse(readFileSync(file, 'utf8')).commit).toMatch(new RegExp(`^${head}(-dirty)?$`));
    expect(JSON.parse(run({ FULCRUM_COMMIT: 'abc123' })).commit).toBe('abc123');
    // Without git on PATH (a tarball build): null, and the build does not fail.
    expect(JSON.parse(run({ FULCRUM_COMMIT: '', PATH: '' })).commit).toBeNull();
  });

  it('an unknown command prints usage and exits 2', async () => {
    const r = await fulcrum(['frobnicate']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('unknown command "frobnicate"');
    expect(r.stderr).toContain('usage: fulcrum');
  });

  it('a missing --config is a usage error (exit 2)', async () => {
    const r = await fulcrum(['check']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--config FILE is required');
  });
});

describe('the config file without --config', () => {
  it('--help names the rule and the default path', async () => {
    const r = await fulcrum(['--help']);
    expect(r.stdout).toContain('--config FILE, else $FULCRUM_CONFIG, else /etc/fulcrum/fulcrum.yaml');
    expect(CTL_USAGE).toContain('(default: $FULCRUM_CONFIG, else /etc/fulcrum/fulcrum.yaml when it exists)');
  });

  it('check reads FULCRUM_CONFIG; --config wins over it', async () => {
    const good = join(FIXTURES, 'good.yaml');
    const r = await fulcrum(['check'], 20_000, { FULCRUM_CONFIG: good });
    expect(r.stdout).toBe(`${good}: config OK\n`);
    expect(r.code).toBe(0);
    const bad = await fulcrum(['check', '--config', join(FIXTURES, 'bad-weight.yaml')], 20_000, { FULCRUM_CONFIG: good });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('bad-weight.yaml');
  });

  it('run and ctl find the config, the admin address and the token through FULCRUM_CONFIG', async () => {
    const dir = mkdtempSync(join(tmp, 'env-'));
    const [port, adminPort] = await Promise.all([freePort(HOST), freePort(HOST)]);
    // A relative token_file: beside the config, wherever fulcrum runs from (cwd is the repository).
    writeFileSync(join(dir, 'admin.token'), 'env-token\n', { mode: 0o600 });
    const file = join(dir, 'fulcrum.yaml');
    writeFileSync(file, `
workers: 1
logging: { level: info, connections: false }
admin: { listen: ${HOST}:${adminPort}, token_file: admin.token }
services:
  - name: echo
    listen: ${HOST}:${port}
    backends: [{ address: ${echo.address} }]
`);
    const env = { FULCRUM_CONFIG: file };
    const { child, output } = startLive(['run'], env);
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await waitFor(() => output().includes('data plane ready'), 15_000, `fulcrum run to be ready; output: ${output()}`);
    const drain = await fulcrum(['ctl', 'state', 'echo', echo.address, 'drain'], 20_000, env);
    expect(drain.stderr).toBe('');
    expect(drain.stdout).toContain(`echo ${echo.address}: drain`);
    const list = await fulcrum(['ctl', 'list', '--json'], 20_000, env);
    expect(JSON.parse(list.stdout).services[0].backends[0].state).toBe('drain');
    const status = await fulcrum(['status'], 20_000, env);
    expect(status.stdout).toContain(`config       ${file}`);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});

describe('fulcrum demo', () => {
  it('logs readable text lines (examples/demo.yaml), not JSON', async () => {
    const { DEMO_CONFIG } = await import('../../src/demo/demo.ts');
    const { loadConfig } = await import('../../src/config/load.ts');
    expect(loadConfig(DEMO_CONFIG).logging).toMatchObject({ format: 'text', connections: true });
  });

  it('serves the demo backends through fulcrum and stops cleanly on SIGINT', async () => {
    const p = await Promise.all(Array.from({ length: 6 }, () => freePort(HOST)));
    const file = join(tmp, 'demo.yaml');
    writeFileSync(file, `
workers: 1
logging: { level: warn, connections: false }
admin: { listen: ${HOST}:${p[5]} }
services:
  - name: web
    listen: ${HOST}:${p[0]}
    balance: roundrobin
    backends:
      - { address: ${HOST}:${p[1]}, weight: 1 }
      - { address: ${HOST}:${p[2]}, weight: 1 }
      - { address: ${HOST}:${p[3]}, weight: 2 }
  - name: tcp
    listen: ${HOST}:${p[4]}
    balance: maglev
    backends: [{ address: ${HOST}:${await freePort(HOST)} }]
`);
    const { child, output } = startLive(['demo', '--config', file]);
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await waitFor(() => output().includes('fulcrum demo is running'), 15_000, `the demo to start; output: ${output()}`);
    const answers: string[] = [];
    for (let i = 0; i < 8; i++) {
      const res = await fetch(`http://${HOST}:${p[0]}/`);
      answers.push(await res.text());
    }
    const count = (n: string): number => answers.filter((a) => a.startsWith(`${n} (`)).length;
    expect(answers.every((a) => a.endsWith('served you\n')), answers.join('')).toBe(true);
    expect([count('backend-1'), count('backend-2'), count('backend-3')]).toEqual([2, 2, 4]);
    // The banner says what one sees: 4 of 8 is 2 of every 4.
    expect(output()).toContain('weighted round-robin 1:1:2: backend-3 answers 2 of every 4 requests');
    expect(output()).toContain(`for i in $(seq 8); do curl -s http://${HOST}:${p[0]}/; done`);

    // Only commands a Debian machine has: no nc; the raw TCP line is bash's /dev/tcp, and it works.
    const banner = output().slice(output().indexOf('fulcrum demo is running'));
    expect(banner).not.toMatch(/^\s*nc /m);
    // Every line it suggests starts with a command this machine has (or is a URL to open).
    const suggested = banner.split('\n').filter((l) => /^  \S/.test(l)).map((l) => l.trim().split(/\s/)[0]);
    expect(suggested.length).toBeGreaterThan(5);
    for (const word of suggested.filter((w) => !w.startsWith('http://'))) {
      expect(execFileSync('bash', ['-c', `type -t ${word} || echo missing`], { encoding: 'utf8', cwd: ROOT }).trim(), word).toMatch(/^(file|keyword|builtin)$/);
    }
    const tcpLine = banner.split('\n').map((l) => l.trim()).find((l) => l.startsWith('bash -c'));
    expect(tcpLine, banner).toBeDefined();
    expect(execFileSync('bash', ['-c', tcpLine!], { encoding: 'utf8', timeout: 10_000 })).toMatch(/^tcp-backend-1 \(.*\) here; type a line/);

    // A working admin token: the banner names the file (mode 0600) and a config copy that names it,
    // and `fulcrum ctl` with that copy drains a backend, read back through the API.
    const copy = /ctl --config (\S+) list/.exec(banner)?.[1];
    const tokenFile = /admin token is in\s+(\S+), mode 0600/.exec(banner)?.[1];
    expect(copy, banner).toBeDefined();
    expect(tokenFile, banner).toBeDefined();
    expect(statSync(tokenFile!).mode & 0o777).toBe(0o600);
    const token = readFileSync(tokenFile!, 'utf8').trim();
    expect(banner).toContain(`  http://${HOST}:${p[5]}/#token=${token}`);
    const drain = await fulcrum(['ctl', '--config', copy!, 'state', 'web', `${HOST}:${p[1]}`, 'drain']);
    expect(drain.stderr).toBe('');
    expect(drain.code).toBe(0);
    const list = await fulcrum(['ctl', '--config', copy!, 'list', '--json']);
    expect(list.code).toBe(0);
    const web = JSON.parse(list.stdout).services.find((s: { name: string }) => s.name === 'web');
    expect(web.backends.find((b: { address: string }) => b.address === `${HOST}:${p[1]}`).state).toBe('drain');
    // Without the token the same change is refused: the token is what made it work.
    const refused = await fulcrum(['ctl', '--admin', `${HOST}:${p[5]}`, 'state', 'web', `${HOST}:${p[1]}`, 'ready']);
    expect(refused.code).toBe(1);

    child.kill('SIGINT');
    expect(await exited).toBe(0);
    expect(output()).toContain('stopping the demo');
    // The temporary folder with the token goes with the demo.
    expect(existsSync(tokenFile!)).toBe(false);
  });

  it('--help describes the demo its own config runs (six backends), read from examples/demo.yaml', async () => {
    const demo = parseYaml(readFileSync(join(ROOT, 'examples', 'demo.yaml'), 'utf8')) as { services: { name: string; backends: unknown[] }[] };
    const total = demo.services.reduce((n, s) => n + s.backends.length, 0);
    expect(total).toBe(6);
    const r = await fulcrum(['--help']);
    expect(r.stdout).toMatch(/^  demo +run six local backends \(web: 3 HTTP, tcp: 3 raw TCP\) behind fulcrum/m);
    // And derived, not written twice: a config with other counts is described by them.
    const other = join(tmp, 'demo-two.yaml');
    writeFileSync(other, `services:\n  - { name: web, listen: ${HOST}:1, backends: [{ address: ${HOST}:2 }, { address: ${HOST}:3 }] }\n`);
    expect(describeDemo(other)).toBe('run two local backends (web: 2 HTTP) behind fulcrum and show what to try');
  });
});
