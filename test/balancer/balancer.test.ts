import { describe, it, expect, afterEach } from 'vitest';
import { env, envOn, closeEnvs, config, backends, type Env } from './env.ts';
import type { BackendStateEvent } from '../../src/balancer/balancer.ts';
import { B_EFF_WEIGHT, WEIGHT_SCALE, BACKEND_FREE, B_STATE, PICK_BAD_SERVICE, MAX_BACKENDS } from '../../src/shm/layout.ts';
import { TestClock } from '../helpers/clock.ts';

/** How often the balancer looks at draining slots (its DRAIN_POLL_MS). */
const REAP_MS = 100;

afterEach(closeEnvs);


function events(e: Env): BackendStateEvent[] {
  const list: BackendStateEvent[] = [];
  e.balancer.on('backend-state', (ev: BackendStateEvent) => list.push(ev));
  return list;
}

describe('Balancer.apply', () => {
  it('writes services and backends; describe() reports them sorted by address', () => {
    const e = env({ name: 'pg', balance: 'maglev', table_size: 101, max_connections: 50, backends: [
      { address: '10.0.0.3:5432', weight: 2 }, { address: '10.0.0.1:5432', backup: true, max_connections: 7 },
    ] });
    const [s] = e.balancer.describe();
    expect(s).toMatchObject({ name: 'pg', index: 0, algorithm: 'maglev', table_size: 101, max_connections: 50, active: 0, primary_up: 1, backup_up: 1 });
    expect(s.backends.map((b) => b.address)).toEqual(['10.0.0.1:5432', '10.0.0.3:5432']);
    expect(s.backends[0]).toEqual({ index: 0, address: '10.0.0.1:5432', weight: 1, effective_weight: 1, state: 'up', admin_state: 'ready',
      health: 'up', awaiting_role: false, backup: true, active: 0, max_connections: 7, removed: false });
    expect(e.balancer.serviceIndex('pg')).toBe(0);
    expect(e.balancer.serviceIndex('nope')).toBe(-1);
    expect(e.balancer.backendIndex('pg', '10.0.0.3:5432')).toBe(1);
    expect(e.balancer.backendIndex('pg', { host: '10.0.0.3', port: 5432 })).toBe(1);
  });

  it('a reload keeps slots and active counts of kept backends and drains removed ones', async () => {
    const list = backends(3);
    const clock = new TestClock();
    const e = envOn(clock, { name: 'a', backends: list }, { name: 'b', backends: backends(1, () => ({ address: '10.5.0.1:1' })) });
    const ids = list.map((b) => e.balancer.backendIndex('a', b.address));
    const held = [0, 1, 2, 3, 4, 5].map(() => e.worker.acquire(0, 0));
    const log = events(e);
    const summary = e.balancer.apply(config(
      { name: 'a', balance: 'roundrobin', max_connections: 9, backends: [list[0], { ...list[1], weight: 5 }, { address: '10.0.9.9:5432' }] },
    ));
    expect(summary).toMatchObject({ servicesRemoved: ['b'], servicesAdded: [], servicesChanged: ['a'], backendsAdded: 1, backendsRemoved: 2 });
    const [a] = e.balancer.describe();
    expect(a.index).toBe(0);
    expect(a.algorithm).toBe('roundrobin');
    expect(a.max_connections).toBe(9);
    expect(a.active).toBe(6);
    const kept = a.backends.filter((b) => !b.removed);
    expect(kept.map((b) => b.index).slice(0, 2)).toEqual([ids[0], ids[1]]);
    expect(kept[0].active).toBe(2);
    expect(kept[1].weight).toBe(5);
    expect(kept[1].active).toBe(2);
    const gone = a.backends.find((b) => b.removed);
    expect(gone).toMatchObject({ index: ids[2], state: 'drain', active: 2 });
    expect(log).toContainEqual({ service: 'a', address: list[2].address, backend: ids[2], from: 'up', to: 'drain', cause: 'removed' });
    // The removed service answers PICK_BAD_SERVICE at once.
    expect(e.worker.acquire(1, 0)).toBe(PICK_BAD_SERVICE);
    // No new connection goes to the draining backend.
    for (let i = 0; i < 30; i++) {
      const b = e.worker.acquire(0, i);
      expect(b).not.toBe(ids[2]);
      e.worker.release(0, b);
    }
    // Not while its connections are open, however long that takes.
    await clock.advance(10 * REAP_MS);
    expect(e.balancer.describe()[0].backends.find((b) => b.removed)).toMatchObject({ index: ids[2], state: 'drain' });
    // Once they are released, the slot is freed at the reaper's next look.
    for (const b of held) e.worker.release(0, b);
    await clock.advance(REAP_MS);
    expect(e.balancer.describe()[0].backends.some((b) => b.removed)).toBe(false);
    expect(log.some((x) => x.backend === ids[2] && x.to === 'free' && x.cause === 'drained')).toBe(true);
    expect(e.balancer.records.backendField(ids[2], B_STATE)).toBe(BACKEND_FREE);
  });

  it('a reload follows the config\'s state only when the config changed it', () => {
    const list = backends(2);
    const e = env({ backends: list });
    e.balancer.setAdminState('s0', list[0].address, 'drain', 'admin');
    e.balancer.apply(config({ backends: list }));
    expect(e.balancer.describe()[0].backends[0].state).toBe('drain');
    e.balancer.apply(config({ backends: [{ ...list[0], state: 'maint' }, list[1]] }));
    expect(e.balancer.describe()[0].backends[0].state).toBe('maint');
    e.balancer.apply(config({ backends: list }));
    expect(e.balancer.describe()[0].backends[0].state).toBe('up');
  });

  it('refuses a config that does not fit the free slots, before changing anything', () => {
    const e = env({ backends: backends(1) });
    const big = Array.from({ length: 5 }, (_, i) => ({ name: `x${i}`, listen: `127.1.9.2:${6000 + i}`, backends: backends(1000, (j) => ({ address: `10.${i}.${j >> 8}.${j & 255}:1` })) }));
    expect(() => e.balancer.apply({ ...config({ backends: backends(1) }), services: config(...big).services })).toThrow(/backends: 5000 new backends need free slots, \d+ of 4096 are free/);
    expect(e.balancer.describe().map((s) => s.name)).toEqual(['s0']);
    expect(MAX_BACKENDS).toBe(4096);
  });
});

