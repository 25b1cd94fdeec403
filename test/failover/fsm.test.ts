// The pure state machine: each handler's decision and actions, then two FSMs wired through a
// simulated network with a virtual clock (start, death, clean stop, preempt, partition and healing).
import { describe, expect, it } from 'vitest';
import { FailoverFsm, ipv4ToInt, masterDownInterval, skewTime, VIP_RETRY_BASE_MS, VIP_RETRY_MAX_MS, type Action, type PeerAdvert, type Role, type Step } from '../../src/failover/fsm.ts';

const A1 = ipv4ToInt('192.0.2.1');
const A2 = ipv4ToInt('192.0.2.2');

function fsm(priority = 150, opts: Partial<{ preempt: boolean; address: number; interval: number; deadAfter: number }> = {}) {
  return new FailoverFsm({ priority, address: opts.address ?? A1, advertIntervalMs: opts.interval ?? 100, deadAfter: opts.deadAfter ?? 3, preempt: opts.preempt ?? true });
}
const advert = (role: Role, priority: number, address = A2, intervalMs = 100): PeerAdvert => ({ role, priority, address, intervalMs });
const types = (s: Step | null) => s?.actions.map((a) => (a.type === 'sendAdvert' ? `sendAdvert(${a.priority})` : a.type));

function toMaster(f: FailoverFsm) {
  f.start();
  return f.masterDown();
}

describe('timers (RFC 5798 §6.1)', () => {
  it('computes Skew_Time and Master_Down_Interval with dead_after in place of 3', () => {
    expect(skewTime(150, 100)).toBeCloseTo(41.40625);
    expect(masterDownInterval(150, 100, 3)).toBeCloseTo(341.40625);
    expect(masterDownInterval(100, 100, 3)).toBeGreaterThan(masterDownInterval(150, 100, 3));
  });
  it('rejects a priority outside 1–254', () => {
    expect(() => fsm(255)).toThrow(/ha.priority.*255/);
    expect(() => fsm(0)).toThrow(/got 0/);
  });
});

describe('init', () => {
  it('initOnStart: backup with the master-down timer armed', () => {
    const f = fsm();
    const s = f.start();
    expect(s).toMatchObject({ from: 'init', to: 'backup', handler: 'initOnStart' });
    expect(s?.actions).toEqual([{ type: 'armMasterDown', ms: masterDownInterval(150, 100, 3) }]);
  });
  it('initOnStart with a failing track: fault, no timer', () => {
    const f = fsm();
    f.trackFail('0 backends up');
    const s = f.start();
    expect(s).toMatchObject({ to: 'fault', handler: 'initOnStart' });
    expect(s?.cause).toMatch(/0 backends up/);
    expect(s?.actions).toEqual([]);
  });
  it('remembers the peer before start but does not act', () => {
    const f = fsm();
    expect(f.advert(advert('master', 100))).toBeNull();
    expect(f.peer).toMatchObject({ role: 'master', priority: 100, alive: true });
  });
});

