/**
 * The reload sequence (src/control/reload.ts) over a real Balancer and a real listen check: the
 * order of its steps, that each step reads the one diff, and what a refusal leaves untouched.
 * The pool, the health monitor and failover are recorders of what the sequence asked of them
 * (their own behaviour has its own tests: test/proxy, test/health, test/failover).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.ts';
import type { Config, HaConfig } from '../../src/config/schema.ts';
import { describeChanges, diffConfigs, type ConfigDiff } from '../../src/control/diff.ts';
import { ReloadSequence, type ReloadParts } from '../../src/control/reload.ts';
import { silentLogger } from '../../src/observability/log.ts';
import type { ServiceEntry } from '../../src/proxy/messages.ts';
import { closeEnvs, makeEnv } from '../balancer/env.ts';
import { freePort, startServer, type TestServer } from '../helpers/net.ts';

const HOST = '127.5.9.1';
const VIP = '10.9.0.100';
let taken: TestServer;
let p1 = 0;
let p2 = 0;

beforeAll(async () => {
  taken = await startServer(() => undefined, HOST);
  p1 = await freePort(HOST);
  p2 = await freePort(HOST);
});
afterAll(async () => {
  await taken.close();
});
const cleanupDirs: string[] = [];
afterEach(async () => {
  closeEnvs();
  for (const d of cleanupDirs.splice(0)) await rm(d, { recursive: true, force: true });
});

const HA = `
ha:
  vip: ${VIP}/24
  interface: eth0
  bind: 10.9.0.1:7946
  peer: 10.9.0.2:7946
  priority: PRIORITY
  secret_file: ./ha.secret
`;
function config(o: { services: string; workers?: number; level?: string; priority?: number }): Config {
  return parseConfig(`workers: ${o.workers ?? 1}
logging: { level: ${o.level ?? 'info'} }
services:
${o.services}${o.priority === undefined ? '' : HA.replace('PRIORITY', String(o.priority))}`, '<test>');
}
const svc = (name: string, listen: string, backend = '127.0.0.1:7001') => `  - { name: ${name}, listen: "${listen}", backends: [{ address: ${backend} }] }\n`;

/** The parts, recording into one list what the sequence asked of each, in order. */
function parts(initial: Config, o: { accepting?: boolean; ha?: boolean; file?: string } = {}) {
  const calls: string[] = [];
  const tables: ServiceEntry[][] = [];
  const paused = new Set<string>();
  const { balancer: real } = makeEnv();
  real.apply(initial);
  let settings = initial.ha as HaConfig;
  const p: ReloadParts = {
    balancer: {
      apply: (c) => {
        calls.push('balancer.apply');
        return real.apply(c);
      },
      serviceIndex: (name) => real.serviceIndex(name),
      targets: (name) => real.targets(name),
    },
    health: { update: () => void calls.push('health.update') },
    pool: {
      updateServices: async (table) => {
        calls.push('pool.updateServices');
        tables.push(table);
        return [];
      },
      pauseService: async (name) => {
        calls.push(`pool.pause ${name}`);
        paused.add(name);
      },
      resumeService: async (name) => {
        calls.push(`pool.resume ${name}`);
        paused.delete(name);
      },
      isPaused: (name) => paused.has(name),
      setLogging: async (l) => void calls.push(`pool.setLogging ${l.level}`),
      resize: async (n) => {
        calls.push(`pool.resize ${n}`);
        return [];
      },
    },
    failover: o.ha
      ? {
        status: () => ({ accepting: o.accepting ?? false }) as never,
        reconfigure: (next: HaConfig) => {
          calls.push(`failover.reconfigure ${next.priority}`);
          settings = { ...next, vip: settings.vip };
        },
        get settings() {
          return settings;
        },
      }
      : null,
    logger: silentLogger,
    setLogLevel: (level) => void calls.push(`log level ${level}`),
    configFile: o.file,
  };
  const sequence = new ReloadSequence(p, initial);
  const hooked: ConfigDiff[] = [];
  sequence.addHook(async (diff) => {
    calls.push('hook prepare');
    hooked.push(diff);
    return (inForce) => void calls.push(`hook settle ${inForce}`);
  });
  return { sequence, calls, tables, paused, hooked, balancer: real };
}