describe('state: admin × health', () => {
  it('maint > drain > health', () => {
    const list = backends(1);
    const e = env({ health: { type: 'tcp' }, backends: list });
    const a = list[0].address;
    const state = () => e.balancer.describe()[0].backends[0].state;
    expect(state()).toBe('up'); // up until a check proves it down
    e.balancer.setHealth('s0', a, false, 'check');
    expect(state()).toBe('down');
    e.balancer.setAdminState('s0', a, 'drain', 'admin');
    expect(state()).toBe('drain');
    e.balancer.setAdminState('s0', a, 'maint', 'admin');
    expect(state()).toBe('maint');
    e.balancer.setHealth('s0', a, true, 'check');
    expect(state()).toBe('maint');
    e.balancer.setAdminState('s0', a, 'drain', 'admin');
    expect(state()).toBe('drain');
    e.balancer.setAdminState('s0', a, 'ready', 'admin');
    expect(state()).toBe('up');
    expect(e.balancer.describe()[0].backends[0]).toMatchObject({ health: 'up', admin_state: 'ready' });
  });

  it('emits backend-state with from, to and cause; nothing when unchanged', () => {
    const list = backends(2);
    const e = env({ backends: list });
    const log = events(e);
    e.balancer.setHealth('s0', list[1].address, false, 'tcp connect refused');
    e.balancer.setHealth('s0', list[1].address, false, 'tcp connect refused');
    e.balancer.setAdminState('s0', list[1].address, 'maint', 'admin');
    expect(log).toEqual([
      { service: 's0', address: list[1].address, backend: 1, from: 'up', to: 'down', cause: 'tcp connect refused' },
      { service: 's0', address: list[1].address, backend: 1, from: 'down', to: 'maint', cause: 'admin' },
    ]);
  });

  it('draining keeps open connections and takes no new ones', () => {
    const list = backends(2);
    const e = env({ backends: list });
    const first = e.worker.acquire(0, 0);
    const addr = e.balancer.backendAt(first)!.address;
    e.balancer.setAdminState('s0', addr, 'drain', 'admin');
    for (let i = 0; i < 10; i++) expect(e.worker.acquire(0, 0)).not.toBe(first);
    expect(e.balancer.describe()[0].backends.find((b) => b.index === first)!.active).toBe(1);
  });

  it('errors name the value', () => {
    const e = env({ backends: backends(1) });
    expect(() => e.balancer.setWeight('s0', backends(1)[0].address, 300)).toThrow('weight: must be an integer 0–256, got 300');
    expect(() => e.balancer.setHealth('nope', 'x:1', true, '')).toThrow(expect.objectContaining({ code: 'FULCRUM_ERR_UNKNOWN_SERVICE' }));
    expect(() => e.balancer.setHealth('s0', '10.9.9.9:1', true, '')).toThrow(expect.objectContaining({ code: 'FULCRUM_ERR_UNKNOWN_BACKEND' }));
  });
});

