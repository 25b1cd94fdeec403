// The Failover class in-process over loopback (127.4.2.0/24): two instances elect, report status(),
// hand over on stop() with priority 0, follow the track, and count dropped heartbeats. VIP commands
// are replaced by `true` so nothing on this host changes (the namespace tests run the real ones).
// The driver's timing (master-down, Skew_Time, advert pace, peer liveness) is checked exactly on a
// hand-driven clock, against a peer the test plays over real UDP.
import { createSocket, type Socket } from 'node:dgram';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { haSchema } from '../../src/config/schema.ts';
import { ipv4ToInt, masterDownInterval, skewTime, type Role } from '../../src/failover/fsm.ts';
import { encodeAdvert } from '../../src/failover/heartbeat.ts';
import { Failover, type RoleChange } from '../../src/failover/index.ts';
import { silentLogger } from '../../src/observability/log.ts';
import type { Clock } from '../../src/util/clock.ts';
import { TestClock } from '../helpers/clock.ts';
import { staysFalse, waitFor } from '../helpers/net.ts';

const SECRET = 'a-long-enough-shared-secret';
const PORT = 17947;
/** advert_interval and dead_after of haInput. */
const ADVERT_MS = 50;
const DEAD_AFTER = 3;

let dir: string;
const running: Failover[] = [];
const sockets: Socket[] = [];
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'fulcrum-h4-fo-'));
  writeFileSync(join(dir, 'secret'), `${SECRET}\n`, { mode: 0o600 });
  writeFileSync(join(dir, 'up'), 'up\n');
  writeFileSync(join(dir, 'down'), 'down\n');
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((f) => f.stop()));
  for (const s of sockets.splice(0)) s.close();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The ha section of instance 1 or 2, as a config file would give it (before parsing). */
function haInput(self: 1 | 2, opts: { priority?: number; min?: number } = {}) {
  return {
    vip: '198.51.100.200/24', interface: 'eth-test', bind: `127.4.2.${self}:17947`, peer: `127.4.2.${3 - self}:17947`,
    priority: opts.priority ?? (self === 1 ? 150 : 100), advert_interval: `${ADVERT_MS}ms`, dead_after: DEAD_AFTER,
    secret_file: join(dir, 'secret'), track: { min_backends_up: opts.min ?? 0 },
  };
}

function make(self: 1 | 2, opts: { priority?: number; backends?: () => number; iface?: () => string; min?: number; clock?: Clock; ip?: string } = {}) {
  const config = haSchema.parse(haInput(self, opts));
  const accepting: boolean[] = [];
  const roles: RoleChange[] = [];
  const f = new Failover({
    config, logger: silentLogger, commands: { ip: opts.ip ?? 'true', arping: 'true' },
    backendsUp: opts.backends, setAccepting: (on) => { accepting.push(on); },
    operstateFile: () => join(dir, opts.iface?.() ?? 'up'),
    clock: opts.clock,
  });
  f.on('role', (r) => roles.push(r));
  running.push(f);
  return { f, accepting, roles };
}
const until = (cond: () => boolean, ms = 2000): Promise<number> => waitFor(cond, ms, 'the pair to settle', 5);

/**
 * Instance `self`'s peer, played by the test: a UDP socket on the peer's heartbeat address that
 * sends valid adverts (the shared key, a fixed epoch, a growing counter, the wall clock's time).
 */
async function playPeer(self: 1 | 2) {
  const host = `127.4.2.${3 - self}`;
  const s = createSocket('udp4');
  sockets.push(s);
  await new Promise<void>((r) => s.bind(PORT, host, () => r()));
  let counter = 0;
  return (role: Role, priority: number): Promise<void> => {
    const packet = encodeAdvert({
      role, priority, epoch: 0x5eed_0001, counter: ++counter, timestampMs: Date.now(),
      senderAddress: ipv4ToInt(host), senderPort: PORT, intervalMs: ADVERT_MS,
    }, Buffer.from(SECRET));
    return new Promise((r) => s.send(packet, PORT, `127.4.2.${self}`, () => r()));
  };
}

