/**
 * Surviving flows with a resilient next-hop group on the router (README, Surviving flows): three
 * fulcrum nodes, a router namespace without zebra (hand-made nexthop objects fight zebra: lab
 * finding F3) whose route to the VIP is a resilient group. Each node's `command` speaker edits
 * that group (withdraw: the group without this node), as a router's control plane would. With
 * 300 held connections, withdrawing the first node of the group must break none of the other
 * nodes' connections. The same with a plain (hash-threshold) multipath route shows what the
 * resilient group buys: there the first hop's removal re-maps flows of the others, and fulcrum,
 * which terminates TCP, cannot keep them. Last, with a resilient group and connection churn, a
 * graceful stop (quiesce, then withdraw) costs no connection at all, the drained node's or another's.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NODE, ROOT, collectJsonLines, netnsAvailable, sleep, waitForLine } from '../helpers/netns.ts';
import { BgpLab, nodeOf, PORT, VIP } from './lab.ts';

const GROUP = 1100;
const group = (nodes: number[]) => `${nodes.map((n) => 1000 + n).join('/')} type resilient buckets 512 idle_timer 120 unbalanced_timer 0`;
const plain = (nodes: number[]) => nodes.map((n) => `nexthop via 10.251.${n}.2 dev r-lb${n}`).join(' ');

/**
 * A lab whose router (no routing daemon) has the VIP's route as a resilient group or a plain
 * multipath route, edited by each node's `command` speaker: withdraw = the set without it.
 */
async function routerLab(kind: 'resilient' | 'plain', tag: string, holdBackends: boolean): Promise<BgpLab> {
  const lab = await BgpLab.create(tag, 3, { router: 'none', holdBackends });
  const router = lab.lab.ns('router');
  let set: (nodes: number[]) => string;
  if (kind === 'resilient') {
    for (const n of lab.nodes) await lab.lab.ip('router', 'nexthop', 'add', 'id', String(1000 + n), 'via', `10.251.${n}.2`, 'dev', `r-lb${n}`);
    await lab.lab.ip('router', 'nexthop', 'add', 'id', String(GROUP), 'group', ...group(lab.nodes).split(' '));
    await lab.lab.ip('router', 'route', 'add', `${VIP}/32`, 'nhid', String(GROUP));
    set = (nodes) => `ip -n ${router} nexthop replace id ${GROUP} group ${group(nodes)}`;
  } else {
    await lab.lab.ip('router', 'route', 'add', `${VIP}/32`, ...plain(lab.nodes).split(' '));
    set = (nodes) => `ip -n ${router} route replace ${VIP}/32 ${plain(nodes)}`;
  }
  await Promise.all(lab.nodes.map((n) => lab.start(n, {
    speaker: 'command',
    drain: '500ms',
    announce: set(lab.nodes),
    withdraw: set(lab.nodes.filter((m) => m !== n)),
  })));
  return lab;
}

for (const kind of ['resilient', 'plain'] as const) {
  describe.skipIf(!netnsAvailable())(`scale-out: withdrawing a node with a ${kind} next-hop set on the router`, () => {
    let lab: BgpLab;

    beforeAll(async () => {
      lab = await routerLab(kind, kind === 'resilient' ? 'bgprs' : 'bgppl', true);
    }, 90_000);
    afterAll(async () => {
      await lab?.destroy();
    });

    it(kind === 'resilient' ? 'breaks none of the other nodes\' live connections' : 'breaks live connections of the nodes that stay (what the resilient group avoids)', async () => {
      const client = lab.lab.spawn('client', NODE, [join(ROOT, 'test/bgp/fixtures/hold.ts'), `${VIP}:${PORT}`, '300'], { stdio: ['pipe', 'pipe', 'pipe'] });
      const lines = collectJsonLines<{ level: number; msg: string; i?: number; body?: string | null; ok?: boolean; err?: string }>(client);
      await waitForLine(client, /^held$/, 30_000, 'stdout');
      const nodeOfConn = new Map<number, number>();
      for (const l of lines) if (typeof l.i === 'number' && typeof l.body === 'string') nodeOfConn.set(l.i, nodeOf(l.body));
      expect(nodeOfConn.size).toBe(300);
      const perNode = [1, 2, 3].map((n) => [...nodeOfConn.values()].filter((x) => x === n).length);
      for (const c of perNode) expect(c).toBeGreaterThan(30);

      // Node 1 is the first of the set: with hash-threshold ECMP its removal shifts every range.
      lab.kill(1, 'SIGTERM');
      await lab.waitLog(1, (l) => l.action === 'withdraw', 5000);
      expect(await lab.nextHops()).toEqual([2, 3]);
      if (kind === 'resilient') expect(await lab.lab.ip('router', 'nexthop', 'show', 'id', String(GROUP))).toMatch(/group 1002\/1003 type resilient/);
      await lab.running.get(1)!.exited;
      lab.running.delete(1);

      const seen = lines.length;
      client.stdin!.write('check\n');
      await waitForLine(client, /^checked$/, 30_000, 'stdout');
      const checks = lines.slice(seen).filter((l) => typeof l.i === 'number' && typeof l.ok === 'boolean');
      expect(checks).toHaveLength(300);
      const broken = (n: number) => checks.filter((c) => nodeOfConn.get(c.i!) === n && !c.ok);
      // The withdrawn node's own connections never survive (closed at the end of its grace, or
      // reset by a node without their socket).
      expect(broken(1)).toHaveLength(perNode[0]);
      const survivorsBroken = broken(2).length + broken(3).length;
      if (kind === 'resilient') expect(survivorsBroken, JSON.stringify([...broken(2), ...broken(3)].slice(0, 3))).toBe(0);
      else expect(survivorsBroken).toBeGreaterThan(10);
      client.kill('SIGTERM');
    });
  });
}

describe.skipIf(!netnsAvailable())('scale-out: a graceful stop under connection churn with a resilient next-hop group on the router', () => {
  let lab: BgpLab;

  beforeAll(async () => {
    lab = await routerLab('resilient', 'bgprc', false);
  }, 90_000);
  afterAll(async () => {
    await lab?.destroy();
  });

  it('costs no connection: the drained node quiesces and its connections end before it withdraws, and no other node\'s flow moves', async () => {
    // 4.5 s per attempt: a client held back by the quiesce retransmits its SYN after 1 s.
    const loop = lab.clientLoop(10, 3000, 4500);
    await sleep(800);
    const sigterm = Date.now();
    lab.kill(1, 'SIGTERM'); // the first member: with hash-threshold ECMP its removal would shift every range
    const line = await lab.waitLog(1, (l) => l.action === 'withdraw', 5000);
    expect(line.cause).toBe('stopping: SIGTERM');
    expect(await lab.nextHops()).toEqual([2, 3]);
    await lab.running.get(1)!.exited;
    lab.running.delete(1);
    await loop.done;
    expect(loop.results.length).toBeGreaterThan(150);
    const served = (n: number) => loop.results.filter((r) => r.ok && nodeOf(r.body!) === n).length;
    expect(served(1)).toBeGreaterThan(10);
    expect(served(2) + served(3)).toBeGreaterThan(100);
    expect(loop.results.filter((r) => !r.ok), JSON.stringify(loop.results.filter((r) => !r.ok).map((r) => ({ ...r, since_sigterm: r.t - sigterm })))).toEqual([]);
  });
});
