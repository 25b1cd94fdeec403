import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.ts';
import { vipBoundServices, vipReload } from '../../src/control/diff.ts';
import { followRoleAfterReload, pauseMovedOnto } from '../../src/control/reload.ts';

const HA = `
ha:
  vip: 10.9.0.100/24
  interface: eth0
  bind: 10.9.0.1:7946
  peer: 10.9.0.2:7946
  priority: 100
  secret_file: ./ha.secret
`;
const config = (services: string) => parseConfig(`services:\n${services}${HA}`);
const svc = (name: string, listen: string) => `  - { name: ${name}, listen: "${listen}", backends: [{ address: 127.0.0.1:7001 }] }\n`;

/** The pool's pause state, as main.ts's reload sees it through pauseService / isPaused. */
function pausedPool(initial: string[]) {
  const paused = new Set(initial);
  return {
    paused,
    isPaused: (name: string) => paused.has(name),
    pauseService: async (name: string) => void paused.add(name),
  };
}
const role = (accepting: boolean) => ({ status: () => ({ accepting }) }) as never;

describe('the services a reload puts on or takes off the VIP', () => {
  const before = config(svc('db', '10.9.0.100:5432') + svc('cache', '10.9.0.100:6379') + svc('local', '127.0.0.1:9000'));
  const after = config(svc('db', '10.9.0.100:5432') + svc('cache', '127.0.0.1:6379') + svc('local', '10.9.0.100:9000') + svc('new', '10.9.0.100:7000'));

  it('computes bound, onto and off once from the two configs', () => {
    const plan = vipReload(before, after);
    expect([...plan.bound].sort()).toEqual(['db', 'local', 'new']);
    expect(plan.onto.sort()).toEqual(['local', 'new']);
    expect(plan.off).toEqual(['cache']);
    expect([...plan.bound].sort()).toEqual(vipBoundServices(after).sort());
    // A service the reload removes is not "taken off": it is gone.
    expect(vipReload(before, config(svc('db', '10.9.0.100:5432'))).off).toEqual([]);
  });

  it('on a backup: pauses what goes onto the VIP before the table, keeps the VIP services paused after it, resumes what left', async () => {
    const plan = vipReload(before, after);
    const pool = pausedPool(['db', 'cache']); // a backup: the VIP services are paused
    await pauseMovedOnto(plan, role(false), pool);
    expect([...pool.paused].sort()).toEqual(['cache', 'db', 'local', 'new']);
    expect(await followRoleAfterReload(plan, role(false), pool)).toEqual(['cache']);
  });

  it('on the master: nothing is paused; the services on the VIP that are paused are resumed', async () => {
    const plan = vipReload(before, after);
    const pool = pausedPool([]);
    await pauseMovedOnto(plan, role(true), pool);
    expect(pool.paused.size).toBe(0);
    pool.paused.add('new'); // its listener failed to bind and waits for a resume
    expect(await followRoleAfterReload(plan, role(true), pool)).toEqual(['new']);
  });

  it('follows the role as it is after the table: a master that stepped down meanwhile pauses them', async () => {
    const plan = vipReload(before, after);
    const pool = pausedPool([]);
    await pauseMovedOnto(plan, role(true), pool);
    expect(await followRoleAfterReload(plan, role(false), pool)).toEqual([]);
    expect([...pool.paused].sort()).toEqual(['db', 'local', 'new']);
  });

  it('without ha, nothing moves', async () => {
    const plain = parseConfig(`services:\n${svc('db', '127.0.0.1:5432')}`);
    const plan = vipReload(plain, plain);
    expect(plan).toEqual({ bound: new Set(), onto: [], off: [] });
    expect(await followRoleAfterReload(plan, null, pausedPool([]))).toEqual([]);
  });
});
