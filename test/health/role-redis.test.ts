/**
 * Role safety against real redis-server processes on 127.3.12.x (a primary and a `replicaof`
 * replica), fulcrum in front with `role: primary`:
 * - start-up: fulcrum restarted 20 times, clients connecting the moment it listens — none reaches
 *   the replica, and none is refused;
 * - a REPLICAOF swap: from the demoted node's first wrong-role answer (seen in the probe events),
 *   no connection through fulcrum reaches it and so no write lands on it (the servers run with
 *   `replica-read-only no`, so a write that reached the demoted node would be accepted there:
 *   the writes a switchover must not lose);
 * - visibility: /api/services, /api/status, /metrics and the status page (chromium) show the role
 *   each backend last reported and when, and the demoted node reads "replica — not eligible".
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FulcrumHandle } from '../../src/main.ts';
import type { ProbeEvent } from '../../src/health/monitor.ts';
import { startProxy } from '../proxy/harness.ts';
import { withPage } from '../helpers/browser.ts';
import { freePort } from '../helpers/net.ts';
import { respSession, startRedis, tcpPortOf, type RedisServer } from '../helpers/redis.ts';
import { waitUntilOnly } from './switchover.ts';

const LISTEN = '127.3.12.10';
const INTERVAL = 100;

function yaml(port: number, backends: RedisServer[], top = ''): string {
  return `${top}
workers: 1
logging: { level: warn }
services:
  - name: redis
    listen: ${LISTEN}:${port}
    balance: roundrobin
    health: { type: redis, role: primary, interval: ${INTERVAL}ms, timeout: ${INTERVAL}ms, rise: 1, fall: 3 }
    backends:
${backends.map((b) => `      - address: ${b.address}`).join('\n')}
`;
}

/** One new connection through fulcrum: the port of the server that answered. */
async function whoAnswers(port: number): Promise<number> {
  const s = await respSession(LISTEN, port);
  try {
    return tcpPortOf(await s.command('INFO', 'server'));
  } finally {
    s.close();
  }
}

describe('role: primary at start-up (redis)', () => {
  let primary: RedisServer;
  let replica: RedisServer;
  beforeAll(async () => {
    primary = await startRedis({ host: '127.3.12.1' });
    replica = await startRedis({ host: '127.3.12.2', args: ['--replicaof', primary.host, String(primary.port)] });
  });
  afterAll(async () => {
    await primary?.stop();
    await replica?.stop();
  });

  it('20 restarts, clients connecting the moment fulcrum listens: none reaches the replica, none is refused', async () => {
    const answered: number[] = [];
    for (let round = 0; round < 20; round++) {
      const port = await freePort(LISTEN);
      const starting = startProxy(yaml(port, [primary, replica]));
      let failed: unknown;
      void starting.catch((err) => (failed = err));
      // The first connection the listener accepts, then three more at once (roundrobin would
      // spread them over both backends if both were eligible).
      let first: number | undefined;
      while (first === undefined) {
        if (failed) throw failed;
        try {
          first = await whoAnswers(port);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ECONNREFUSED') throw err;
          await new Promise((r) => setTimeout(r, 1));
        }
      }
      answered.push(first, ...await Promise.all([1, 2, 3].map(() => whoAnswers(port))));
      const fulcrum: FulcrumHandle = await starting;
      await fulcrum.stop('round done');
    }
    expect(answered.length).toBe(80);
    expect(answered.filter((p) => p === replica.port)).toEqual([]);
    expect(answered.every((p) => p === primary.port)).toBe(true);
  }, 60_000);
});

