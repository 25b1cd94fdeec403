/**
 * The BGP part of `fulcrum upgrade` as src/bgp's Bgp does it, from a real Balancer through the
 * routes table: the old process's carry() and release() (no withdraw, nothing asked after), the
 * new process asking nothing of the speaker before commit(), commit() reconciling from what the
 * speaker says it announces (or announcing again what it carried when it cannot say), and a
 * start that fails before commit releasing instead of stopping. The speaker records what it was
 * asked; gobgpd itself is adopted in upgrade.test.ts, the command speaker with BIRD in command.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { Bgp, type CarriedBgp, type SessionState, type Speaker } from '../../src/bgp/index.ts';
import { bgpSchema, type Config } from '../../src/config/schema.ts';
import { bgpServicesOn, installBgpRoutes } from '../../src/control/routes.ts';
import { EventEmitter } from 'node:events';
import type { FulcrumEvents } from '../../src/events.ts';
import { silentLogger } from '../../src/observability/log.ts';
import { config as balancerConfig, makeEnv } from '../balancer/env.ts';

const V1 = '10.0.100.11';
const V2 = '10.0.100.12';
const V3 = '10.0.100.13';
const A = '127.0.0.1:7101';
const B = '127.0.0.1:7102';

/** Records every call; `rib` is what announced() says (null: it cannot say, as the command speaker). */
class HandOverRecorder implements Speaker {
  readonly kind = 'command' as const;
  readonly calls: string[] = [];
  private readonly rib: string[] | null;
  constructor(rib: string[] | null, canRelease = true) {
    this.rib = rib;
    if (!canRelease) this.release = undefined;
  }
  async start(): Promise<void> {
    this.calls.push('start');
  }
  async announce(vip: string): Promise<void> {
    this.calls.push(`announce ${vip}`);
  }
  async withdraw(vip: string): Promise<void> {
    this.calls.push(`withdraw ${vip}`);
  }
  sessions(): SessionState[] | null {
    return null;
  }
  async stop(): Promise<void> {
    this.calls.push('stop');
  }
  release?: () => Promise<void> = async () => void this.calls.push('release');
  commit(): void {
    this.calls.push('commit');
  }
  async announced(): Promise<string[] | null> {
    return this.rib;
  }
  info(): Record<string, unknown> {
    return {};
  }
}

/** V1 is served by s0 (backends A, B); V2 is on lo with no service on it. */
function node(speaker: Speaker, carried?: CarriedBgp) {
  const { balancer } = makeEnv();
  const cfg: Config = balancerConfig({ listen: `${V1}:80`, backends: [{ address: A }, { address: B }] });
  balancer.apply(cfg);
  const bgp = new Bgp({
    config: bgpSchema.parse({ speaker: 'command', announce: 'true', withdraw: 'true', vips: [V1, V2], drain: 0 }),
    logger: silentLogger,
    servicesOn: bgpServicesOn({ balancer, config: () => cfg }),
    speaker,
    carried: carried ? { state: carried, handles: new Map(), fromPid: 4242 } : undefined,
  });
  const events = new EventEmitter<FulcrumEvents>();
  const published: string[] = [];
  events.on('bgp-route', (e) => published.push(`${e.action} ${e.vip}: ${e.cause}`));
  installBgpRoutes({ balancer, events }, bgp);
  return { balancer, bgp, published };
}

describe('bgp: the old process hands over', () => {
  it('carry() gives the announced set; release() withdraws nothing, and nothing is asked after it', async () => {
    const speaker = new HandOverRecorder(null);
    const r = node(speaker);
    r.bgp.setListening(true);
    await r.bgp.evaluate('settle');
    expect(speaker.calls).toEqual([`announce ${V1}`]);
    expect(r.bgp.carry()).toEqual({ state: { speaker: 'command', vips: [V1, V2], announced: [V1] }, handles: [] });
    await r.bgp.release();
    r.balancer.setHealth('s0', A, false, 'test');
    r.balancer.setHealth('s0', B, false, 'test');
    await r.bgp.evaluate('settle');
    await r.bgp.close(); // after a release: nothing left to do (no stop, no VIP off lo)
    expect(speaker.calls).toEqual([`announce ${V1}`, 'release']);
    expect(r.bgp.status().vips[0]).toMatchObject({ vip: V1, announced: true });
  });
});

