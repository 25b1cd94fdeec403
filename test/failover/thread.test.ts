// The failover on its own thread (src/failover/thread.ts) over loopback (127.4.3.0/24): the main
// side's handle elects as the in-thread Failover does, keeps status() synchronous, carries the
// backends-up count and the accepting requests across, resigns on stop(), passes a start error
// through, goes on heartbeating while this (main) thread is blocked, and — the thread ending
// unasked — releases the VIP and starts a new thread. `ip` is a
// script that records its arguments (nothing on this host changes; the interface is lo, whose
// state the track reads); arping is `true`.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { haSchema } from '../../src/config/schema.ts';
import type { RoleChange } from '../../src/events.ts';
import { FailoverThread } from '../../src/failover/thread.ts';
import { silentLogger } from '../../src/observability/log.ts';
import { waitFor } from '../helpers/net.ts';

let dir: string;
let ip: string;
const running: FailoverThread[] = [];
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'fulcrum-h4-thread-'));
  writeFileSync(join(dir, 'secret'), 'a-long-enough-shared-secret\n', { mode: 0o600 });
  ip = join(dir, 'ip');
  writeFileSync(ip, `#!/bin/sh\necho "$*" >> "${dir}/ip-$(echo "$*" | grep -o '198.51.100.2[0-9]*' | head -1).log"\n`, { mode: 0o755 });
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((f) => f.stop()));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The ip commands instance `self` ran (each instance has its own VIP, so its own log). */
const ipLog = (self: 1 | 2): string[] => {
  try {
    return readFileSync(join(dir, `ip-198.51.100.20${self}.log`), 'utf8').trim().split('\n');
  } catch {
    return [];
  }
};