describe('Failover (loopback)', () => {
  it('elects, reports status, and hands over at once on stop()', async () => {
    const a = make(1);
    const b = make(2);
    await a.f.start();
    await b.f.start();
    // Started within milliseconds of each other, b's timer may also fire before a's first advert
    // arrives; then b steps down on it (§6.4.3). Either way it settles with b backup.
    await until(() => a.f.status().role === 'master' && b.f.status().role === 'backup' && a.f.status().peer.role === 'backup' && a.f.status().vip_held);
    const s = a.f.status();
    expect(s).toMatchObject({ role: 'master', wanted: 'master', priority: 150, vips: ['198.51.100.200/24'], vip_held: true, failovers: 1, transitions: 2 });
    expect(s.peer).toMatchObject({ address: '127.4.2.2:17947', role: 'backup', priority: 100, alive: true });
    expect(s.peer.last_advert_ms_ago).toBeLessThan(200);
    expect(s.last_transition).toMatchObject({ from: 'backup', to: 'master' });
    expect(a.accepting).toEqual([false, true]);
    expect(b.accepting[0]).toBe(false);
    expect(b.accepting.at(-1)).toBe(false);

    // Real time on purpose: this measures the real pair over real UDP end to end; the exact
    // Skew_Time is checked on the test clock below.
    const t0 = Date.now();
    const stopping = a.f.stop();
    await until(() => b.f.status().role === 'master');
    // Skew_Time (30 ms) after the priority-0 advert rather than Master_Down_Interval (180 ms).
    expect(Date.now() - t0).toBeLessThan(180);
    expect(b.roles.at(-1)?.cause).toMatch(/priority 0/);
    await stopping;
    expect(a.accepting.at(-1)).toBe(false);
    expect(a.f.status().role).toBe('init');
  });

  it('track: too few backends on the master hands the VIP to the backup; ok again takes it back', async () => {
    let up = 2;
    const a = make(1, { backends: () => up, min: 1 });
    const b = make(2, { backends: () => 2, min: 1 });
    await a.f.start();
    await b.f.start();
    await until(() => a.f.status().role === 'master' && b.f.status().peer.role === 'master');
    up = 0;
    await until(() => a.f.status().role === 'fault' && b.f.status().role === 'master');
    expect(a.f.status().track).toMatchObject({ ok: false, backends_up: 0, min_backends_up: 1 });
    expect(a.roles.at(-1)?.cause).toMatch(/0 backends up, ha.track.min_backends_up is 1/);
    up = 1;
    await until(() => a.f.status().role === 'master' && b.f.status().role === 'backup'); // preempt
  });

  it('track: a master alone keeps the VIP when its track fails (nobody can take it)', async () => {
    const clock = new TestClock();
    let up = 1;
    const a = make(1, { backends: () => up, min: 1, clock });
    await a.f.start();
    await clock.advance(masterDownInterval(150, ADVERT_MS, DEAD_AFTER));
    expect(a.f.status().role).toBe('master');
    await until(() => a.f.status().vip_held);
    up = 0;
    await clock.advance(ADVERT_MS); // the track is checked every advert interval
    expect(a.f.status()).toMatchObject({ role: 'master', wanted: 'fault' });
    await clock.advance(20 * ADVERT_MS); // and it stays: nobody to hand over to
    expect(a.f.status()).toMatchObject({ role: 'master', wanted: 'fault', vip_held: true });
  });

  it('counts dropped heartbeats in status() and ignores them', async () => {
    const a = make(1);
    await a.f.start();
    await until(() => a.f.status().role === 'master');
    const s = createSocket('udp4');
    await new Promise<void>((r) => s.bind(0, '127.4.2.2', () => r()));
    for (const buf of [Buffer.alloc(10), Buffer.alloc(64), Buffer.alloc(200)]) {
      await new Promise((r) => s.send(buf, 17947, '127.4.2.1', r));
    }
    await until(() => Object.values(a.f.status().dropped).reduce((x, y) => x + y, 0) === 3);
    s.close();
    expect(a.f.status().dropped).toMatchObject({ malformed: 1, bad_magic: 1, oversized: 1, bad_mac: 0 });
    expect(a.f.status()).toMatchObject({ role: 'master', transitions: 2 });
  });

  it('reconfigure: a backup given a higher priority takes the VIP; the pair\'s identity (vip, interface) keeps its running values', async () => {
    const a = make(1);
    const b = make(2);
    await a.f.start();
    await b.f.start();
    await until(() => a.f.status().role === 'master' && b.f.status().role === 'backup' && a.f.status().peer.role === 'backup');
    const next = haSchema.parse({
      ...haInput(2), priority: 200, advert_interval: '40ms', max_clock_skew: '3s', garp: { count: 2, interval: '100ms' },
      vip: '198.51.100.201/24', interface: 'eth-other',
    });
    b.f.reconfigure(next);
    // b (200, preempt) discards a's adverts (150): its timer fires and it takes over; a steps down.
    await until(() => b.f.status().role === 'master' && a.f.status().role === 'backup');
    expect(b.roles.at(-1)?.cause).toMatch(/preempting a lower-priority master \(150 < 200\)/);
    expect(a.roles.at(-1)?.cause).toMatch(/higher priority \(200 > 150\)/);
    expect(b.f.status()).toMatchObject({ priority: 200, advert_interval_ms: 40, vips: ['198.51.100.200/24'], interface: 'eth-test' });
    expect(b.f.settings).toMatchObject({ priority: 200, max_clock_skew: 3000, garp: { count: 2, interval: 100 }, interface: 'eth-test' });
    // a hears the new interval in b's heartbeats: its master-down interval follows (§6.4.2).
    await until(() => a.f.status().master_down_interval_ms === Math.round(3 * 40 + ((256 - 150) * 40) / 256));
    // And back: b lowered under a (preempt on both) hands the VIP back.
    b.f.reconfigure(haSchema.parse({ ...haInput(2), priority: 90 }));
    await until(() => a.f.status().role === 'master' && b.f.status().role === 'backup');
  });

  it('reconfigure: a raised track minimum is checked at once', async () => {
    const a = make(1, { backends: () => 1 });
    await a.f.start();
    await until(() => a.f.status().role === 'master');
    a.f.reconfigure(haSchema.parse({ ...haInput(1), track: { min_backends_up: 2 } }));
    expect(a.f.status().track).toMatchObject({ ok: false, min_backends_up: 2 });
    expect(a.f.status()).toMatchObject({ role: 'master', wanted: 'fault' }); // alone: keeps the VIP
  });

  /** a master, b backup, and b has heard a as master while backup (its master-down timer restarted from it). */
  async function settledPair() {
    const a = make(1);
    const b = make(2);
    await a.f.start();
    await b.f.start();
    await until(() => a.f.status().role === 'master' && b.f.status().role === 'backup' && b.f.status().peer.role === 'master' && a.f.status().peer.role === 'backup');
    return { a, b, bRoles: b.roles.length };
  }

  it('abandon and continue (an upgrade): the master goes on in another instance, the backup never moves and drops nothing', async () => {
    const { a, b, bRoles } = await settledPair();
    const epoch = a.f.status().heartbeat.epoch;
    const carry = await a.f.abandon();
    expect(carry).toMatchObject({ pid: process.pid, role: 'master', sequence: { epoch }, peer: { role: 'backup', priority: 100 } });
    // The abandoned instance's stop releases nothing (no priority 0, the VIP stays, still accepting).
    await a.f.stop();
    expect(a.accepting).toEqual([false, true]);
    // Another pair (here another VIP) does not continue it: the upgrade fails, the old one resumes.
    const other = make(1);
    await expect(other.f.start({ ...carry, identity: carry.identity.replace('198.51.100.200', '198.51.100.201') })).rejects.toMatchObject({ code: 'FULCRUM_ERR_UPGRADE', message: expect.stringMatching(/different pair/) });
    const next = make(1);
    await next.f.start(carry);
    const s = next.f.status();
    expect(s).toMatchObject({ role: 'master', wanted: 'master', transitions: 0, failovers: 0, heartbeat: { epoch: carry.sequence.epoch } });
    expect(next.roles).toEqual([]);
    // Many Master_Down_Intervals of b (about 180 ms each) with only the new instance's heartbeats.
    await staysFalse(() => b.roles.length > bRoles || b.f.status().role !== 'backup', 1000, 'the backup moves');
    expect(b.f.status().dropped.replayed).toBe(0);
    expect(b.f.status().peer).toMatchObject({ role: 'master', alive: true });
    expect(next.accepting).toEqual([true]); // accepting from the start, never paused
    expect(next.f.status().vip_held).toBe(true); // `ip addr add` of the address already there
  });

  it('abandon then resume (the upgrade failed): the master goes on with a fresh epoch, the backup never moves', async () => {
    const { a, b, bRoles } = await settledPair();
    const carry = await a.f.abandon();
    await a.f.resume();
    expect(a.f.status().heartbeat.epoch).not.toBe(carry.sequence.epoch);
    await staysFalse(() => b.roles.length > bRoles || b.f.status().role !== 'backup', 600, 'the backup moves');
    expect(a.f.status()).toMatchObject({ role: 'master', vip_held: true });
    expect(b.f.status().dropped.replayed).toBe(0);
    // Stopped as usual from here: it resigns, and the backup takes over.
    await a.f.stop();
    await until(() => b.f.status().role === 'master');
  });

  it('refuses to start without a usable secret', async () => {
    const config = haSchema.parse({
      vip: '198.51.100.200/24', interface: 'x', bind: '127.4.2.5:17947', peer: '127.4.2.6:17947', priority: 100, secret_file: join(dir, 'missing'),
    });
    const f = new Failover({ config, logger: silentLogger, commands: { ip: 'true', arping: 'true' } });
    await expect(f.start()).rejects.toMatchObject({ code: 'FULCRUM_ERR_HA_SECRET' });
  });
});