describe('bgp: the new process adopts', () => {
  it('asks nothing of the speaker before commit(); commit() reconciles from what the speaker announces', async () => {
    // The daemon announces V1 (wanted), V2 (no service listens on it) and V3 (this config dropped it).
    const speaker = new HandOverRecorder([V1, V2, V3]);
    const r = node(speaker, { speaker: 'command', vips: [V1, V2], announced: [V1, V2] });
    expect(r.bgp.status().vips.map((v) => [v.vip, v.announced, v.reason])).toEqual([
      [V1, true, 'carried over from pid 4242 (upgrade)'], [V2, true, 'carried over from pid 4242 (upgrade)'],
    ]);
    r.bgp.setListening(true);
    r.balancer.setHealth('s0', A, false, 'test');
    r.balancer.setHealth('s0', A, true, 'test');
    await r.bgp.evaluate('settle');
    expect(speaker.calls).toEqual([]);
    await r.bgp.commit();
    // V1 stays as it is (no call at all), V3 and V2 are withdrawn: no announce, no withdraw-then-announce.
    expect(speaker.calls).toEqual(['commit', `withdraw ${V3}`, `withdraw ${V2}`]);
    expect(r.published).toEqual([`withdraw ${V3}: not in this config (upgrade from pid 4242)`, `withdraw ${V2}: no service listens on it (upgrade from pid 4242)`]);
    expect(r.bgp.status().counts).toEqual({ announce: 0, withdraw: 2, failed: 0 });
    // From here it is an ordinary node.
    r.balancer.setHealth('s0', A, false, 'test');
    r.balancer.setHealth('s0', B, false, 'test');
    await r.bgp.evaluate('settle');
    expect(speaker.calls.at(-1)).toBe(`withdraw ${V1}`);
  });

  it('a VIP that should be announced and is not in the daemon is announced at commit()', async () => {
    const speaker = new HandOverRecorder([]);
    const r = node(speaker, { speaker: 'command', vips: [V1, V2], announced: [V1] });
    r.bgp.setListening(true);
    await r.bgp.commit();
    expect(speaker.calls).toEqual(['commit', `announce ${V1}`]);
  });

  it('a speaker that cannot say what it announces: what it carried and should stay is announced again, nothing withdrawn', async () => {
    const speaker = new HandOverRecorder(null);
    const r = node(speaker, { speaker: 'command', vips: [V1, V2], announced: [V1] });
    r.bgp.setListening(true);
    await r.bgp.commit();
    expect(speaker.calls).toEqual(['commit', `announce ${V1}`]);
    expect(r.published).toEqual([`announce ${V1}: ready: s0 2 up (upgrade from pid 4242: announced again, the speaker cannot say what it announces)`]);
    expect(r.bgp.status().vips[0]).toMatchObject({ announced: true, reason: 'ready: s0 2 up' });
  });

  it('a start that fails before commit() releases: no withdraw, no stop of what was adopted', async () => {
    const speaker = new HandOverRecorder([V1]);
    const r = node(speaker, { speaker: 'command', vips: [V1, V2], announced: [V1] });
    r.bgp.setListening(true);
    await r.bgp.close();
    expect(speaker.calls).toEqual(['release']);
    // A speaker with nothing to let go (command) is stopped: for it stop() runs nothing.
    const plain = new HandOverRecorder(null, false);
    await node(plain, { speaker: 'command', vips: [V1, V2], announced: [V1] }).bgp.close();
    expect(plain.calls).toEqual(['stop']);
  });

  it('a carried speaker of another kind is refused at start, before the speaker starts', async () => {
    const speaker = new HandOverRecorder(null);
    const r = node(speaker, { speaker: 'gobgp', vips: [V1, V2], announced: [V1] });
    await expect(r.bgp.start()).rejects.toThrow(/the running fulcrum \(pid 4242\) announces through gobgp, this config through command; an upgrade keeps the speaker: restart fulcrum to change it/);
    expect(speaker.calls).toEqual([]);
  });
});