describe('a service that routes by role', () => {
  const role = (r: string) => ({ type: 'redis', role: r });
  const state = (e: Env, address: string) => e.balancer.describe()[0].backends.find((b) => b.address === address)!;

  it('starts its backends down, awaiting their role, until a probe reports it; no slow start for that first up', () => {
    const list = backends(2);
    const e = env({ health: role('primary'), slow_start: '1s', backends: list });
    for (const b of list) expect(state(e, b.address)).toMatchObject({ state: 'down', health: 'down', awaiting_role: true });
    for (let i = 0; i < 10; i++) expect(e.worker.acquire(0, i)).toBeLessThan(0);
    const log = events(e);
    e.balancer.setHealth('s0', list[0].address, true, 'health: first probe: role primary');
    e.balancer.setHealth('s0', list[1].address, false, 'health: first probe: wrong role: saw replica, want primary');
    expect(state(e, list[0].address)).toMatchObject({ state: 'up', awaiting_role: false, effective_weight: 1 });
    expect(state(e, list[1].address)).toMatchObject({ state: 'down', awaiting_role: false });
    const primary = e.balancer.backendIndex('s0', list[0].address);
    for (let i = 0; i < 10; i++) expect(e.worker.acquire(0, i)).toBe(primary);
    expect(log).toEqual([{ service: 's0', address: list[0].address, backend: primary, from: 'down', to: 'up', cause: 'health: first probe: role primary' }]);
  });

  it('role: any, and checks that cannot see roles, start backends up as before', () => {
    const e = env({ health: role('any'), backends: backends(1) }, { health: { type: 'tcp' }, backends: backends(1, () => ({ address: '10.1.0.1:1' })) });
    for (const s of e.balancer.describe()) expect(s.backends[0]).toMatchObject({ state: 'up', awaiting_role: false });
  });

  it('a backend added at run time or by a reload awaits its role; the down is marked as no verdict', () => {
    const list = backends(3);
    const e = env({ health: role('primary'), backends: [list[0]] });
    e.balancer.setHealth('s0', list[0].address, true, 'probe');
    const log = events(e);
    e.balancer.addBackend('s0', { address: { host: '10.0.0.2', port: 5432 }, weight: 1, max_connections: 0, backup: false, state: 'ready' });
    e.balancer.apply(config({ name: 's0', health: role('primary'), backends: [list[0], list[1], list[2]] }));
    expect(state(e, list[1].address)).toMatchObject({ state: 'down', awaiting_role: true });
    expect(state(e, list[2].address)).toMatchObject({ state: 'down', awaiting_role: true });
    expect(state(e, list[0].address)).toMatchObject({ state: 'up', awaiting_role: false }); // kept: its role was seen
    expect(log.filter((ev) => ev.from === 'free')).toEqual([
      { service: 's0', address: list[1].address, backend: 1, from: 'free', to: 'down', cause: 'added: role primary not yet seen', awaiting_role: true },
      { service: 's0', address: list[2].address, backend: 2, from: 'free', to: 'down', cause: 'added: role primary not yet seen', awaiting_role: true },
    ]);
  });

  it('a reload that changes the role (or brings a role-aware check) puts every backend back to awaiting its role', () => {
    const list = backends(2);
    const e = env({ health: { type: 'tcp' }, backends: list });
    const log = events(e);
    e.balancer.apply(config({ name: 's0', health: role('primary'), backends: list }));
    for (const b of list) expect(state(e, b.address)).toMatchObject({ state: 'down', awaiting_role: true });
    expect(log[0]).toEqual({ service: 's0', address: list[0].address, backend: 0, from: 'up', to: 'down', cause: 'reload: role primary not yet seen', awaiting_role: true });
    e.balancer.setHealth('s0', list[0].address, true, 'probe');
    e.balancer.apply(config({ name: 's0', health: { ...role('primary'), interval: '5s' }, backends: list })); // same role: kept
    expect(state(e, list[0].address)).toMatchObject({ state: 'up', awaiting_role: false });
    e.balancer.apply(config({ name: 's0', health: role('replica'), backends: list }));
    expect(state(e, list[0].address)).toMatchObject({ state: 'down', awaiting_role: true });
    e.balancer.apply(config({ name: 's0', backends: list })); // no check left: nothing would ever mark it up
    expect(state(e, list[0].address)).toMatchObject({ state: 'up', awaiting_role: false });
  });
});

