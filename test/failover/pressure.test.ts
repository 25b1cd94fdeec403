// The heartbeat shares fate with nothing a client can load (issue 16, item 2): the pair of lab.ts in
// network namespaces, the master's main thread loaded for a sustained period through its admin API
// — 48 connections posting chunked bodies without a token and 8 loops reading /metrics and
// /api/services of 4,000 backends — while the backup watches. The failover runs on its own thread (src/failover/thread.ts),
// so the backup never takes the VIP and never goes long without the master's heartbeat.
// Root only; skipped elsewhere.
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { netnsAvailable, NODE } from '../helpers/netns.ts';
import { ADMIN_PORT, CLIENTS, NODES, PairLab } from './lab.ts';

const HAVE_NETNS = netnsAvailable();
const FIXTURES = new URL('./fixtures', import.meta.url).pathname;
const LOAD_MS = 10_000;
const ADVERT_MS = 100;
// dead_after 10 (a second without adverts) rather than the default 3: the test runs beside the
// rest of the suite on a 2-core machine, where a thread can wait ~0.5 s for a core (seen at load
// 13). The fault it guards against is of another order: with the failover on the main thread the
// same flood stopped the adverts for 3.5–4.2 s and the backup took the VIP.
const DEAD_AFTER = 10;

describe.skipIf(!HAVE_NETNS)('failover under load on the main thread', () => {
  let p: PairLab;

  beforeAll(async () => {
    p = await PairLab.create('press');
  });
  afterEach(async (ctx) => {
    if (ctx.task.result?.state === 'fail') console.log(p.dump().slice(-20_000));
    await Promise.all([...p.running.keys()].map((n) => p.kill9(n)));
  });
  afterAll(async () => {
    await p?.destroy();
  });

  it('a body flood and a /metrics loop at the master\'s admin port: no failover, adverts on time', async () => {
    const c = { admin: true, heavyBackends: 4000, logLevel: 'info', advertInterval: `${ADVERT_MS}ms`, deadAfter: DEAD_AFTER };
    await p.start('lb1', c);
    await p.start('lb2', c);
    await p.waitRole('lb1', 'master', 10_000);
    await p.waitRole('lb2', 'backup', 5000);
    await p.waitServing(5000);
    const before = p.transitions('lb2').length;
    // The watcher polls the backup's own admin API (its main thread is idle) for the age of the
    // master's last heartbeat; the load runs from the client namespace against the master.
    const watch = p.lab.exec('lb2', NODE, [join(FIXTURES, 'load.ts'), 'watch', `${NODES.lb2.lan}:${ADMIN_PORT}`, String(LOAD_MS)], LOAD_MS + 20_000);
    // The flood from three client addresses (16 connections each: the admin API's per-client
    // limit), the scrapes from four others.
    const load = p.lab.exec('client', NODE, [
      join(FIXTURES, 'load.ts'), 'flood', `${NODES.lb1.lan}:${ADMIN_PORT}`, String(LOAD_MS), '48', '8',
      CLIENTS.slice(0, 3).join(','), CLIENTS.slice(3, 7).join(','),
    ], LOAD_MS + 20_000);
    const [w, l] = await Promise.all([watch, load]);
    expect(l.code, l.stderr).toBe(0);
    expect(w.code, w.stderr).toBe(0);
    const flood = JSON.parse(l.stdout) as { posted_bytes: number; closed: number; scrapes: number; scrape_ms_max: number };
    const seen = JSON.parse(w.stdout) as { polls: number; max_advert_age_ms: number; roles: string[] };
    console.log(`load on lb1: ${JSON.stringify(flood)}; lb2 saw: ${JSON.stringify(seen)}`);
    // The load really reached the master's main thread: reads of 4,000 backends were served.
    expect(flood.scrapes).toBeGreaterThan(0);
    expect(seen.polls).toBeGreaterThan(LOAD_MS / 100);
    // No false failover: the backup never changed role, the master never left master.
    expect(p.transitions('lb2').slice(before)).toEqual([]);
    expect(seen.roles).toEqual(['backup']);
    expect(p.role('lb1')).toBe('master');
    // The gaps between the master's adverts stay under dead_after × advert_interval.
    expect(seen.max_advert_age_ms).toBeLessThan(DEAD_AFTER * ADVERT_MS);
    expect(await p.holdsVip('lb1')).toBe(true);
    expect(await p.holdsVip('lb2')).toBe(false);
  }, 60_000);
});