describe('continueFrom (an upgrade: another process\'s abandoned failover)', () => {
  const peer = { role: 'backup' as Role, priority: 100, address: A2, alive: true };
  it('initOnCarried as master: stays master, verifies the VIP and accepts; no ARP, no transition cause to act on', () => {
    const f = fsm();
    const s = f.continueFrom({ role: 'master', peer, masterAdvertIntervalMs: 100, vipFailures: 0 });
    expect(s).toMatchObject({ from: 'init', to: 'master', handler: 'initOnCarried' });
    expect(types(s)).toEqual(['addVip', 'startAccepting']);
    expect(f.wanted).toBe('master');
    expect(f.peer).toEqual(peer);
    // Then it behaves as any master: a higher-priority master still wins.
    expect(f.advert(advert('master', 200))).toMatchObject({ to: 'backup', handler: 'masterOnHigherPriority' });
  });
  it('as master with a failing track: keeps the VIP and wants fault, handing over when the peer is ready', () => {
    const f = fsm();
    f.trackFail('0 backends up');
    expect(f.continueFrom({ role: 'master', peer: null, masterAdvertIntervalMs: 100, vipFailures: 0 })).toMatchObject({ to: 'master' });
    expect(f.wanted).toBe('fault');
    expect(f.advert(advert('backup', 100))).toMatchObject({ to: 'fault', handler: 'masterOnPeerReady' });
  });
  it('as backup: stays backup, a whole Master_Down_Interval at the interval it had learnt', () => {
    const f = fsm(100);
    const s = f.continueFrom({ role: 'backup', peer: { ...peer, role: 'master', priority: 150 }, masterAdvertIntervalMs: 200, vipFailures: 1 });
    expect(s).toMatchObject({ from: 'init', to: 'backup', handler: 'initOnCarried' });
    expect(s?.actions).toEqual([{ type: 'armMasterDown', ms: masterDownInterval(100, 200, 3) }]);
    expect(f.vipFailures).toBe(1);
  });
  it('fault or init carried: starts as a fresh process does; once started, nothing', () => {
    const f = fsm();
    expect(f.continueFrom({ role: 'fault', peer: null, masterAdvertIntervalMs: 100, vipFailures: 0 })).toMatchObject({ to: 'backup', handler: 'initOnStart' });
    expect(f.continueFrom({ role: 'master', peer: null, masterAdvertIntervalMs: 100, vipFailures: 0 })).toBeNull();
  });
});

describe('backup', () => {
  it('backupOnMasterDown: takes the VIP, then accepts, then tells the peer and the LAN', () => {
    const f = fsm();
    f.start();
    const s = f.masterDown();
    expect(s).toMatchObject({ from: 'backup', to: 'master', handler: 'backupOnMasterDown' });
    expect(types(s)).toEqual(['cancelMasterDown', 'addVip', 'startAccepting', 'sendAdvert(150)', 'sendGarp']);
    expect(s?.cause).toMatch(/no advert from a master/);
  });
  it('backupOnAdvert: a higher-priority master resets the timer, learning its interval (§6.4.2)', () => {
    const f = fsm(100);
    f.start();
    const s = f.advert(advert('master', 150, A2, 200));
    expect(s?.handler).toBe('backupOnAdvert');
    expect(s?.to).toBe('backup');
    expect(s?.actions).toEqual([{ type: 'armMasterDown', ms: masterDownInterval(100, 200, 3) }]);
  });
  it('ignores heartbeats from a peer that is not master', () => {
    const f = fsm();
    f.start();
    expect(f.advert(advert('backup', 200))).toBeNull();
    expect(f.advert(advert('fault', 200))).toBeNull();
    expect(f.current).toBe('backup');
  });
  it('backupOnMasterResign: priority 0 arms the timer for Skew_Time only', () => {
    const f = fsm(100);
    f.start();
    const s = f.advert(advert('master', 0));
    expect(s?.handler).toBe('backupOnMasterResign');
    expect(s?.actions).toEqual([{ type: 'armMasterDown', ms: skewTime(100, 100) }]);
    expect(f.masterDown()?.cause).toMatch(/resigned/);
    expect(f.current).toBe('master');
  });
  it('preempt true: a lower-priority master\'s advert is discarded (timer not reset), so we take over', () => {
    const f = fsm(150, { preempt: true });
    f.start();
    expect(f.advert(advert('master', 100))).toBeNull();
    const s = f.masterDown();
    expect(s?.to).toBe('master');
    expect(s?.cause).toMatch(/preempting/);
  });
  it('preempt false: a lower-priority master keeps the VIP (timer reset)', () => {
    const f = fsm(150, { preempt: false });
    f.start();
    const s = f.advert(advert('master', 100));
    expect(s?.handler).toBe('backupOnAdvert');
    expect(types(s)).toEqual(['armMasterDown']);
  });
  it('backupOnTrackFail: fault, timer cancelled', () => {
    const f = fsm();
    f.start();
    const s = f.trackFail('interface eth0 is down');
    expect(s).toMatchObject({ from: 'backup', to: 'fault', handler: 'backupOnTrackFail' });
    expect(types(s)).toEqual(['cancelMasterDown']);
  });
});