describe('slow start', () => {
  it('ramps the effective weight from 1/16 to full after down → up, one step every slow_start / 16, rebuilding each step', async () => {
    const clock = new TestClock();
    const list = backends(2, () => ({ weight: 4 }));
    const e = envOn(clock, { balance: 'roundrobin', slow_start: '320ms', backends: list });
    const id = e.balancer.backendIndex('s0', list[0].address);
    const eff = () => e.balancer.records.backendField(id, B_EFF_WEIGHT);
    expect(eff()).toBe(4 * WEIGHT_SCALE); // not at start-up
    e.balancer.setHealth('s0', list[0].address, false, 'check');
    e.balancer.setHealth('s0', list[0].address, true, 'check');
    expect(eff()).toBe(4);
    expect(e.balancer.describe()[0].backends[0].effective_weight).toBe(4 / WEIGHT_SCALE);
    // 320 ms / 16 steps: step k (weight 4 × k / 16) at (k - 1) × 20 ms, not a millisecond before.
    const stepMs = 320 / WEIGHT_SCALE;
    for (let step = 2; step <= WEIGHT_SCALE; step++) {
      const gen = e.balancer.records.generation();
      await clock.advance(stepMs - 1);
      expect(eff()).toBe(4 * (step - 1));
      expect(e.balancer.records.generation()).toBe(gen);
      await clock.advance(1);
      expect(eff()).toBe(4 * step);
      expect(e.balancer.records.generation()).toBe(gen + 1); // the ring rebuilt for the step
    }
    expect(clock.now()).toBe(300);
    // At full weight the ramp is over: no timer left, nothing changes later.
    expect(clock.pending).toBe(0);
    const gen = e.balancer.records.generation();
    await clock.advance(1000);
    expect(eff()).toBe(4 * WEIGHT_SCALE);
    expect(e.balancer.records.generation()).toBe(gen);
  });

  it('a backend going down mid-ramp stops the ramp', async () => {
    const clock = new TestClock();
    const list = backends(1, () => ({ weight: 2 }));
    const e = envOn(clock, { slow_start: '1s', backends: list });
    const a = list[0].address;
    const effective = () => e.balancer.describe()[0].backends[0].effective_weight;
    e.balancer.setAdminState('s0', a, 'maint', 'admin');
    e.balancer.setAdminState('s0', a, 'ready', 'admin');
    expect(effective()).toBe(2 / WEIGHT_SCALE);
    await clock.advance(3 * Math.floor(1000 / WEIGHT_SCALE)); // three steps of 62 ms
    expect(effective()).toBe((2 * 4) / WEIGHT_SCALE);
    e.balancer.setHealth('s0', a, false, 'check');
    expect(effective()).toBe(2); // down, and no longer scaled
    expect(clock.pending).toBe(0); // the ramp's timer is gone
    const gen = e.balancer.records.generation();
    await clock.advance(2000);
    expect(effective()).toBe(2);
    expect(e.balancer.records.generation()).toBe(gen);
  });
});

