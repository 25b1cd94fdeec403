/**
 * `speaker: command` with BIRD 2: one fulcrum node whose announce/withdraw commands enable and
 * disable a BIRD static protocol through birdc ({vip} substituted), an FRR router that sees the
 * route come and go. The smallest topology that shows the command speaker end to end. Then
 * `fulcrum upgrade` with it: only the announced set is carried; the new process never withdraws
 * what should stay, and runs the announce command again (BIRD takes an enable of an enabled protocol).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { alive, haveBinary, netnsAvailable, sleep } from '../helpers/netns.ts';
import { BACKENDS, BgpLab } from './lab.ts';

const READY = netnsAvailable() && haveBinary('bird') && haveBinary('birdc') && haveBinary('/usr/lib/frr/bgpd');

describe.skipIf(!READY)('scale-out: the command speaker driving BIRD 2', () => {
  let lab: BgpLab;

  beforeAll(async () => {
    lab = await BgpLab.create('bgpcmd', 1);
    const conf = join(lab.dir, 'bird.conf');
    // One static protocol per VIP, named after it, disabled until fulcrum enables it. BIRD's
    // error wait time is cut to 1 s (lab finding F5).
    writeFileSync(conf, `router id 10.251.1.2;
protocol device {}
protocol static vip10_250_0_100 { disabled; ipv4; route 10.250.0.100/32 blackhole; }
protocol bgp up {
  local 10.251.1.2 as 65001; neighbor 10.251.1.1 as 65000;
  hold time 3; keepalive time 1; connect retry time 1; error wait time 1, 10;
  ipv4 { import none; export where proto ~ "vip*"; next hop self; };
}
`);
    lab.lab.spawn('lb1', 'bird', ['-f', '-c', conf, '-s', join(lab.dir, 'bird.ctl')]);
  }, 60_000);
  afterAll(async () => {
    await lab?.destroy();
  });

  const commands = () => {
    const birdc = `birdc -s ${join(lab.dir, 'bird.ctl')}`;
    const name = 'vip$(echo {vip} | tr . _)';
    // Each withdraw also leaves a line in a file: the upgrade test looks for none.
    return { announce: `${birdc} enable ${name}`, withdraw: `echo {vip} >> ${join(lab.dir, 'withdrawn')}; ${birdc} disable ${name}` };
  };

  it('announces through birdc once it can serve, withdraws when its backends are down and on stop', async () => {
    await lab.start(1, { speaker: 'command', ...commands(), drain: '200ms' });
    await lab.waitNextHops([1], 15_000);
    expect((await lab.connect(5)).every((b) => b !== null)).toBe(true);

    for (const b of BACKENDS) expect((await lab.ctl(1, 'state', 'web', b, 'maint')).code).toBe(0);
    await lab.waitNextHops([], 3000);
    expect(String((await lab.waitLog(1, (l) => l.action === 'withdraw', 1000)).cause)).toMatch(/web has 0 backends up/);
    for (const b of BACKENDS) expect((await lab.ctl(1, 'state', 'web', b, 'ready')).code).toBe(0);
    await lab.waitNextHops([1], 3000);

    const status = JSON.parse((await lab.ctl(1, 'status', '--json')).stdout).bgp;
    expect(status).toMatchObject({ speaker: 'command', sessions: null, counts: { announce: 2, withdraw: 1, failed: 0 } });
    const text = (await lab.ctl(1, 'status')).stdout;
    expect(text).toMatch(/^ +sessions +not known \(speaker: command\)$/m);
    expect(text).toMatch(/^ +vip +10\.250\.0\.100 +announced +ready: web 3 up$/m);

    const metrics = await lab.metrics(1);
    expect(metrics).toMatch(/fulcrum_bgp_routes_total\{action="announce"\} 2/);
    expect(metrics).toMatch(/fulcrum_bgp_vip_announced\{vip="10.250.0.100"\} 1/);
    expect(metrics).not.toMatch(/fulcrum_bgp_sessions_up\{/); // the command speaker cannot tell

    lab.kill(1, 'SIGTERM');
    await lab.waitNextHops([], 3000);
    expect(await lab.running.get(1)!.exited).toBe(0);
    // The VIP left lo with fulcrum.
    expect(await lab.lab.ip('lb1', '-4', 'addr', 'show', 'dev', 'lo')).not.toContain('10.250.0.100');
  });

  it('fulcrum upgrade: the route stays, the new process withdraws nothing and announces again what it carried', async () => {
    await lab.start(1, { speaker: 'command', ...commands(), drain: '200ms' });
    await lab.waitNextHops([1], 15_000);
    const withdrawn = join(lab.dir, 'withdrawn');
    writeFileSync(withdrawn, '');
    const route = lab.sampleNextHops(1);
    const r = await lab.ctl(1, 'upgrade');
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const pid = Number(/upgraded: pid (\d+) serves/.exec(r.stdout)![1]);
    expect(await lab.running.get(1)!.exited).toBe(0); // the old one drained and exited
    await sleep(500);
    const sampled = await route.stop();
    expect(sampled.samples).toBeGreaterThan(20);
    expect(sampled.missing).toBe(0);
    const status = JSON.parse((await lab.ctl(1, 'status', '--json')).stdout);
    expect(status.pid).toBe(pid);
    // One announce (the carried VIP again, BIRD answered "already enabled"), no withdraw from either process.
    expect(status.bgp).toMatchObject({ speaker: 'command', counts: { announce: 1, withdraw: 0, failed: 0 }, vips: [{ vip: '10.250.0.100', announced: true }] });
    expect(status.bgp.vips[0].reason).toBe('ready: web 3 up');
    expect(readFileSync(withdrawn, 'utf8')).toBe('');
    expect((await lab.connect(5)).every((b) => b !== null)).toBe(true);
    // The new process's graceful stop withdraws (the one withdraw) and takes the VIP off lo.
    process.kill(pid, 'SIGTERM');
    await lab.waitNextHops([], 5000);
    expect(readFileSync(withdrawn, 'utf8')).toBe('10.250.0.100\n');
    const t0 = Date.now();
    while (alive(pid)) {
      if (Date.now() - t0 > 10_000) throw new Error(`pid ${pid} did not exit`);
      await sleep(50);
    }
    expect(await lab.lab.ip('lb1', '-4', 'addr', 'show', 'dev', 'lo')).not.toContain('10.250.0.100');
  }, 60_000);
});