describe('master', () => {
  it('masterOnHigherPriority: steps down, releasing listeners before the address', () => {
    const f = fsm(100);
    toMaster(f);
    const s = f.advert(advert('master', 150));
    expect(s).toMatchObject({ from: 'master', to: 'backup', handler: 'masterOnHigherPriority' });
    expect(types(s)).toEqual(['stopAccepting', 'removeVip', 'armMasterDown']);
  });
  it('equal priority: the higher address wins (§6.4.3)', () => {
    const low = fsm(100, { address: A1 });
    toMaster(low);
    expect(low.advert(advert('master', 100, A2))?.to).toBe('backup');
    const high = fsm(100, { address: A2 });
    toMaster(high);
    const s = high.advert(advert('master', 100, A1));
    expect(s).toMatchObject({ to: 'master', handler: 'masterOnLowerPriority' });
  });
  it('masterOnLowerPriority: stays master, answers at once and announces the VIP again', () => {
    const f = fsm(150);
    toMaster(f);
    const s = f.advert(advert('master', 100));
    expect(s).toMatchObject({ from: 'master', to: 'master', handler: 'masterOnLowerPriority' });
    expect(types(s)).toEqual(['sendAdvert(150)', 'sendGarp']);
  });
  it('masterOnPeerReturn: a peer heard again after being lost, or stepping down from master, makes us announce the VIP', () => {
    const f = fsm(150);
    toMaster(f);
    expect(f.advert(advert('backup', 100))).toBeNull(); // first sight: nothing to repair
    f.peerLost();
    const back = f.advert(advert('backup', 100));
    expect(back).toMatchObject({ to: 'master', handler: 'masterOnPeerReturn' });
    expect(types(back)).toEqual(['sendGarp']);
    expect(f.advert(advert('backup', 100))).toBeNull(); // only once
    f.advert(advert('master', 100)); // split brain…
    expect(f.advert(advert('backup', 100))?.handler).toBe('masterOnPeerReturn'); // …ended by the loser's step-down
  });
  it('masterOnResign: another master leaving makes us assert', () => {
    const f = fsm(150);
    toMaster(f);
    expect(types(f.advert(advert('master', 0)))).toEqual(['sendAdvert(150)', 'sendGarp']);
    expect(f.current).toBe('master');
  });
  it('masterOnTrackFail with a healthy backup alive: fault, priority 0 before releasing the VIP', () => {
    const f = fsm(150);
    toMaster(f);
    f.advert(advert('backup', 100));
    const s = f.trackFail('0 backends up, ha.track.min_backends_up is 1');
    expect(s).toMatchObject({ from: 'master', to: 'fault', handler: 'masterOnTrackFail' });
    expect(types(s)).toEqual(['stopAccepting', 'sendAdvert(0)', 'removeVip']);
  });
  it('masterOnTrackFail with no peer able to take over: keeps the VIP, wants fault, hands over when the peer is ready', () => {
    const f = fsm(150);
    toMaster(f);
    f.advert(advert('backup', 100));
    f.peerLost();
    const s = f.trackFail('0 backends up');
    expect(s).toMatchObject({ to: 'master', handler: 'masterOnTrackFail' });
    expect(s?.actions).toEqual([]);
    expect(f.wanted).toBe('fault');
    expect(f.trackFail('still 0')).toBeNull(); // no repeat
    // The peer comes back in fault: still cannot take it (we only announce the VIP again).
    expect(f.advert(advert('fault', 100))?.handler).toBe('masterOnPeerReturn');
    expect(f.current).toBe('master');
    const ready = f.advert(advert('backup', 100));
    expect(ready).toMatchObject({ to: 'fault', handler: 'masterOnPeerReady' });
    expect(types(ready)).toEqual(['stopAccepting', 'sendAdvert(0)', 'removeVip']);
  });
  it('masterOnTrackOk: the wish to leave is withdrawn', () => {
    const f = fsm(150);
    toMaster(f);
    f.trackFail('0 backends up');
    expect(f.wanted).toBe('fault');
    expect(f.trackOk('1 backends up')?.handler).toBe('masterOnTrackOk');
    expect(f.wanted).toBe('master');
    expect(f.advert(advert('backup', 100))).toBeNull();
  });
  it('masterOnStop: stop accepting, priority 0, then remove the VIP', () => {
    const f = fsm(150);
    toMaster(f);
    const s = f.stop();
    expect(s).toMatchObject({ from: 'master', to: 'init', handler: 'masterOnStop' });
    expect(types(s)).toEqual(['stopAccepting', 'sendAdvert(0)', 'removeVip']);
  });
});