describe('the reload sequence', () => {
  it('runs its steps in one order: listen check, VIP pause, balancer, health, table, workers, resume, resize', async () => {
    const before = config({ services: svc('web', `${HOST}:${p1}`) + svc('db', `${VIP}:5432`), priority: 100 });
    const after = config({
      services: svc('web', `${HOST}:${p1}`) + svc('db', `${VIP}:5432`) + svc('cache', `${VIP}:6379`) + svc('new', `${HOST}:${p2}`),
      workers: 2, level: 'debug', priority: 120,
    });
    const { sequence, calls, paused } = parts(before, { ha: true, accepting: false });
    paused.add('db'); // a backup: the services on the VIP are paused
    expect(await sequence.apply(after)).toEqual([]);
    expect(calls).toEqual([
      'hook prepare',
      'pool.pause cache', // onto the VIP on a backup: paused before the workers get the table
      'balancer.apply',
      'health.update', // at once after the balancer: no await between them (role routing)
      'failover.reconfigure 120',
      'log level debug',
      'pool.setLogging debug',
      'pool.updateServices',
      'pool.resize 2',
      'hook settle true',
    ]);
    expect(sequence.config.services.map((s) => s.name)).toEqual(['web', 'db', 'cache', 'new']);
    expect(sequence.config.ha?.priority).toBe(120);
  });

  it('on the master, the services on the VIP that are paused are resumed after the table', async () => {
    const before = config({ services: svc('web', `${HOST}:${p1}`), priority: 100 });
    const after = config({ services: svc('web', `${HOST}:${p1}`) + svc('db', `${VIP}:5432`), priority: 100 });
    const { sequence, calls, paused } = parts(before, { ha: true, accepting: true });
    paused.add('db'); // its listener failed to bind and waits for a resume
    await sequence.apply(after);
    expect(calls.slice(calls.indexOf('pool.updateServices'))).toEqual(['pool.updateServices', 'pool.resume db', 'hook settle true']);
  });

  it('a listen address in use refuses the whole reload before anything is applied', async () => {
    const before = config({ services: svc('web', `${HOST}:${p1}`) });
    const after = config({ services: svc('web', `${HOST}:${p1}`) + svc('squatted', `${HOST}:${taken.port}`), workers: 2 });
    const { sequence, calls } = parts(before);
    await expect(sequence.apply(after)).rejects.toMatchObject({ code: 'FULCRUM_ERR_LISTEN' });
    expect(calls).toEqual(['hook prepare', 'hook settle false']);
    expect(sequence.config).toBe(before);
  });

  it('reads the one diff: no new address, no listen check; unchanged logging and workers, no pool calls for them', async () => {
    const before = config({ services: svc('web', `${HOST}:${taken.port}`) }); // "in use" by us: bound already
    const after = config({ services: svc('web', `${HOST}:${taken.port}`, '127.0.0.1:7002') });
    const { sequence, calls, tables, hooked } = parts(before);
    expect(await sequence.apply(after)).toEqual([]);
    expect(calls).toEqual(['hook prepare', 'balancer.apply', 'health.update', 'pool.updateServices', 'hook settle true']);
    expect(hooked).toHaveLength(1);
    expect(hooked[0]).toEqual(diffConfigs(before, after));
    expect(hooked[0].report).toEqual(describeChanges(before, after));
    expect(hooked[0]).toMatchObject({ newListens: [], logging: false, workers: false, admin: 'same' });
    // The table is built from the balancer's slots with structured addresses; the removed
    // backend still drains (its sessions may be open), so it stays in the table until freed.
    expect(tables[0][0].backends.map((b) => [b.host, b.port])).toContainEqual(['127.0.0.1', 7002]);
  });

  it('serializes changes: a second one starts when the first is over', async () => {
    const before = config({ services: svc('web', `${HOST}:${p1}`) });
    const { sequence, calls } = parts(before);
    const a = sequence.apply(config({ services: svc('web', `${HOST}:${p1}`, '127.0.0.1:7002') }));
    const b = sequence.edit(config({ services: svc('web', `${HOST}:${p1}`, '127.0.0.1:7003') }));
    await Promise.all([a, b]);
    expect(calls.filter((c) => c.startsWith('hook'))).toEqual(['hook prepare', 'hook settle true', 'hook prepare', 'hook settle true']);
    expect(sequence.config.services[0].backends[0].address.port).toBe(7003);
  });

  it('an edit given as a function builds on the config in force at its turn, not the one when it was asked (discovery)', async () => {
    const before = config({ services: svc('web', `${HOST}:${p1}`) });
    const { sequence } = parts(before);
    const a = sequence.apply(config({ services: svc('web', `${HOST}:${p1}`, '127.0.0.1:7002') }));
    let seen: Config | undefined;
    const b = sequence.edit((inForce) => (seen = inForce));
    await Promise.all([a, b]);
    expect(seen?.services[0].backends[0].address.port).toBe(7002);
    expect(sequence.config.services[0].backends[0].address.port).toBe(7002);
  });

  it('compose joins what discovery found to every config applied', async () => {
    const before = config({ services: svc('web', `${HOST}:${p1}`) });
    const { balancer } = parts(before);
    const found = { address: { host: '127.0.0.1', port: 7009 }, weight: 1, max_connections: 0, backup: false, state: 'ready' as const };
    const sequence = new ReloadSequence({
      balancer: { apply: (c) => balancer.apply(c), serviceIndex: (n) => balancer.serviceIndex(n), targets: (n) => balancer.targets(n) },
      health: { update: () => {} },
      pool: { updateServices: async () => [], pauseService: async () => {}, resumeService: async () => {}, isPaused: () => false, setLogging: async () => {}, resize: async () => [] },
      failover: null,
      logger: silentLogger,
      compose: (next) => ({ ...next, services: next.services.map((s) => ({ ...s, backends: [...s.backends, found] })) }),
    }, before);
    await sequence.apply(config({ services: svc('web', `${HOST}:${p1}`, '127.0.0.1:7002') }));
    expect(sequence.config.services[0].backends.map((b) => b.address.port)).toEqual([7002, 7009]);
    expect(balancer.describe().find((s) => s.name === 'web')!.backends.filter((b) => !b.removed).map((b) => b.address)).toEqual(['127.0.0.1:7002', '127.0.0.1:7009']);
  });

  it('a file reload re-reads the file through the same sequence, and records what it did', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'fulcrum-control-'));
    cleanupDirs.push(dir);
    const file = join(dir, 'fulcrum.yaml');
    const text = (backend: string) => `workers: 1\nservices:\n${svc('web', `${HOST}:${p1}`, backend)}`;
    await writeFile(file, text('127.0.0.1:7001'));
    const { sequence, calls } = parts(config({ services: svc('web', `${HOST}:${p1}`) }), { file });
    expect(await sequence.reloadFile('test')).toEqual({ changes: [], restart_required: [] });
    await writeFile(file, text('127.0.0.1:7002'));
    const report = await sequence.reloadFile('test');
    expect(report.changes).toEqual([`service web: backend 127.0.0.1:7002 added`, `service web: backend 127.0.0.1:7001 removed`]);
    expect(calls.filter((c) => c === 'balancer.apply')).toHaveLength(2);
    await writeFile(file, text('127.0.0.1:7003') + 'unknown_key: 1\n');
    await expect(sequence.reloadFile('test')).rejects.toMatchObject({ code: 'FULCRUM_ERR_CONFIG_INVALID' });
    expect(calls.filter((c) => c === 'balancer.apply')).toHaveLength(2);
    expect(sequence.config.services[0].backends[0].address.port).toBe(7002);
    expect(sequence.summary()).toMatchObject({ config_file: file, reloads: { applied: 2, refused: 1, last: { ok: false, trigger: 'test' } } });
  });

  it('without a file there is nothing to re-read', async () => {
    const { sequence } = parts(config({ services: svc('web', `${HOST}:${p1}`) }));
    await expect(sequence.reloadFile('test')).rejects.toThrow(/not started from a config file/);
    expect(sequence.summary()).toEqual({ config_file: null });
  });
});

