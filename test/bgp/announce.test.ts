/**
 * What src/bgp's Bgp announces and why, through the routes table (src/control/routes.ts
 * bgpServicesOn + installBgpRoutes) from a real Balancer: the listeners gate, announce_when,
 * backend-state events, drain and stop, a failed command retried, routes lost with the speaker.
 * The speaker is a recorder of what it was asked (the daemons themselves are exercised in
 * scaleout.test.ts and command.test.ts).
 */
import { EventEmitter } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { Bgp, type SessionState, type Speaker } from '../../src/bgp/index.ts';
import { BgpRouteError } from '../../src/bgp/errors.ts';
import { bgpSchema, type Config } from '../../src/config/schema.ts';
import { bgpServicesOn, installBgpRoutes } from '../../src/control/routes.ts';
import type { FulcrumEvents } from '../../src/events.ts';
import { silentLogger } from '../../src/observability/log.ts';
import { closeEnvs, config as balancerConfig, makeEnv } from '../balancer/env.ts';

afterEach(() => closeEnvs());

const VIP = '10.0.100.10';
const A = '127.0.0.1:7001';
const B = '127.0.0.1:7002';

class RecordingSpeaker implements Speaker {
  readonly kind = 'command' as const;
  readonly asked: string[] = [];
  failNext = 0;
  onRoutesLost?: (cause: string) => void;
  onSession?: (neighbor: string, from: string, to: string) => void;
  async start(): Promise<void> {}
  async announce(vip: string): Promise<void> {
    this.do(`announce ${vip}`);
  }
  async withdraw(vip: string): Promise<void> {
    this.do(`withdraw ${vip}`);
  }
  private do(what: string): void {
    if (this.failNext > 0) {
      this.failNext--;
      throw new BgpRouteError(what, 'refused by the test');
    }
    this.asked.push(what);
  }
  sessions(): SessionState[] | null {
    return null;
  }
  async stop(): Promise<void> {}
  info(): Record<string, unknown> {
    return {};
  }
}

function setup(min = 1, bgpExtra: Record<string, unknown> = {}) {
  const { balancer } = makeEnv();
  const cfg: Config = balancerConfig({ listen: `${VIP}:80`, backends: [{ address: A }, { address: B }] });
  balancer.apply(cfg);
  const speaker = new RecordingSpeaker();
  const bgp = new Bgp({
    config: bgpSchema.parse({ speaker: 'command', announce: 'true', withdraw: 'true', vips: [VIP], announce_when: { min_backends_up: min }, drain: 0, ...bgpExtra }),
    logger: silentLogger,
    servicesOn: bgpServicesOn({ balancer, config: () => cfg }),
    speaker,
    retryMs: 20,
  });
  const events = new EventEmitter<FulcrumEvents>();
  const published: string[] = [];
  events.on('bgp-route', (e) => published.push(`${e.action} ${e.vip}: ${e.cause}`));
  const uninstall = installBgpRoutes({ balancer, events }, bgp);
  return { balancer, bgp, speaker, published, uninstall };
}

async function until(cond: () => boolean, ms = 2000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error('condition not met');
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('bgp: announce only what can be served', () => {
  it('announces once the listeners are open, withdraws under min_backends_up, announces when back', async () => {
    const r = setup(2);
    await r.bgp.evaluate('test');
    expect(r.speaker.asked).toEqual([]);
    expect(r.bgp.status().vips[0]).toMatchObject({ announced: false, reason: 'listeners not open' });
    r.bgp.setListening(true);
    await r.bgp.evaluate('test');
    expect(r.speaker.asked).toEqual([`announce ${VIP}`]);
    expect(r.published).toEqual([`announce ${VIP}: ready: s0 2 up (listeners open)`]);

    r.balancer.setHealth('s0', A, false, 'test: down');
    await r.bgp.evaluate('settle');
    expect(r.speaker.asked).toEqual([`announce ${VIP}`, `withdraw ${VIP}`]);
    expect(r.published[1]).toBe(`withdraw ${VIP}: s0 has 1 backend up (needs 2) (s0 ${A} up → down)`);
    r.balancer.setHealth('s0', A, true, 'test: up');
    await r.bgp.evaluate('settle');
    expect(r.speaker.asked).toEqual([`announce ${VIP}`, `withdraw ${VIP}`, `announce ${VIP}`]);
    expect(r.bgp.status().counts).toEqual({ announce: 2, withdraw: 1, failed: 0 });
  });

  it('a VIP no service listens on is not announced', async () => {
    const { balancer } = makeEnv();
    const cfg = balancerConfig({ listen: '127.1.9.1:80', backends: [{ address: A }] });
    balancer.apply(cfg);
    const speaker = new RecordingSpeaker();
    const bgp = new Bgp({
      config: bgpSchema.parse({ speaker: 'command', announce: 'true', withdraw: 'true', vips: [VIP] }),
      logger: silentLogger, servicesOn: bgpServicesOn({ balancer, config: () => cfg }), speaker,
    });
    bgp.setListening(true);
    await bgp.evaluate('test');
    expect(speaker.asked).toEqual([]);
    expect(bgp.status().vips[0].reason).toBe('no service listens on it');
  });

  it('stop withdraws first and stays withdrawn; drain(false) lets it back', async () => {
    const r = setup(1);
    r.bgp.setListening(true);
    await r.bgp.drain(true, 'drained by test');
    expect(r.speaker.asked).toEqual([]);
    await r.bgp.drain(false);
    expect(r.speaker.asked).toEqual([`announce ${VIP}`]);
    await r.bgp.stop('SIGTERM');
    expect(r.speaker.asked).toEqual([`announce ${VIP}`, `withdraw ${VIP}`]);
    expect(r.bgp.status()).toMatchObject({ draining: 'stopping: SIGTERM', vips: [{ announced: false, reason: 'stopping: SIGTERM' }] });
    expect(r.published.at(-1)).toBe(`withdraw ${VIP}: stopping: SIGTERM`);
    r.balancer.setHealth('s0', A, false, 'test');
    r.balancer.setHealth('s0', A, true, 'test');
    await r.bgp.evaluate('settle');
    expect(r.speaker.asked).toHaveLength(2);
    // An operator's `ready` during the stop does not bring the route back.
    await r.bgp.drain(false);
    expect(r.speaker.asked).toHaveLength(2);
    expect(r.bgp.status()).toMatchObject({ stopping: true, draining: 'stopping: SIGTERM' });
  });

  it('a failed announce is counted and retried; routes lost with the speaker are announced again', async () => {
    const r = setup(1);
    r.speaker.failNext = 1;
    r.bgp.setListening(true);
    await until(() => r.speaker.asked.length === 1);
    expect(r.bgp.status().counts).toEqual({ announce: 1, withdraw: 0, failed: 1 });
    r.speaker.onRoutesLost!('speaker lost: test');
    await r.bgp.evaluate('settle');
    expect(r.published.slice(1)).toEqual([`withdraw ${VIP}: speaker lost: test`, `announce ${VIP}: ready: s0 2 up (speaker lost: test)`]);
    expect(r.speaker.asked).toEqual([`announce ${VIP}`, `announce ${VIP}`]);
  });

  it('removing the routes stops the re-evaluation', async () => {
    const r = setup(1);
    r.bgp.setListening(true);
    await r.bgp.evaluate('settle');
    r.uninstall();
    r.balancer.setHealth('s0', A, false, 'test');
    r.balancer.setHealth('s0', B, false, 'test');
    await new Promise((res) => setTimeout(res, 20));
    expect(r.speaker.asked).toEqual([`announce ${VIP}`]);
  });
});