describe('fault', () => {
  it('faultOnTrackOk: back to backup with the timer armed', () => {
    const f = fsm();
    f.trackFail('interface eth0 is down');
    f.start();
    const s = f.trackOk('interface eth0 up');
    expect(s).toMatchObject({ from: 'fault', to: 'backup', handler: 'faultOnTrackOk' });
    expect(types(s)).toEqual(['armMasterDown']);
  });
  it('never competes for the VIP', () => {
    const f = fsm();
    f.trackFail('x');
    f.start();
    expect(f.advert(advert('master', 0))).toBeNull();
    expect(f.masterDown()).toBeNull();
    expect(f.current).toBe('fault');
  });
});

describe('a VIP that cannot be held (issue 16: a master without its VIP kept advertising)', () => {
  it('masterOnVipFail: fault, priority 0 so the peer takes over, the VIP released, a retry armed', () => {
    const f = fsm();
    toMaster(f);
    const s = f.vipFailed('add', 'ip addr add 198.51.100.100/24 dev eth0: RTNETLINK answers: Operation not permitted');
    expect(s).toMatchObject({ from: 'master', to: 'fault', handler: 'masterOnVipFail' });
    expect(s?.cause).toMatch(/^cannot add the VIP: ip addr add .*Operation not permitted \(retry in 1000ms\)$/);
    expect(types(s)).toEqual(['stopAccepting', 'sendAdvert(0)', 'removeVip', 'armVipRetry']);
    expect(s?.actions.at(-1)).toEqual({ type: 'armVipRetry', ms: VIP_RETRY_BASE_MS });
    expect(f.wanted).toBe('fault');
    expect(f.vipFault).toMatch(/^cannot add the VIP/);
  });
  it('a failed announcement (arping) is a fault too', () => {
    const f = fsm();
    toMaster(f);
    const s = f.vipFailed('garp', 'arping: socket: Operation not permitted');
    expect(s).toMatchObject({ to: 'fault', handler: 'masterOnVipFail' });
    expect(s?.cause).toMatch(/^cannot announce the VIP: arping/);
  });
  it('faultOnVipRetry: back to backup with the master-down timer, which takes the VIP again if no master is left', () => {
    const f = fsm();
    toMaster(f);
    f.vipFailed('add', 'x');
    const s = f.vipRetry();
    expect(s).toMatchObject({ from: 'fault', to: 'backup', handler: 'faultOnVipRetry' });
    expect(s?.actions).toEqual([{ type: 'armMasterDown', ms: masterDownInterval(150, 100, 3) }]);
    expect(f.vipFault).toBeNull();
    expect(types(f.masterDown())).toEqual(['cancelMasterDown', 'addVip', 'startAccepting', 'sendAdvert(150)', 'sendGarp']);
  });
  it('the retry backs off (doubling, capped) until the VIP is held and announced again', () => {
    const f = fsm();
    const delays: number[] = [];
    for (let i = 0; i < 8; i++) {
      toMaster(f);
      const s = f.vipFailed('add', 'x');
      delays.push((s?.actions.at(-1) as { ms: number }).ms);
      f.vipRetry();
    }
    expect(delays).toEqual([1000, 2000, 4000, 8000, 16_000, VIP_RETRY_MAX_MS, VIP_RETRY_MAX_MS, VIP_RETRY_MAX_MS]);
    f.masterDown();
    f.vipOk();
    expect(f.vipFailures).toBe(0);
    expect((f.vipFailed('add', 'x')?.actions.at(-1) as { ms: number }).ms).toBe(VIP_RETRY_BASE_MS);
  });
  it('after a VIP fault the backup does not preempt a lower-priority master that holds the VIP', () => {
    const f = fsm(150, { preempt: true });
    toMaster(f);
    f.vipFailed('add', 'x');
    f.vipRetry();
    // Not discarded (as backupOnLowerPriority would): the timer is reset, the working master keeps the VIP.
    expect(f.advert(advert('master', 100))).toMatchObject({ handler: 'backupOnAdvert', actions: [{ type: 'armMasterDown' }] });
    // Once the VIP was held and announced again, preempting is back.
    f.masterDown();
    f.vipOk();
    f.advert(advert('master', 200));
    expect(f.current).toBe('backup');
    expect(f.advert(advert('master', 100))).toBeNull();
  });
  it('only the retry leaves a VIP fault: a track that recovers meanwhile waits for it; a track still failing keeps fault', () => {
    const f = fsm();
    toMaster(f);
    f.vipFailed('add', 'x');
    f.trackFail('0 backends up');
    expect(f.trackOk('3 backends up')).toMatchObject({ from: 'fault', to: 'fault', handler: 'faultOnTrackOk' });
    f.trackFail('0 backends up');
    expect(f.vipRetry()).toMatchObject({ from: 'fault', to: 'fault', handler: 'faultOnVipRetry' });
    expect(f.trackOk('3 backends up')).toMatchObject({ to: 'backup', handler: 'faultOnTrackOk' });
  });
  it('ignored outside master (a late failure after stepping down); a stop cancels the retry', () => {
    const f = fsm();
    f.start();
    expect(f.vipFailed('add', 'x')).toBeNull();
    expect(f.vipRetry()).toBeNull();
    f.masterDown();
    f.vipFailed('add', 'x');
    expect(f.stop()).toMatchObject({ to: 'init', handler: 'faultOnStop', actions: [{ type: 'cancelVipRetry' }] });
    expect(f.vipFault).toBeNull();
  });
});