describe('the diff', () => {
  it('computes every part once from the two configs', () => {
    const before = config({ services: svc('web', `${HOST}:${p1}`) + svc('db', `${VIP}:5432`), priority: 100 });
    const after = config({ services: svc('web', `${HOST}:${p2}`) + svc('db', `${HOST}:5432`), workers: 3, priority: 100 });
    const d = diffConfigs(before, after);
    expect(d.newListens.sort()).toEqual(['db', 'web']);
    expect(d.vip).toEqual({ bound: new Set(), onto: [], off: ['db'] });
    expect(d.workers).toBe(true);
    expect(d.logging).toBe(false);
    expect(d.report.changes).toContain('workers: 1 → 3');
  });
});

describe('the report and runtime changes (what the balancer holds beside the config)', () => {
  const file = (b: string) => parseConfig(`services:\n  - name: web\n    listen: ${HOST}:${p1}\n    backends:\n${b}`, '<f>');
  const A = `${HOST}:7001`;
  const B = `${HOST}:7002`;
  const live = (weights: Record<string, number>, states: Record<string, string>) => ({
    weightOf: (_s: string, a: string) => weights[a],
    adminState: (_s: string, a: string) => states[a],
  });

  it('a runtime weight put back is a change from the runtime value; a runtime state the file leaves alone is kept', () => {
    const before = file(`      - { address: ${A}, weight: 3 }\n      - { address: ${B} }\n`);
    const report = describeChanges(before, before, live({ [A]: 7, [B]: 1 }, { [A]: 'ready', [B]: 'drain' }));
    expect(report).toEqual({
      changes: [`service web: backend ${A} weight 7 → 3 (7 was set at run time)`],
      restart_required: [],
      kept: [`service web: backend ${B} state drain (set at run time; the file says ready)`],
    });
  });

  it('a state the file changes wins over the runtime one, and says what it replaced', () => {
    const before = file(`      - { address: ${A} }\n`);
    const after = file(`      - { address: ${A}, state: maint }\n`);
    expect(describeChanges(before, after, live({ [A]: 1 }, { [A]: 'drain' })).changes)
      .toEqual([`service web: backend ${A} state drain → maint (drain was set at run time)`]);
  });

  it('with nothing changed at run time the report is the file diff, and without a live view too', () => {
    const before = file(`      - { address: ${A}, weight: 3 }\n`);
    const after = file(`      - { address: ${A}, weight: 5 }\n`);
    const plain = { changes: [`service web: backend ${A} weight 3 → 5`], restart_required: [] };
    expect(describeChanges(before, after, live({ [A]: 3 }, { [A]: 'ready' }))).toEqual(plain);
    expect(describeChanges(before, after)).toEqual(plain);
  });
});
