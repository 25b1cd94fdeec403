// The active/passive pair in real network namespaces, each balancer the real `bin/fulcrum run`
// (see lab.ts for the topology). Root only; skipped elsewhere.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ipv4ToInt } from '../../src/failover/fsm.ts';
import { encodeAdvert, type Advert } from '../../src/failover/heartbeat.ts';
import { staysFalse, waitFor } from '../helpers/net.ts';
import { netnsAvailable } from '../helpers/netns.ts';
import { CLIENTS, NODES, PairLab, SECRET, VIP, type ClientResult } from './lab.ts';

const HAVE_NETNS = netnsAvailable();

/** From the kill to the completion of the first successful connect that follows a failed one. */
function takeoverMs(results: ClientResult[], killedAt: number): number | null {
  const after = results.filter((r) => r.t >= killedAt).sort((a, b) => a.t - b.t);
  const firstFail = after.find((r) => !r.ok);
  if (!firstFail) return after.length > 0 ? 0 : null;
  const firstOk = after.find((r) => r.ok && r.t > firstFail.t);
  return firstOk ? firstOk.done - killedAt : null;
}

describe.skipIf(!HAVE_NETNS)('failover pair in network namespaces', () => {
  let p: PairLab;

  beforeAll(async () => {
    p = await PairLab.create('pair');
  });
  afterEach(async (ctx) => {
    if (ctx.task.result?.state === 'fail') console.log(p.dump().slice(-20_000));
    await Promise.all([...p.running.keys()].map((n) => p.kill9(n)));
    await p.partition(false);
    // kill -9 leaves the VIP behind (as a crashed process would): clear it for the next test.
    for (const n of ['lb1', 'lb2'] as const) await p.lab.ip(n, 'addr', 'del', `${VIP}/24`, 'dev', 'eth0').catch(() => {});
  });
  afterAll(async () => {
    await p?.destroy();
  });

  async function startPair(c: Parameters<PairLab['start']>[1] = {}) {
    await p.start('lb1', c);
    await p.start('lb2', c);
    await p.waitRole('lb1', 'master', 5000);
    await p.waitRole('lb2', 'backup', 5000);
    await p.waitServing(5000);
  }

  it('elects the higher priority: the VIP is on lb1 only and serves', async () => {
    await startPair();
    expect(await p.holdsVip('lb1')).toBe(true);
    expect(await p.holdsVip('lb2')).toBe(false);
    const m = await p.clientOnce([CLIENTS[0]]);
    expect(m.get(CLIENTS[0])).toMatch(/^198\.51\.100\.2[123]:9000$/);
  });

  it('kill -9 of the master: new connections through the VIP succeed again within 2 s', async () => {
    await startPair();
    const loop = p.clientLoop(20, 3000, 250);
    await waitFor(() => loop.results.filter((r) => r.ok).length >= 10, 3000, 'the client loop served through lb1');
    const killedAt = Date.now();
    await p.kill9('lb1');
    await loop.done;
    const ms = takeoverMs(loop.results, killedAt);
    console.log(`kill -9 → first successful connect through the VIP: ${ms} ms`);
    expect(ms).not.toBeNull();
    expect(ms!).toBeLessThan(2000);
    expect(p.role('lb2')).toBe('master');
    await p.waitVip('lb2', true);
    expect(p.transitions('lb2').at(-1)?.cause).toMatch(/no advert from a master/);
    // Connections after the takeover keep succeeding.
    const late = loop.results.filter((r) => r.t > killedAt + ms! + 100);
    expect(late.length).toBeGreaterThan(10);
    expect(late.every((r) => r.ok)).toBe(true);
  });

  it('kill -9 of the master: a UDP client keeps getting replies through the VIP within 1 s, from the same backend (maglev)', async () => {
    const UDP_PORT = 27960;
    await startPair({ udpPort: UDP_PORT });
    const loop = p.udpLoop(UDP_PORT, CLIENTS[1], 20, 3000);
    await waitFor(() => loop.results.length >= 10, 3000, 'UDP replies through lb1');
    const before = new Set(loop.results.map((r) => r.body));
    expect(before.size).toBe(1);
    const killedAt = Date.now();
    await p.kill9('lb1');
    await loop.done;
    const after = loop.results.filter((r) => r.done > killedAt);
    expect(after.length).toBeGreaterThan(10);
    const firstMs = after[0].done - killedAt;
    console.log(`kill -9 → first UDP reply through the VIP: ${firstMs} ms`);
    expect(firstMs).toBeLessThan(1000);
    // lb2 made a new flow at the first datagram it got, and its Maglev table is lb1's.
    expect(new Set(after.map((r) => r.body))).toEqual(before);
    expect(p.role('lb2')).toBe('master');
  });

  it('SIGTERM of the master: priority 0, the backup takes over in about one advert interval', async () => {
    await startPair();
    const t0 = Date.now();
    const exit = p.term('lb1');
    const took = await p.waitRole('lb2', 'master', 3000);
    console.log(`SIGTERM → lb2 master after ${took} ms`);
    expect(took).toBeLessThan(1000);
    expect(p.transitions('lb2').at(-1)?.cause).toMatch(/resigned \(priority 0\)/);
    expect(await exit).toBe(0);
    expect(await p.holdsVip('lb1')).toBe(false); // removed before the process exited
    await p.waitServing(2000);
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it('preempt: true — the returning higher priority takes the VIP back', async () => {
    await startPair({ preempt: true });
    await p.kill9('lb1');
    await p.waitRole('lb2', 'master', 3000);
    await p.start('lb1', { preempt: true });
    await p.waitRole('lb1', 'master', 3000);
    await p.waitRole('lb2', 'backup', 1000);
    expect(p.transitions('lb2').at(-1)?.handler).toBe('masterOnHigherPriority');
    await p.waitVip('lb1', true);
    await p.waitVip('lb2', false);
    await p.waitServing(2000);
  });

  it('preempt: false — the returning higher priority stays backup', async () => {
    await startPair({ preempt: false });
    await p.kill9('lb1');
    await p.waitRole('lb2', 'master', 3000);
    await p.start('lb1', { preempt: false });
    await p.waitRole('lb1', 'backup', 3000);
    // A bounded look over many Master_Down_Intervals (≈ 360 ms): real time, as these are real
    // processes; the exact timers are checked on a test clock in failover.test.ts.
    await staysFalse(() => p.role('lb1') !== 'backup' || p.role('lb2') !== 'master', 1500, 'a role change with preempt: false');
    expect(p.role('lb1')).toBe('backup');
    expect(p.role('lb2')).toBe('master');
    expect(await p.holdsVip('lb1')).toBe(false);
    expect(await p.holdsVip('lb2')).toBe(true);
  });

  it('reload (SIGHUP): the backup given a higher priority takes the VIP, as keepalived\'s reload would have it', async () => {
    await startPair({ preempt: true });
    const line = await p.reload('lb2', { preempt: true, priority: 200 });
    expect(line).toMatchObject({ msg: 'reload applied: 1 change', changes: ['ha.priority: 100 → 200'], restart_required: [] });
    const took = await p.waitRole('lb2', 'master', 2000);
    console.log(`reload with priority 200 → lb2 master after ${took} ms`);
    await p.waitRole('lb1', 'backup', 1000);
    expect(p.transitions('lb1').at(-1)?.handler).toBe('masterOnHigherPriority');
    await p.waitVip('lb2', true);
    await p.waitVip('lb1', false);
    await p.waitServing(2000);
    // A second reload: the advert interval changes in place, the master stays master.
    const retimed = await p.reload('lb2', { preempt: true, priority: 200, advertInterval: '50ms' });
    expect(retimed.changes).toEqual(['ha.advert_interval: 100 → 50']);
    await staysFalse(() => p.role('lb2') !== 'master', 500, 'lb2 left master after the retime'); // real processes: a bounded look
    expect(p.role('lb2')).toBe('master');
  });

  it('reload adding a service on the VIP: the backup applies it without listening, and serves it once master', async () => {
    await startPair();
    const extraPort = 8081;
    // The backup first: the VIP is not on lb2, so the new service waits paused, as at start-up.
    const onBackup = await p.reload('lb2', { extraPort });
    expect(onBackup).toMatchObject({ msg: 'reload applied: 1 change', changes: [`service web2 added (listen ${VIP}:${extraPort}, 3 backends)`] });
    const onMaster = await p.reload('lb1', { extraPort });
    expect(onMaster.msg).toBe('reload applied: 1 change');
    const via = async (): Promise<string | null | undefined> => (await p.clientOnce([CLIENTS[0]], 500, extraPort)).get(CLIENTS[0]);
    expect(await via()).toBeTruthy();
    await p.kill9('lb1');
    await p.waitRole('lb2', 'master', 2000);
    await waitFor(async () => Boolean(await via()), 2000, `web2 served on ${VIP}:${extraPort} by the new master`, 50);
  });

  it('a partition of the heartbeat link makes two masters; healing leaves exactly one within an advert or two', async () => {
    await startPair();
    await p.partition(true);
    await p.waitRole('lb2', 'master', 3000);
    expect(p.role('lb1')).toBe('master'); // split brain, as VRRP would have it
    await p.waitVip('lb2', true);
    // The split brain has done its harm once the client sends to lb2 for the VIP (lb2's gratuitous ARP).
    const lb2Mac = /link\/ether ([0-9a-f:]+)/.exec(await p.lab.ip('lb2', 'link', 'show', 'eth0'))?.[1];
    expect(lb2Mac).toBeTruthy();
    await waitFor(async () => (await p.lab.ip('client', 'neigh', 'show', VIP)).includes(lb2Mac!), 3000, 'the client to learn lb2\'s MAC for the VIP');
    const healedAt = Date.now();
    await p.partition(false);
    const took = await p.waitRole('lb2', 'backup', 2000);
    console.log(`partition healed → one master after ${took} ms`);
    expect(took).toBeLessThan(1000);
    expect(p.role('lb1')).toBe('master');
    expect(p.transitions('lb2').at(-1)?.handler).toBe('masterOnHigherPriority');
    // The winner announced the VIP again (during the split brain the client learnt lb2's MAC),
    // whichever packet crossed the healed link first: without it the client would wait for ARP
    // to time out.
    const announcement = () => p.running.get('lb1')!.lines.find((x) => (x.handler === 'masterOnLowerPriority' || x.handler === 'masterOnPeerReturn') && Date.parse(String(x.time)) >= healedAt - 50);
    const announcedAfter = await waitFor(() => announcement() !== undefined, 2000, 'lb1 to announce the VIP again', 10)
      .then(() => Date.parse(String(announcement()!.time)) - healedAt, () => null);
    console.log(`partition healed → lb1 announced the VIP again after ${announcedAfter} ms`);
    expect(announcedAfter).not.toBeNull();
    await p.waitServing(1000);
    await staysFalse(() => p.role('lb1') !== 'master' || p.role('lb2') !== 'backup', 500, 'a role change after the heal'); // real processes: a bounded look
    expect(p.role('lb1')).toBe('master');
    expect(p.role('lb2')).toBe('backup');
    expect(await p.holdsVip('lb1')).toBe(true);
    expect(await p.holdsVip('lb2')).toBe(false);
    await p.waitServing(2000);
  });

  it('forged, replayed, stale, truncated and oversized heartbeats change nothing and are counted', async () => {
    await startPair();
    const key = Buffer.from(SECRET);
    const lb2Epoch = p.epoch('lb2');
    // What lb2 would send if it wanted the VIP (priority 254, master), in every bad variant. The
    // replay is byte-for-byte a genuine packet of lb2's current epoch with an old sequence number
    // (counter 1, long accepted by lb1): what an attacker who captured it would resend.
    const base: Advert = {
      role: 'master', priority: 254, epoch: lb2Epoch, counter: 1, timestampMs: Date.now(),
      senderAddress: ipv4ToInt(NODES.lb2.hb), senderPort: 7946, intervalMs: 100,
    };
    const forged = encodeAdvert({ ...base, counter: 0xfffffff0 }, Buffer.from('not-the-secret-not-the-secret!!'));
    const replayed = encodeAdvert(base, key);
    const stale = encodeAdvert({ ...base, epoch: (lb2Epoch + 1) >>> 0, timestampMs: Date.now() - 60_000 }, key);
    const truncated = encodeAdvert({ ...base, counter: 0xfffffff1 }, key).subarray(0, 40);
    const oversized = Buffer.concat([encodeAdvert({ ...base, counter: 0xfffffff2 }, key), Buffer.alloc(512)]);
    const badMagic = Buffer.alloc(64, 0x41);
    const transitionsBefore = [p.transitions('lb1').length, p.transitions('lb2').length];
    await p.inject('lb2', NODES.lb2.hb, 'lb1', [forged, replayed, stale, truncated, oversized, badMagic]);
    // All six handled (a packet that got through would never be counted as a drop: this would time out).
    await waitFor(() => Object.values(p.drops('lb1')).reduce((a, b) => a + b, 0) >= 6, 3000, 'six drops logged by lb1');
    expect(p.drops('lb1')).toEqual({ bad_mac: 1, replayed: 1, stale: 1, malformed: 1, oversized: 1, bad_magic: 1 });
    expect([p.transitions('lb1').length, p.transitions('lb2').length]).toEqual(transitionsBefore);
    expect(p.role('lb1')).toBe('master');
    expect(p.role('lb2')).toBe('backup');
    expect(await p.holdsVip('lb1')).toBe(true);
  });

  it('maglev: the same client address reaches the same backend before and after failover', async () => {
    await startPair({ balance: 'maglev' });
    const before = await p.clientOnce();
    expect([...before.values()].every((v) => v !== null)).toBe(true);
    expect(new Set(before.values()).size).toBeGreaterThan(1); // the keys really spread
    await p.kill9('lb1');
    await p.waitRole('lb2', 'master', 3000);
    await p.waitServing(3000);
    const after = await p.clientOnce();
    expect(Object.fromEntries(after)).toEqual(Object.fromEntries(before));
  });

  it('track: the master\'s interface going down hands the VIP to a healthy backup', async () => {
    await startPair();
    await p.lab.ip('sw', 'link', 'set', NODES.lb1.swLan, 'down'); // lb1's eth0 loses its carrier
    try {
      await p.waitRole('lb2', 'master', 3000);
      await p.waitRole('lb1', 'fault', 1000);
      expect(p.transitions('lb1').at(-1)?.cause).toMatch(/interface eth0 is (lowerlayerdown|down)/);
      await p.waitVip('lb1', false);
    } finally {
      await p.lab.ip('sw', 'link', 'set', NODES.lb1.swLan, 'up');
    }
    await p.waitRole('lb1', 'master', 3000); // healthy again, preempts
    await p.waitRole('lb2', 'backup', 1000);
  });
});