describe('reconfigure (a reload)', () => {
  const settings = (priority: number, o: Partial<{ preempt: boolean; interval: number; deadAfter: number }> = {}) =>
    ({ priority, advertIntervalMs: o.interval ?? 100, deadAfter: o.deadAfter ?? 3, preempt: o.preempt ?? true });

  it('nothing changed: no step', () => {
    const f = fsm(100);
    f.start();
    expect(f.reconfigure(settings(100))).toBeNull();
  });
  it('backupOnReconfigure: the timer restarts with the new Master_Down_Interval; a priority now above the master\'s preempts it', () => {
    const f = fsm(100);
    f.start();
    expect(f.advert(advert('master', 150))?.handler).toBe('backupOnAdvert');
    const s = f.reconfigure(settings(200, { deadAfter: 4 }));
    expect(s).toMatchObject({ from: 'backup', to: 'backup', handler: 'backupOnReconfigure' });
    expect(s?.cause).toBe('reconfigured: priority 100 → 200, dead_after 3 → 4');
    expect(s?.actions).toEqual([{ type: 'armMasterDown', ms: masterDownInterval(200, 100, 4) }]);
    // The master's adverts (150 < 200) are now discarded, so the timer fires: we take over.
    expect(f.advert(advert('master', 150))).toBeNull();
    expect(f.masterDown()?.cause).toMatch(/preempting a lower-priority master \(150 < 200\)/);
  });
  it('a backup given preempt false keeps resetting its timer on a lower master', () => {
    const f = fsm(200);
    f.start();
    f.reconfigure(settings(200, { preempt: false }));
    expect(f.advert(advert('master', 150))?.handler).toBe('backupOnAdvert');
  });
  it('masterOnReconfigure: tells the peer the new priority at once', () => {
    const f = fsm(150);
    toMaster(f);
    const s = f.reconfigure(settings(90, { interval: 200 }));
    expect(s).toMatchObject({ from: 'master', to: 'master', handler: 'masterOnReconfigure' });
    expect(types(s)).toEqual(['sendAdvert(90)']);
    expect(f.masterDownMs()).toBe(masterDownInterval(90, 200, 3));
    // The peer, preempting with 100 > 90, becomes master: we step down on its advert.
    expect(f.advert(advert('master', 100))?.handler).toBe('masterOnHigherPriority');
  });
  it('fault and init: the settings change, nothing else happens', () => {
    const f = fsm(150);
    f.trackFail('x');
    f.start();
    expect(f.reconfigure(settings(120))).toMatchObject({ to: 'fault', handler: 'faultOnReconfigure', actions: [] });
    const g = fsm(150);
    expect(g.reconfigure(settings(120))).toBeNull();
    expect(g.priority).toBe(120);
  });
  it('refuses a priority outside 1–254 and changes nothing', () => {
    const f = fsm(150);
    f.start();
    expect(() => f.reconfigure(settings(255))).toThrow(/ha.priority: must be an integer 1–254, got 255/);
    expect(f.priority).toBe(150);
  });
});

