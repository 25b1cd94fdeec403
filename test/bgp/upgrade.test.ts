/**
 * `fulcrum upgrade` of a node that announces its VIP by BGP (gobgp speaker), with real daemons in
 * namespaces (lab.ts): one node behind the FRR router, so a route that went away for a moment
 * would show as a failed connection as well as in the router's table. The node is upgraded three
 * times under steady churn: the router's BGP session never drops (FRR's own counters), the VIP's
 * next hop is there in every sample taken during the upgrades, no connection fails, gobgpd is the
 * same process throughout (adopted, not restarted), and each new process reports the session
 * established and the VIP announced. Upgrades that fail (a broken config; a bgp section that
 * would run gobgpd differently; a start that fails after adopting gobgpd) change nothing on the
 * router. Then the tie survived the upgrades: SIGSTOP of the newest process takes the route away
 * within liveness (and it starts a gobgpd of its own after SIGCONT), kill -9 withdraws it. And
 * the old process lets go at once: kill -9 of the new one withdraws while the old one still drains.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { alive, haveBinary, netnsAvailable, ROOT, sleep, waitForLine } from '../helpers/netns.ts';
import { BACKENDS, BgpLab, nodeOf, PORT, VIP } from './lab.ts';

const READY = netnsAvailable() && haveBinary('gobgpd') && haveBinary('/usr/lib/frr/bgpd') && haveBinary('setpriv');
const PEER = '10.251.1.2';

/** `fulcrum ctl` on node 1 by the admin address and token (not the config file, which a test breaks on purpose). */
function ctl(lab: BgpLab, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return lab.lab.exec('lb1', join(ROOT, 'bin/fulcrum'), ['ctl', '--admin', 'http://127.0.0.1:9900', '--token-file', join(lab.dir, 'admin1.token'), ...args], 90_000);
}

async function statusOf(lab: BgpLab): Promise<any> {
  const r = await ctl(lab, 'status', '--json');
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
}

async function upgradeOf(lab: BgpLab): Promise<{ code: number; out: string; pid: number | null }> {
  const r = await ctl(lab, 'upgrade');
  const m = /upgraded: pid (\d+) serves/.exec(r.stdout);
  return { code: r.code, out: r.stdout + r.stderr, pid: m ? Number(m[1]) : null };
}