describe('Failover timing (on a test clock, the peer played over UDP)', () => {
  it('a backup takes over Master_Down_Interval after the last master advert, not before; the peer counts as lost then too', async () => {
    const clock = new TestClock();
    const peer = await playPeer(2);
    const b = make(2, { clock });
    await b.f.start();
    expect(b.f.status().role).toBe('backup');
    // dead_after × interval + Skew_Time(100): 150 + 30.47 ms, which a timer rounds down to 180.
    const mdi = Math.trunc(masterDownInterval(100, ADVERT_MS, DEAD_AFTER));
    expect(mdi).toBe(180);
    for (let i = 1; i <= 4; i++) {
      await peer('master', 150);
      await waitFor(() => b.f.status().heartbeat.received === i, 2000, `advert ${i}`);
      await clock.advance(mdi - 1); // each advert restarts the timer: one short of it, still backup
      expect(b.f.status()).toMatchObject({ role: 'backup', peer: { role: 'master', priority: 150, alive: true } });
    }
    expect(b.f.status().peer.last_advert_ms_ago).toBe(mdi - 1);
    await clock.advance(1);
    expect(b.f.status()).toMatchObject({ role: 'master', failovers: 1, peer: { alive: false, last_advert_ms_ago: mdi } });
    expect(b.roles.at(-1)).toMatchObject({ from: 'backup', to: 'master' });
    expect(b.roles.at(-1)?.cause).toMatch(/no advert from a master for 180ms/);
    await until(() => b.f.status().vip_held && b.accepting.at(-1) === true);
  });

  it('a master resigning (priority 0): the backup takes over after Skew_Time', async () => {
    const clock = new TestClock();
    const peer = await playPeer(2);
    const b = make(2, { clock });
    await b.f.start();
    await peer('master', 150);
    await waitFor(() => b.f.status().heartbeat.received === 1, 2000, 'the advert');
    await clock.advance(100);
    await peer('master', 0);
    await waitFor(() => b.f.status().heartbeat.received === 2, 2000, 'the resignation');
    const skew = Math.trunc(skewTime(100, ADVERT_MS)); // 30.47 ms
    await clock.advance(skew - 1);
    expect(b.f.status().role).toBe('backup');
    await clock.advance(1);
    expect(b.f.status().role).toBe('master');
    expect(b.roles.at(-1)?.cause).toMatch(/priority 0/);
  });

  it('a master whose `ip addr add` fails: fault at once, never accepting, a retry after 1 s, then after 2 s', async () => {
    const clock = new TestClock();
    await playPeer(2); // someone to send to (it says nothing)
    const b = make(2, { clock, ip: 'false' });
    await b.f.start();
    const mdi = Math.trunc(masterDownInterval(100, ADVERT_MS, DEAD_AFTER));
    await clock.advance(mdi);
    await waitFor(() => b.f.status().role === 'fault', 2000, 'the fault');
    expect(b.roles.map((r) => r.to)).toEqual(['backup', 'master', 'fault']);
    expect(b.roles.at(-1)?.cause).toMatch(/^cannot add the VIP: false addr add 198\.51\.100\.200\/24 dev eth-test: exited with code 1 \(retry in 1000ms\)$/);
    expect(b.f.status()).toMatchObject({ vip_held: false, vip_failures: 1, fault: { kind: 'vip' }, errors: { FULCRUM_ERR_VIP_ADD: 1 } });
    // The listeners were never started for the master that could not hold the VIP: by the time
    // the fault's `ip addr del` ran (failing too: one at start, this one), its queue is done.
    await waitFor(() => b.f.status().errors.FULCRUM_ERR_VIP_REMOVE === 2, 2000, 'the fault\'s ip addr del');
    expect(b.accepting).toEqual([false]);
    await clock.advance(999);
    expect(b.f.status().role).toBe('fault');
    await clock.advance(1);
    expect(b.roles.at(-1)).toMatchObject({ from: 'fault', to: 'backup' });
    await clock.advance(mdi);
    await waitFor(() => b.f.status().role === 'fault', 2000, 'the second fault');
    expect(b.roles.at(-1)?.cause).toMatch(/\(retry in 2000ms\)$/);
    await clock.advance(1999);
    expect(b.f.status().role).toBe('fault');
    await clock.advance(1);
    expect(b.f.status().role).toBe('backup');
  });

  it('sends one heartbeat per advert interval, as its role', async () => {
    const clock = new TestClock();
    await playPeer(2); // someone to send to (it says nothing)
    const b = make(2, { clock });
    await b.f.start();
    const sent = () => b.f.status().heartbeat.sent;
    await waitFor(() => sent() === 1, 2000, 'the first heartbeat, at start');
    await clock.advance(ADVERT_MS - 1);
    expect(sent()).toBe(1);
    await clock.advance(1);
    await waitFor(() => sent() === 2, 2000, 'the second heartbeat');
    await clock.advance(2 * ADVERT_MS);
    await waitFor(() => sent() === 4, 2000, 'two more heartbeats');
    expect(sent()).toBe(4);
  });
});