// ── two FSMs over a simulated network, virtual time ─────────────────────────────────────────────

interface Node {
  name: string;
  fsm: FailoverFsm;
  up: boolean;
  masterDownAt: number | null;
  nextAdvertAt: number;
}

class Sim {
  t = 0;
  partitioned = false;
  readonly nodes: Node[];
  readonly log: string[] = [];
  private inflight: { at: number; to: Node; a: PeerAdvert }[] = [];
  constructor(specs: { name: string; priority: number; address: number; preempt?: boolean }[]) {
    this.nodes = specs.map((s) => ({ name: s.name, fsm: fsm(s.priority, { address: s.address, preempt: s.preempt ?? true }), up: false, masterDownAt: null, nextAdvertAt: 0 }));
  }
  other(n: Node) { return this.nodes.find((m) => m !== n)!; }
  boot(n: Node) {
    n.fsm = fsm(n.fsm.priority, { address: n.fsm.address, preempt: n.fsm.preempt });
    n.up = true;
    n.nextAdvertAt = this.t;
    this.apply(n, n.fsm.start());
  }
  kill(n: Node) { n.up = false; n.masterDownAt = null; }
  stop(n: Node) { this.apply(n, n.fsm.stop()); n.up = false; n.masterDownAt = null; }
  send(from: Node, role: Role, priority: number) {
    if (this.partitioned) return;
    const to = this.other(from);
    this.inflight.push({ at: this.t + 1, to, a: { role, priority, address: from.fsm.address, intervalMs: 100 } });
  }
  apply(n: Node, s: Step | null) {
    if (!s) return;
    if (s.from !== s.to) this.log.push(`${this.t} ${n.name} ${s.from}→${s.to} ${s.handler}`);
    for (const a of s.actions as Action[]) {
      if (a.type === 'armMasterDown') n.masterDownAt = this.t + a.ms;
      if (a.type === 'cancelMasterDown') n.masterDownAt = null;
      if (a.type === 'sendAdvert') this.send(n, a.priority === 0 ? 'master' : n.fsm.current, a.priority);
    }
  }
  /** Advances virtual time in 1 ms steps. */
  run(ms: number) {
    for (const end = this.t + ms; this.t < end; this.t++) {
      for (const m of this.inflight.filter((x) => x.at <= this.t)) if (m.to.up) this.apply(m.to, m.to.fsm.advert(m.a));
      this.inflight = this.inflight.filter((x) => x.at > this.t);
      for (const n of this.nodes) {
        if (!n.up) continue;
        if (n.masterDownAt !== null && this.t >= n.masterDownAt) { n.masterDownAt = null; this.apply(n, n.fsm.masterDown()); }
        if (this.t >= n.nextAdvertAt) { n.nextAdvertAt = this.t + 100; this.send(n, n.fsm.current, n.fsm.priority); }
      }
    }
  }
  masters() { return this.nodes.filter((n) => n.up && n.fsm.current === 'master').map((n) => n.name); }
}

