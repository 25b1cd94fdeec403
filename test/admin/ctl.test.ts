/**
 * `fulcrum ctl` and `fulcrum status` against a real running fulcrum: each command, the defaults
 * taken from --config, and the API's refusals printed with their codes and a non-zero exit.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { runCtl } from '../../src/admin/ctl.ts';
import { startNamedServer, waitFor, type TestServer } from '../helpers/net.ts';
import { backendView, startStack, type Stack } from './stack.ts';

const HOST = '127.5.6.1';
const ROOT = new URL('../../', import.meta.url).pathname;
let stack: Stack;
let extra: TestServer;

async function ctl(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runCtl(argv, { out: (l) => out.push(l), err: (l) => err.push(l) });
  return { code, out: out.join('\n'), err: err.join('\n') };
}

beforeAll(async () => {
  stack = await startStack({ host: HOST, backends: 2 });
  extra = await startNamedServer('x', HOST);
});

afterAll(async () => {
  await stack?.close();
  await extra?.close();
});

describe('fulcrum ctl', () => {
  it('lists services and backends, with defaults from --config', async () => {
    const r = await ctl('list', '--config', stack.configFile);
    expect(r.code).toBe(0);
    expect(r.out).toContain(`web  ${HOST}:${stack.servicePort}  roundrobin`);
    expect(r.out).toMatch(new RegExp(`${stack.backends[0].address.replace(/\./g, '\\.')}\\s+up\\s+1\\s+0`));
    const json = await ctl('list', '--admin', stack.admin, '--json');
    expect(JSON.parse(json.out).services[0].name).toBe('web');
  });

  it('sets state and weight, adds and removes', async () => {
    const a = stack.backends[0].address;
    const c = ['--config', stack.configFile];
    expect(await ctl('state', 'web', a, 'drain', ...c)).toMatchObject({ code: 0, out: `web ${a}: drain (state drain)` });
    expect((await backendView(stack.admin, 'web', a)).state).toBe('drain');
    expect((await ctl('state', 'web', a, 'ready', ...c)).code).toBe(0);
    expect(await ctl('weight', 'web', a, '5', ...c)).toMatchObject({ code: 0, out: `web ${a}: weight 5` });
    expect((await backendView(stack.admin, 'web', a)).weight).toBe(5);
    expect(await ctl('add', 'web', extra.address, '--weight', '2', ...c)).toMatchObject({ code: 0, out: `web ${extra.address}: added (state up)` });
    expect((await backendView(stack.admin, 'web', extra.address)).weight).toBe(2);
    expect((await ctl('remove', 'web', extra.address, ...c)).out).toBe(`web ${extra.address}: removed`);
    await waitFor(async () => (await backendView(stack.admin, 'web', extra.address)) === undefined, 3000, 'removal');
  });

  it('prints refusals with their codes and exits 1', async () => {
    const a = stack.backends[0].address;
    const bad = await ctl('state', 'web', a, 'sleepy', '--config', stack.configFile);
    expect(bad.code).toBe(1);
    expect(bad.err).toContain('FULCRUM_ERR_ADMIN_BAD_REQUEST: state: must be one of ready | drain | maint, got "sleepy"');
    const noToken = await ctl('state', 'web', a, 'drain', '--admin', stack.admin);
    expect(noToken.code).toBe(1);
    expect(noToken.err).toContain('FULCRUM_ERR_ADMIN_UNAUTHORIZED');
    const unknown = await ctl('weight', 'web', `${HOST}:1`, '3', '--config', stack.configFile);
    expect(unknown.err).toContain('FULCRUM_ERR_ADMIN_NOT_FOUND');
    const notInt = await ctl('weight', 'web', a, 'lots', '--config', stack.configFile);
    expect(notInt).toMatchObject({ code: 1 });
    expect(notInt.err).toContain('weight: must be a non-negative integer, got "lots"');
    expect((await ctl('frobnicate', '--config', stack.configFile)).code).toBe(2);
    expect((await ctl('state', 'web', '--config', stack.configFile)).err).toContain('expected SVC ADDR ready|drain|maint');
    const down = await ctl('list', '--admin', `http://${HOST}:1`);
    expect(down.code).toBe(1);
    expect(down.err).toContain(`cannot reach the admin server at http://${HOST}:1`);
  });

  it('reloads, and prints the problems of a broken file', async () => {
    const ok = await ctl('reload', '--config', stack.configFile);
    expect(ok.code).toBe(0);
    expect(ok.out).toMatch(/^reloaded: \d+ changes?/);
    const { readFile, writeFile } = await import('node:fs/promises');
    const good = await readFile(stack.configFile, 'utf8');
    await writeFile(stack.configFile, good.replace('balance: roundrobin', 'balance: best'));
    const refused = await ctl('reload', '--admin', stack.admin, '--token-file', stack.tokenFile);
    expect(refused.code).toBe(1);
    expect(refused.err).toContain('FULCRUM_ERR_CONFIG_INVALID');
    expect(refused.err).toContain('services[0].balance: must be one of maglev | leastconn | roundrobin | random, got "best"');
    await writeFile(stack.configFile, good);
  });

  it('a reload reports the runtime changes it puts back (a weight) and those it keeps (a drain)', async () => {
    const [a, b] = stack.backends.map((x) => x.address);
    const c = ['--config', stack.configFile];
    expect((await ctl('reload', ...c)).code).toBe(0); // from the file as it is
    expect((await ctl('weight', 'web', b, '7', ...c)).code).toBe(0);
    expect((await ctl('state', 'web', a, 'drain', ...c)).code).toBe(0);
    const r = await ctl('reload', ...c);
    expect(r.code).toBe(0);
    expect(r.out.split('\n')).toEqual([
      'reloaded: 1 change',
      `  service web: backend ${b} weight 7 → 1 (7 was set at run time)`,
      `  kept: service web: backend ${a} state drain (set at run time; the file says ready)`,
    ]);
    // The report says what the balancer did.
    expect((await backendView(stack.admin, 'web', b)).weight).toBe(1);
    expect((await backendView(stack.admin, 'web', a)).state).toBe('drain');
    expect((await ctl('state', 'web', a, 'ready', ...c)).code).toBe(0);
    expect((await ctl('reload', ...c)).out).toBe('reloaded: 0 changes');
  });

  it('status prints the role, uptime and reloads', async () => {
    const r = await ctl('status', '--config', stack.configFile);
    expect(r.code).toBe(0);
    expect(r.out).toContain('role         standalone (no ha section)');
    expect(r.out).toMatch(/reloads      \d+ applied, 1 refused/);
    expect(r.out).toContain('changes      enabled (token)');
  });

  it('runs from the command line: fulcrum status and fulcrum ctl list', async () => {
    const run = promisify(execFile);
    const status = await run(process.execPath, [join(ROOT, 'src/cli.ts'), 'status', '--config', stack.configFile], { timeout: 20_000 });
    expect(status.stdout).toContain('role         standalone');
    const list = await run(process.execPath, [join(ROOT, 'src/cli.ts'), 'ctl', 'list', '--admin', stack.admin], { timeout: 20_000 });
    expect(list.stdout).toContain(stack.backends[1].address);
    const failed = await run(process.execPath, [join(ROOT, 'src/cli.ts'), 'ctl', 'state', 'web', stack.backends[1].address, 'drain', '--admin', stack.admin], { timeout: 20_000 })
      .then(() => null, (err: { code: number; stderr: string }) => err);
    expect(failed?.code).toBe(1);
    expect(failed?.stderr).toContain('FULCRUM_ERR_ADMIN_UNAUTHORIZED');
  });
});

describe('fulcrum status with a failover pair', () => {
  let paired: Stack;
  beforeAll(async () => {
    // The shape of src/failover's status(); the real FSM's own tests run in network namespaces.
    const failover = {
      status: () => ({
        role: 'master', wanted: 'master', priority: 150, transitions: 3, failovers: 2,
        peer: { address: '10.0.0.2:7946', role: 'backup', priority: 100, last_advert_ms_ago: 80, alive: true },
      }),
    };
    paired = await startStack({ host: '127.5.6.2', backends: 1, failover });
  });
  afterAll(async () => {
    await paired?.close();
  });

  it('prints the role, the peer and its last advert, and the failover count', async () => {
    const r = await ctl('status', '--admin', paired.admin);
    expect(r.code).toBe(0);
    expect(r.out).toContain('role         master');
    expect(r.out).toContain('peer         10.0.0.2:7946  last advert 0.1 s ago  role backup  priority 100');
    expect(r.out).toContain('failovers    2 (became master), 3 role changes');
    const metrics = await (await fetch(paired.admin + '/metrics')).text();
    expect(metrics).toContain('fulcrum_failover_role{role="master"} 1');
    expect(metrics).toContain('fulcrum_failover_transitions_total 3');
  });
});