describe('role: primary across a REPLICAOF swap (redis)', () => {
  let x: RedisServer; // primary, then demoted
  let y: RedisServer; // replica, then promoted
  let fulcrum: FulcrumHandle;
  let port: number;
  let admin: string;
  beforeAll(async () => {
    const rw = ['--replica-read-only', 'no'];
    x = await startRedis({ host: '127.3.12.3', args: rw });
    y = await startRedis({ host: '127.3.12.4', args: [...rw, '--replicaof', '127.3.12.3', String(x.port)] });
    port = await freePort(LISTEN);
    const adminPort = await freePort(LISTEN);
    admin = `http://${LISTEN}:${adminPort}`;
    fulcrum = await startProxy(yaml(port, [x, y], `admin: { listen: ${LISTEN}:${adminPort} }`));
  });
  afterAll(async () => {
    await fulcrum?.stop('test done');
    await x?.stop();
    await y?.stop();
  });

  it('no write reaches the demoted node through fulcrum after its first wrong-role answer', async () => {
    await waitUntilOnly(() => whoAnswers(port), x.port, 3000);

    // The probe events say when the demoted node first answered "replica", and how many answers followed.
    let wrongSeen = false;
    let probesAfter = 0;
    const onProbe = (ev: ProbeEvent) => {
      if (ev.address !== x.address) return;
      if (wrongSeen) probesAfter++;
      else if (ev.role === 'replica') wrongSeen = true;
    };
    fulcrum.events.on('health-probe', onProbe);

    let done = false;
    const late: Array<{ reply: unknown }> = []; // sessions that reached x after its wrong-role answer
    let writesToY = 0;
    const writer = (async () => {
      for (let i = 0; !done; i++) {
        // Known before the connection is made: the transition the answer causes ran in the same tick.
        const after = wrongSeen;
        let s;
        try {
          s = await respSession(LISTEN, port);
        } catch {
          continue; // no eligible backend for a moment: refused, and retried
        }
        try {
          const who = tcpPortOf(await s.command('INFO', 'server'));
          const reply = await s.command('SET', `k${i}`, String(i));
          if (who === x.port && after) late.push({ reply });
          if (who === y.port && reply === 'OK') writesToY++;
        } catch {
          // closed while no backend was eligible: not a write
        } finally {
          s.close();
        }
      }
    })();

    await new Promise((r) => setTimeout(r, 100));
    expect(await y.command('REPLICAOF', 'NO', 'ONE')).toBe('OK');
    expect(await x.command('REPLICAOF', y.host, String(y.port))).toBe('OK');
    const deadline = Date.now() + 5000;
    // Past the old bound: fall (3) answers after the first wrong one, and a few more.
    while (!(wrongSeen && probesAfter >= 5)) {
      if (Date.now() > deadline) throw new Error('the demoted node did not answer with its new role within 5s');
      await new Promise((r) => setTimeout(r, 10));
    }
    done = true;
    await writer;
    fulcrum.events.off('health-probe', onProbe);

    expect(late).toEqual([]);
    expect(writesToY).toBeGreaterThan(0); // the client kept writing, to the new primary
    expect(fulcrum.health.state('redis', x.address)).toMatchObject({ state: 'down', role: { reported: 'replica', eligible: false } });
  }, 30_000);

  it('the API, the metrics and the status page show the role each backend last reported, and when', async () => {
    // After the swap: x is a replica (down, not eligible), y the primary.
    const { services } = await (await fetch(`${admin}/api/services`)).json() as { services: Array<{ name: string; backends: Array<Record<string, any>> }> };
    const backends = services.find((s) => s.name === 'redis')!.backends;
    const bx = backends.find((b) => b.address === x.address)!;
    const by = backends.find((b) => b.address === y.address)!;
    expect(bx).toMatchObject({ state: 'down', awaiting_role: false, role: { reported: 'replica', eligible: false } });
    expect(by).toMatchObject({ state: 'up', role: { reported: 'primary', eligible: true } });
    expect(bx.role.at).toBe(fulcrum.health.state('redis', x.address)!.role!.at);
    expect(Date.now() - bx.role.at).toBeLessThan(5000);

    const status = await (await fetch(`${admin}/api/status`)).json() as { roles: unknown[] };
    expect(status.roles).toEqual(expect.arrayContaining([
      { service: 'redis', backend: x.address, reported: 'replica', at: expect.any(Number), eligible: false },
      { service: 'redis', backend: y.address, reported: 'primary', at: expect.any(Number), eligible: true },
    ]));

    const metrics = await (await fetch(`${admin}/metrics`)).text();
    expect(metrics).toContain(`fulcrum_backend_role{service="redis",backend="${x.address}",role="replica"} 1`);
    expect(metrics).toContain(`fulcrum_backend_role{service="redis",backend="${x.address}",role="primary"} 0`);
    expect(metrics).toContain(`fulcrum_backend_role{service="redis",backend="${y.address}",role="primary"} 1`);
    expect(metrics).toContain(`fulcrum_backend_role_eligible{service="redis",backend="${x.address}"} 0`);
    expect(metrics).toContain(`fulcrum_backend_role_eligible{service="redis",backend="${y.address}"} 1`);
    const at = Number(new RegExp(`fulcrum_backend_role_reported_timestamp_seconds\\{service="redis",backend="${x.address.replace(/\./g, '\\.')}"\\} (\\S+)`).exec(metrics)?.[1]);
    expect(Math.abs(at * 1000 - Date.now())).toBeLessThan(5000);

    await withPage(`${admin}/`, async (page) => {
      const pill = (address: string) => page.locator(`tr[data-backend="redis|${address}"] .pill`);
      await pill(x.address).filter({ hasText: 'replica — not eligible' }).waitFor({ timeout: 5000 });
      expect(await pill(y.address).textContent()).toBe('up');
      expect(await page.locator(`tr[data-backend="redis|${x.address}"] .tag`).first().textContent()).toBe('replica');
      // In a colour of its own (#8250df), not a dead server's red (#cf222e) nor maint's grey.
      const colour = (address: string) => pill(address).evaluate((e) => (globalThis as unknown as { getComputedStyle(x: unknown): { color: string } }).getComputedStyle(e).color);
      expect(await colour(x.address)).toBe('rgb(130, 80, 223)');
      // The card names the check and the role it routes to; the pill says why x takes nothing, so no red reason under it.
      expect(await page.locator('section.svc[data-service="redis"] .meta').first().textContent()).toContain('check redis · role primary');
      expect(await page.locator(`tr[data-backend="redis|${x.address}"] [data-field="down-reason"]`).textContent()).toBe('');
    });
  }, 30_000);
});