function make(self: 1 | 2, opts: { backends?: () => number; min?: number; secret?: string } = {}) {
  const config = haSchema.parse({
    vip: `198.51.100.20${self}/24`, interface: 'lo', bind: `127.4.3.${self}:17948`, peer: `127.4.3.${3 - self}:17948`,
    priority: self === 1 ? 150 : 100, advert_interval: '50ms', dead_after: 3,
    secret_file: join(dir, opts.secret ?? 'secret'), track: { min_backends_up: opts.min ?? 0 },
  });
  const accepting: boolean[] = [];
  const roles: RoleChange[] = [];
  const f = new FailoverThread({
    config, logger: silentLogger, commands: { ip, arping: 'true' },
    backendsUp: opts.backends, setAccepting: (on) => { accepting.push(on); },
  });
  f.on('role', (r) => roles.push(r));
  running.push(f);
  return { f, accepting, roles };
}
describe('FailoverThread (loopback)', () => {
  it('elects across two threads; status() answers at once with the thread\'s last report', async () => {
    const a = make(1);
    const b = make(2);
    await a.f.start();
    await b.f.start();
    await waitFor(() => a.f.status().role === 'master' && b.f.status().role === 'backup' && a.f.status().vip_held && a.f.status().peer.role === 'backup');
    const s = a.f.status();
    expect(s).toMatchObject({ role: 'master', priority: 150, vips: ['198.51.100.201/24'], accepting: true, failovers: 1, thread: { running: true, restarts: 0 } });
    expect(s.peer.last_advert_ms_ago).toBeLessThan(200);
    expect(a.roles.map((r) => r.to)).toEqual(['backup', 'master']);
    expect(a.accepting).toEqual([false, true]);
    expect(ipLog(1)).toContain('addr add 198.51.100.201/24 dev lo');
  });

  it('stop(): the thread resigns with priority 0 and the peer takes over at once', async () => {
    const a = make(1);
    const b = make(2);
    await a.f.start();
    await b.f.start();
    await waitFor(() => a.f.status().role === 'master' && b.f.status().role === 'backup');
    await a.f.stop();
    await waitFor(() => b.f.status().role === 'master', 3000, 'b master');
    // Taken over on the priority-0 advert (Skew_Time), not after a Master_Down_Interval of silence.
    expect(b.roles.at(-1)?.cause).toMatch(/priority 0/);
    expect(a.accepting.at(-1)).toBe(false);
    expect(ipLog(1).at(-1)).toBe('addr del 198.51.100.201/24 dev lo');
    expect(a.f.status().thread.running).toBe(false);
  });

  it('the count of backends up reaches the thread: too few hands the VIP to the backup, enough takes it back', async () => {
    let up = 2;
    const a = make(1, { backends: () => up, min: 1 });
    const b = make(2, { backends: () => 2, min: 1 });
    await a.f.start();
    await b.f.start();
    await waitFor(() => a.f.status().role === 'master' && b.f.status().peer.role === 'master');
    up = 0;
    await waitFor(() => a.f.status().role === 'fault' && b.f.status().role === 'master');
    expect(a.f.status().track).toMatchObject({ ok: false, backends_up: 0, min_backends_up: 1 });
    expect(a.f.status().fault).toEqual({ kind: 'track', cause: '0 backends up, ha.track.min_backends_up is 1' });
    up = 1;
    await waitFor(() => a.f.status().role === 'master' && b.f.status().role === 'backup'); // preempt
  });

  it('a thread that ends unasked: role to init, not accepting, the VIP removed, then a new thread rejoins', async () => {
    const a = make(1);
    const b = make(2);
    await a.f.start();
    await b.f.start();
    await waitFor(() => a.f.status().role === 'master' && b.f.status().role === 'backup' && a.f.status().vip_held);
    const before = ipLog(1).length;
    a.f.endThread('test');
    // At once, on this side: the role change, listeners off, ip addr del.
    await waitFor(() => a.roles.at(-1)?.to === 'init');
    expect(a.roles.at(-1)).toMatchObject({ from: 'master', to: 'init', cause: expect.stringMatching(/^the failover thread ended \(code 1\)$/) });
    await waitFor(() => ipLog(1).slice(before).includes('addr del 198.51.100.201/24 dev lo'));
    expect(a.accepting.at(-1)).toBe(false);
    expect(a.f.status()).toMatchObject({ role: 'init', vip_held: false, accepting: false });
    // The peer stops hearing it and takes the VIP; the new thread starts as backup, then (preempt,
    // higher priority) takes it back.
    await waitFor(() => b.roles.some((r) => r.to === 'master'));
    await waitFor(() => a.f.status().thread.running && a.f.status().thread.restarts === 1);
    await waitFor(() => a.f.status().role === 'master' && b.f.status().role === 'backup');
    expect(a.f.status().failovers).toBe(1); // the new thread counts its own
  });

  it('this thread blocked for 3 s: the threads keep their heartbeats, no role changes, the watchdog ends nothing', async () => {
    const a = make(1);
    const b = make(2);
    await a.f.start();
    await b.f.start();
    await waitFor(() => a.f.status().role === 'master' && b.f.status().role === 'backup' && a.f.status().peer.role === 'backup');
    const before = [a.roles.length, b.roles.length];
    // Both handles live on this thread: 3 s without its event loop (past the watchdog's 2 s) is
    // what an admin flood did to the heartbeat when it shared the thread. Atomics.wait blocks it
    // without taking a core from the threads under test.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 3000);
    // The reports that queued meanwhile are read before the watchdog decides.
    await new Promise((r) => setTimeout(r, 300));
    expect([a.roles.length, b.roles.length]).toEqual(before);
    expect(a.f.status()).toMatchObject({ role: 'master', thread: { running: true, restarts: 0 } });
    expect(b.f.status()).toMatchObject({ role: 'backup', thread: { running: true, restarts: 0 } });
    expect(b.f.status().peer.last_advert_ms_ago).toBeLessThan(200);
  });

  it('start() rejects with the thread\'s error: an unreadable secret', async () => {
    const a = make(1, { secret: 'missing' });
    await expect(a.f.start()).rejects.toMatchObject({ code: 'FULCRUM_ERR_HA_SECRET' });
    expect(a.f.status().thread.running).toBe(false);
  });
});