describe('a simulated pair', () => {
  const pair = (preempt = true) => new Sim([
    { name: 'lb1', priority: 150, address: A1, preempt },
    { name: 'lb2', priority: 100, address: A2, preempt },
  ]);

  it('started together: the higher priority becomes the only master', () => {
    const sim = pair();
    sim.boot(sim.nodes[0]); sim.boot(sim.nodes[1]);
    sim.run(1000);
    expect(sim.masters()).toEqual(['lb1']);
  });

  it('master killed: the backup takes over within Master_Down_Interval', () => {
    const sim = pair();
    sim.boot(sim.nodes[0]); sim.boot(sim.nodes[1]);
    sim.run(1000);
    sim.kill(sim.nodes[0]);
    const killedAt = sim.t;
    sim.run(1000);
    expect(sim.masters()).toEqual(['lb2']);
    const took = Number(sim.log.find((l) => l.includes('lb2 backup→master'))!.split(' ')[0]) - killedAt;
    expect(took).toBeLessThanOrEqual(Math.ceil(masterDownInterval(100, 100, 3)) + 1);
  });

  it('master stopped cleanly: the backup takes over after Skew_Time, well within one advert interval', () => {
    const sim = pair();
    sim.boot(sim.nodes[0]); sim.boot(sim.nodes[1]);
    sim.run(1000);
    const stoppedAt = sim.t;
    sim.stop(sim.nodes[0]);
    sim.run(300);
    const took = Number(sim.log.find((l) => l.includes('lb2 backup→master'))!.split(' ')[0]) - stoppedAt;
    expect(took).toBeLessThan(100);
  });

  it.each([true, false])('old master returning with preempt %s', (preempt) => {
    const sim = pair(preempt);
    sim.boot(sim.nodes[0]); sim.boot(sim.nodes[1]);
    sim.run(1000);
    sim.kill(sim.nodes[0]);
    sim.run(1000);
    sim.boot(sim.nodes[0]);
    sim.run(2000);
    expect(sim.masters()).toEqual([preempt ? 'lb1' : 'lb2']);
  });

  it.each([
    [150, 100, true], [150, 100, false], [100, 100, true], [100, 100, false],
  ])('partition and healing (priorities %i/%i, preempt %s): exactly one master within one advert', (p1, p2, preempt) => {
    const sim = new Sim([
      { name: 'lb1', priority: p1, address: A1, preempt },
      { name: 'lb2', priority: p2, address: A2, preempt },
    ]);
    sim.boot(sim.nodes[0]); sim.boot(sim.nodes[1]);
    sim.run(1000);
    sim.partitioned = true;
    sim.run(1000);
    expect(sim.masters().sort()).toEqual(['lb1', 'lb2']); // split brain while partitioned
    sim.partitioned = false;
    sim.run(100 + 2); // one advert interval (+ the simulated 1 ms of latency)
    const winner = p1 > p2 ? 'lb1' : p1 < p2 ? 'lb2' : 'lb2' /* higher address */;
    expect(sim.masters()).toEqual([winner]);
    sim.run(2000);
    expect(sim.masters()).toEqual([winner]);
  });
});