describe.skipIf(!READY)('upgrade of a BGP node (gobgp speaker): the session and the route stay', () => {
  let lab: BgpLab;

  beforeAll(async () => {
    lab = await BgpLab.create('bgpup', 1);
    await lab.start(1);
    await lab.waitNextHops([1], 15_000);
  }, 90_000);
  afterAll(async () => {
    await lab?.destroy();
  });

  const status = () => statusOf(lab);
  const upgrade = () => upgradeOf(lab);

  /** The router's view of the node's session (FRR's counters). */
  async function neighbor(): Promise<{ state: string; established: number; dropped: number }> {
    const j = JSON.parse(await lab.vtysh(`show bgp neighbor ${PEER} json`))[PEER];
    return { state: j.bgpState, established: j.connectionsEstablished, dropped: j.connectionsDropped };
  }

  it('three upgrades under churn: the session never drops, the next hop never leaves, no connection fails, gobgpd is adopted; failed upgrades change nothing; SIGSTOP and kill -9 of the newest withdraw', async () => {
    const before = await neighbor();
    expect(before.state).toBe('Established');
    const first = await status();
    const gobgpd = first.bgp.speaker_info.gobgpd_pid as number;
    expect(gobgpd).toBeGreaterThan(0);
    let pid = first.pid as number;

    const loop = lab.clientLoop(10, 40_000, 1000);
    const route = lab.sampleNextHops(1);
    let lastUpgradeAt = 0;
    for (let i = 1; i <= 3; i++) {
      const r = await upgrade();
      expect(r.code, `${r.out}\n${lab.dump()}`).toBe(0);
      const next = r.pid!;
      expect(next).not.toBe(pid);
      const s = await status();
      expect(s.pid).toBe(next);
      // The session as the new process sees it (read at its adoption), the VIP announced, the same gobgpd.
      expect(s.bgp.sessions).toEqual([expect.objectContaining({ neighbor: '10.251.1.1', state: 'established' })]);
      expect(s.bgp.vips).toEqual([expect.objectContaining({ vip: VIP, announced: true })]);
      expect(s.bgp.speaker_info).toMatchObject({ gobgpd_pid: gobgpd, adopted_from: pid, running: true });
      // The old one drains (shutdown_grace 1 s) and exits without touching gobgpd.
      const old = pid;
      const t0 = Date.now();
      while (alive(old)) {
        if (Date.now() - t0 > 15_000) throw new Error(`old pid ${old} did not exit`);
        await sleep(50);
      }
      expect(alive(gobgpd)).toBe(true);
      pid = next;
      lastUpgradeAt = Date.now();
    }
    // Two more seconds of traffic and samples with the old processes gone.
    await sleep(2000);
    const sampled = await route.stop();
    await loop.done;
    const after = await neighbor();
    expect(after).toEqual(before);
    expect(sampled.samples).toBeGreaterThan(50);
    expect(sampled.missing).toBe(0);
    const failed = loop.results.filter((x) => !x.ok);
    expect(failed, JSON.stringify(failed.slice(0, 5))).toEqual([]);
    expect(loop.results.length).toBeGreaterThan(500);
    expect(loop.results.some((x) => x.t > lastUpgradeAt), 'the churn ran past the last upgrade').toBe(true);
    expect(loop.results.every((x) => nodeOf(x.body!) === 1)).toBe(true);
    // Nothing was withdrawn or announced by the upgrades: the newest process announced nothing itself.
    const last = await status();
    expect(last.bgp.counts).toEqual({ announce: 0, withdraw: 0, failed: 0 });

    // Failed upgrades: a config that does not load; a bgp section that would run gobgpd
    // differently; a service that cannot listen, which fails after the new process adopted gobgpd
    // and fed it (it then lets go without a shutdown of the pipe: the wrapper keeps reading).
    const file = lab.running.get(1)!.file;
    const good = readFileSync(file, 'utf8');
    const lines = lab.running.get(1)!.lines; // every process of the node writes to the first one's stdout
    const unbindable = good.replace('bgp:\n', `  - name: nowhere\n    listen: 10.250.0.200:${PORT}\n    backends: [ { address: ${BACKENDS[0]} } ]\nbgp:\n`);
    for (const [broken, reason] of [
      [good.replace('workers: 1', 'workers: 99'), /workers: must be auto or an integer 1–16, got 99/],
      [good.replace('asn: 65001', 'asn: 65011'), /runs gobgpd differently .*as = 65001.*as = 65011.*restart fulcrum/],
      [unbindable, /10\.250\.0\.200:8080/],
    ] as const) {
      writeFileSync(file, broken);
      const route2 = lab.sampleNextHops(1);
      const r = await upgrade();
      const s2 = await route2.stop();
      expect(r.code).not.toBe(0);
      expect(r.out).toMatch(reason);
      expect(s2.missing).toBe(0);
      const s = await status();
      expect(s.pid).toBe(pid);
      expect(s.bgp.speaker_info).toMatchObject({ gobgpd_pid: gobgpd, running: true });
      expect(s.bgp.vips).toEqual([expect.objectContaining({ announced: true })]);
      expect(await neighbor()).toEqual(before);
    }
    writeFileSync(file, good);
    const adopted = lines.filter((l) => /^gobgpd adopted from pid/.test(l.msg)).map((l) => l.pid);
    const released = lines.filter((l) => l.msg === 'gobgpd released: it is tied to the other process now').length;
    // Adopted by the three upgrades and the failed one; released by the three old processes and the failed one.
    expect(adopted).toHaveLength(4);
    expect(released).toBe(4);
    expect((await lab.connect(20)).every((b) => b !== null)).toBe(true);
    // The failed new processes fed the wrapper and let go: it is still tied to the newest one.
    await sleep(1500);
    expect(await neighbor()).toEqual(before);

    // SIGSTOP of the newest process: the adopted wrapper is not fed (the old processes are gone),
    // kills gobgpd within liveness (1 s), the router withdraws. After SIGCONT the process sees the
    // pipe closed, starts a gobgpd of its own and announces again.
    process.kill(pid, 'SIGSTOP');
    const hung = performance.now();
    await lab.waitNextHops([], 3000);
    expect(performance.now() - hung).toBeLessThan(1700);
    expect(alive(gobgpd)).toBe(false);
    process.kill(pid, 'SIGCONT');
    await lab.waitNextHops([1], 15_000);
    expect(lines.some((l) => /BGP speaker lost: the wrapper \(pid \d+\) closed the liveness pipe/.test(l.msg))).toBe(true);
    const own = (await status()).bgp.speaker_info;
    expect(own).toMatchObject({ running: true, restarts: 1 });
    expect(own.gobgpd_pid).not.toBe(gobgpd);

    // kill -9 of the newest process: its end of the liveness pipe closes, the wrapper kills gobgpd,
    // the session closes and the router withdraws.
    const dropped = (await neighbor()).dropped;
    process.kill(pid, 'SIGKILL');
    const gone = await lab.waitNextHops([], 3000);
    expect(gone).toBeLessThan(2000);
    const t0 = Date.now();
    while (alive(own.gobgpd_pid)) {
      if (Date.now() - t0 > 3000) throw new Error(`gobgpd (pid ${own.gobgpd_pid}) outlived the fulcrum it was tied to`);
      await sleep(20);
    }
    expect((await neighbor()).dropped).toBe(dropped + 1);
  }, 180_000);
});

