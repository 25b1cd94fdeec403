// A node that cannot add the VIP (issue 16, item 3) in the namespace pair of lab.ts: lb1, the
// higher priority, runs with an `ip` that refuses `addr add` (as without CAP_NET_ADMIN) while a
// flag file exists. It must not stay master without the VIP: it steps down (fault, priority 0),
// says why in its log, status and metrics, and lb2 takes the VIP and serves. Once the flag is gone
// lb1 retries, stays a backup while lb2 holds the VIP (no preempting after a VIP fault), and takes
// the VIP when lb2 dies. Root only; skipped elsewhere.
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/net.ts';
import { netnsAvailable, NODE, sleep } from '../helpers/netns.ts';
import { ADMIN_PORT, NODES, PairLab, type NodeName } from './lab.ts';

const HAVE_NETNS = netnsAvailable();
const FIXTURES = new URL('./fixtures', import.meta.url).pathname;

describe.skipIf(!HAVE_NETNS)('a node that cannot add the VIP', () => {
  let p: PairLab;
  let bin: string;
  let flag: string;

  beforeAll(async () => {
    p = await PairLab.create('vipf');
    bin = join(p.dir, 'bin');
    flag = join(p.dir, 'ip-addr-add-fails');
    mkdirSync(bin);
    const ip = execFileSync('sh', ['-c', 'command -v ip'], { encoding: 'utf8' }).trim();
    writeFileSync(join(bin, 'ip'), `#!/bin/sh
# ip, except that "ip addr add" fails as it does without CAP_NET_ADMIN while ${flag} exists.
if [ "$1" = addr ] && [ "$2" = add ] && [ -e '${flag}' ]; then
  echo 'RTNETLINK answers: Operation not permitted' >&2
  exit 2
fi
exec ${ip} "$@"
`, { mode: 0o755 });
  });
  afterEach(async (ctx) => {
    if (ctx.task.result?.state === 'fail') console.log(p.dump().slice(-20_000));
    await Promise.all([...p.running.keys()].map((n) => p.kill9(n)));
  });
  afterAll(async () => {
    await p?.destroy();
  });

  async function get(node: NodeName, path: string): Promise<string> {
    const r = await p.lab.exec(node, NODE, [join(FIXTURES, 'load.ts'), 'get', `${NODES[node].lan}:${ADMIN_PORT}`, '2000', path]);
    if (r.code !== 0) throw new Error(`GET ${path} on ${node} failed: ${r.stderr}`);
    return r.stdout;
  }

  it('steps down, the peer takes the VIP and serves; once the fault clears it recovers', async () => {
    writeFileSync(flag, '');
    await p.start('lb1', { admin: true }, { pathPrefix: bin });
    await p.start('lb2', { admin: true });
    // lb1 became master, failed to add the VIP, and stepped down with the reason.
    await waitFor(() => p.transitions('lb1').some((t) => t.to === 'fault' && t.handler === 'masterOnVipFail'), 5000, 'lb1 in fault for the VIP');
    const fault = p.transitions('lb1').find((t) => t.handler === 'masterOnVipFail')!;
    expect(fault.cause).toMatch(/^cannot add the VIP: ip addr add 198\.51\.100\.100\/24 dev eth0: RTNETLINK answers: Operation not permitted \(retry in \d+ms\)$/);
    expect(p.running.get('lb1')!.lines.some((l) => l.code === 'FULCRUM_ERR_VIP_ADD')).toBe(true);
    // The peer takes the VIP and serves through it.
    await p.waitRole('lb2', 'master', 8000);
    await p.waitVip('lb2', true);
    await p.waitServing(3000);
    expect(await p.holdsVip('lb1')).toBe(false);
    // lb1 retries (backup again) but does not preempt the working master: lb2 keeps the VIP.
    await waitFor(() => p.transitions('lb1').some((t) => t.handler === 'faultOnVipRetry'), 5000, 'lb1 retried');
    await p.waitRole('lb1', 'backup', 3000);
    await sleep(1000);
    expect(p.role('lb2')).toBe('master');
    expect(p.transitions('lb2').at(-1)?.to).toBe('master');
    // Status and metrics say what happened.
    const status = (JSON.parse(await get('lb1', '/api/status')) as { failover: Record<string, unknown> }).failover;
    expect(status).toMatchObject({ role: 'backup', vip_held: false, errors: { FULCRUM_ERR_VIP_ADD: expect.any(Number) } });
    expect((status.errors as Record<string, number>).FULCRUM_ERR_VIP_ADD).toBeGreaterThanOrEqual(1);
    expect(status.vip_failures).toBeGreaterThanOrEqual(1);
    const metrics = await get('lb1', '/metrics');
    expect(metrics).toMatch(/^fulcrum_failover_vip_errors_total\{kind="add"\} [1-9]\d*$/m);
    expect(metrics).toMatch(/^fulcrum_failover_role\{role="backup"\} 1$/m);

    // The fault clears: lb1 is a backup ready to take over; lb2 dies and lb1 takes the VIP.
    rmSync(flag);
    await p.kill9('lb2');
    await p.lab.ip('lb2', 'addr', 'del', '198.51.100.100/24', 'dev', 'eth0').catch(() => {}); // kill -9 leaves it
    await p.waitRole('lb1', 'master', 5000);
    await p.waitVip('lb1', true);
    await p.waitServing(3000);
    await waitFor(async () => (JSON.parse(await get('lb1', '/api/status')) as { failover: { vip_failures: number } }).failover.vip_failures === 0, 3000, 'lb1 holds and announced the VIP (its VIP failures reset)');
  }, 60_000);

  it('while in fault the metric and the status say why: fulcrum_failover_role{role="fault",cause="vip"}, fault {kind, cause}', async () => {
    writeFileSync(flag, '');
    try {
      // Alone, lb1 takes the VIP on its own timer, fails, and sits in fault until each retry.
      await p.start('lb1', { admin: true }, { pathPrefix: bin });
      await waitFor(() => p.role('lb1') === 'fault', 5000, 'lb1 in fault');
      // A retry every 1 s, then 2 s…: read while it is in fault.
      let seen = '';
      await waitFor(async () => {
        seen = await get('lb1', '/metrics');
        return /^fulcrum_failover_role\{role="fault",cause="vip"\} 1$/m.test(seen);
      }, 10_000, 'the fault cause in the metrics');
      expect(seen).toMatch(/^fulcrum_failover_role\{role="master"\} 0$/m);
      // …and the status: fault {kind, cause}.
      let fault: unknown = null;
      await waitFor(async () => {
        fault = (JSON.parse(await get('lb1', '/api/status')) as { failover: { fault: unknown } }).failover.fault;
        return fault !== null;
      }, 10_000, 'the fault in the status');
      expect(fault).toEqual({ kind: 'vip', cause: expect.stringMatching(/^cannot add the VIP: ip addr add 198\.51\.100\.100\/24 dev eth0: RTNETLINK answers: Operation not permitted$/) });
    } finally {
      rmSync(flag, { force: true });
    }
    // With nobody else, the retry takes the VIP once ip works again.
    await p.waitRole('lb1', 'master', 40_000);
    await p.waitVip('lb1', true);
    await p.waitServing(3000);
  }, 60_000);
});