describe('run-time backends', () => {
  it('addBackend joins the member list in address order; setWeight changes picks', () => {
    const e = env({ backends: [{ address: '10.0.0.5:1' }] });
    const d = e.balancer.addBackend('s0', { address: { host: '10.0.0.2', port: 1 }, weight: 1, max_connections: 0, backup: false, state: 'ready' });
    expect(d).toMatchObject({ address: '10.0.0.2:1', state: 'up' });
    expect(e.balancer.records.members(0)).toEqual([d.index, e.balancer.backendIndex('s0', '10.0.0.5:1')]);
    expect(() => e.balancer.addBackend('s0', { address: { host: '10.0.0.2', port: 1 }, weight: 1, max_connections: 0, backup: false, state: 'ready' }))
      .toThrow(expect.objectContaining({ code: 'FULCRUM_ERR_BAD_ARGUMENT' }));
    e.balancer.setWeight('s0', '10.0.0.5:1', 0);
    for (let i = 0; i < 5; i++) expect(e.worker.acquire(0, 0)).toBe(d.index);
  });

  it('removeBackend waits for the drain; force frees at once', async () => {
    const list = backends(3);
    const clock = new TestClock();
    const e = envOn(clock, { backends: list });
    const log = events(e);
    const [b0, b1] = [0, 1].map((i) => e.balancer.backendIndex('s0', list[i].address));
    // One connection on each.
    const held = [0, 1, 2].map(() => e.worker.acquire(0, 0));
    let drained = false;
    void e.balancer.removeBackend('s0', list[0].address).then(() => { drained = true; });
    await clock.advance(10 * REAP_MS); // however long its connection stays open
    expect(drained).toBe(false);
    expect(e.balancer.describe()[0].backends.find((b) => b.index === b0)).toMatchObject({ removed: true, state: 'drain', active: 1 });
    e.worker.release(0, b0);
    await clock.advance(REAP_MS); // the reaper's next look
    expect(drained).toBe(true);

    let forced = false;
    void e.balancer.removeBackend('s0', list[1].address, { force: true }).then(() => { forced = true; });
    await clock.advance(0); // no time passes: forced is at once
    expect(forced).toBe(true);
    expect(log.filter((x) => x.backend === b1).map((x) => x.to)).toEqual(['free']);
    expect(e.balancer.describe()[0].backends.map((b) => b.index)).not.toContain(b1);
    // Its slot is not reused while its session is open: a new backend takes another slot.
    const added = e.balancer.addBackend('s0', { address: { host: '10.7.0.1', port: 1 }, weight: 1, max_connections: 0, backup: false, state: 'ready' });
    expect(added.index).not.toBe(b1);
    expect(added.index).toBe(b0); // b0 drained and was freed
    e.worker.release(0, b1);
    expect(held).toHaveLength(3);
  });
});