describe.skipIf(!READY)('upgrade of a BGP node: the old process lets go of gobgpd at once, not after its drain', () => {
  let lab: BgpLab;

  beforeAll(async () => {
    lab = await BgpLab.create('bgpup2', 1, { holdBackends: true });
    await lab.start(1);
    await lab.waitNextHops([1], 15_000);
  }, 90_000);
  afterAll(async () => {
    await lab?.destroy();
  });

  it('while the old process drains a held connection, kill -9 of the new one withdraws the route', async () => {
    // A long grace for the old process (a reload), so it drains well past the upgrade.
    const file = lab.running.get(1)!.file;
    writeFileSync(file, readFileSync(file, 'utf8').replace('shutdown_grace: 1s', 'shutdown_grace: 60s'));
    const reloaded = await ctl(lab, 'reload');
    expect(reloaded.code, reloaded.stdout + reloaded.stderr).toBe(0);
    // A connection held through the router (the backends keep theirs open and echo).
    const held = lab.lab.spawn('client', 'bash', ['-c', `exec 3<>/dev/tcp/${VIP}/${PORT}; head -n1 <&3; sleep 120`]);
    await waitForLine(held, /^10\.251\.8\.2\d:9000 10\.251\.1\.2$/m, 5000, 'stdout');
    const old = (await statusOf(lab)).pid as number;
    const r = await upgradeOf(lab);
    expect(r.code, r.out).toBe(0);
    expect((await statusOf(lab)).bgp.speaker_info).toMatchObject({ adopted_from: old, running: true });
    await sleep(1500);
    expect(alive(old)).toBe(true); // draining the held connection
    process.kill(r.pid!, 'SIGKILL');
    await lab.waitNextHops([], 3000);
    // Withdrawn while the old process still runs: it kept no copy of the liveness pipe.
    expect(alive(old)).toBe(true);
  }, 60_000);
});
