/**
 * What src/bgp's Bgp announces and why, through the routes table (src/control/routes.ts
 * bgpServicesOn + installBgpRoutes) from a real Balancer: the listeners gate, announce_when,
 * backend-state events, drain and stop (the quiesce before the withdraw, on a TestClock), a failed
 * command retried, routes lost with the speaker.
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
import { TestClock } from '../helpers/clock.ts';

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

describe('bgp: a drain quiesces, waits for the connections, then withdraws', () => {
  /** A Bgp whose services report `open.n` connections and whose quiesce is recorded (the pool's is in test/proxy/quiesce.test.ts). */
  function quiescing(fail: string | null = null) {
    const { balancer } = makeEnv();
    const cfg: Config = balancerConfig({ listen: `${VIP}:80`, backends: [{ address: A }, { address: B }] });
    balancer.apply(cfg);
    const speaker = new RecordingSpeaker();
    const clock = new TestClock();
    const open = { n: 2 };
    const quiesced: string[][] = [];
    const views = bgpServicesOn({ balancer, config: () => cfg });
    const bgp = new Bgp({
      config: bgpSchema.parse({ speaker: 'command', announce: 'true', withdraw: 'true', vips: [VIP], drain: '1s' }),
      logger: silentLogger,
      servicesOn: (vip) => views(vip).map((v) => ({ ...v, active: open.n })),
      speaker,
      clock,
      quiesce: async (services) => {
        quiesced.push(services);
        return fail !== null && services.length > 0 ? [{ service: services[0], address: `${VIP}:80`, message: fail }] : [];
      },
    });
    bgp.setListening(true);
    return { bgp, speaker, clock, open, quiesced };
  }
  const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

  it('stop: quiesce, wait while connections are open, withdraw once they ended, hold SYNs back `drain` more', async () => {
    const r = quiescing();
    await r.bgp.evaluate('settle');
    expect(r.speaker.asked).toEqual([`announce ${VIP}`]);
    let stopped = false;
    void r.bgp.stop('SIGTERM').then(() => (stopped = true));
    await settle();
    expect(r.quiesced).toEqual([['s0']]);
    expect(r.bgp.status().drain).toMatchObject({ phase: 'waiting', connections: 2, quiesced: ['s0'], cause: 'stopping: SIGTERM' });
    await r.clock.advance(600);
    expect(r.speaker.asked).toEqual([`announce ${VIP}`]); // announced while its connections are open
    expect(r.bgp.status().vips[0].announced).toBe(true);
    r.open.n = 0;
    await r.clock.advance(20);
    expect(r.speaker.asked).toEqual([`announce ${VIP}`, `withdraw ${VIP}`]);
    expect(r.bgp.status()).toMatchObject({ draining: 'stopping: SIGTERM', drain: { phase: 'withdrawn', quiesced: ['s0'] } });
    await r.clock.advance(999);
    expect(stopped).toBe(false); // the listeners hold SYNs back while the router moves
    await r.clock.advance(1);
    expect(stopped).toBe(true);
    expect(r.quiesced).toEqual([['s0']]); // the stop closes the listeners: the filter stays on them
  });

  it('no connection open: still one handshake time (250 ms) before the withdraw; connections that outlast `drain` do not hold it', async () => {
    const r = quiescing();
    await r.bgp.evaluate('settle');
    r.open.n = 0;
    void r.bgp.stop('SIGTERM');
    await r.clock.advance(240);
    expect(r.speaker.asked).toEqual([`announce ${VIP}`]);
    await r.clock.advance(20);
    expect(r.speaker.asked).toEqual([`announce ${VIP}`, `withdraw ${VIP}`]);

    const s = quiescing();
    await s.bgp.evaluate('settle');
    void s.bgp.stop('SIGTERM');
    await s.clock.advance(990);
    expect(s.speaker.asked).toEqual([`announce ${VIP}`]);
    await s.clock.advance(10);
    expect(s.speaker.asked).toEqual([`announce ${VIP}`, `withdraw ${VIP}`]);
  });

  it('an operator drain lets the listeners accept again once the router had `drain`; ready announces; ready while waiting withdraws nothing', async () => {
    const r = quiescing();
    await r.bgp.evaluate('settle');
    r.open.n = 0;
    let drained = false;
    void r.bgp.drain(true).then(() => (drained = true));
    await r.clock.advance(260);
    expect(drained).toBe(true);
    expect(r.speaker.asked).toEqual([`announce ${VIP}`, `withdraw ${VIP}`]);
    expect(r.bgp.status().drain).toMatchObject({ phase: 'withdrawn', quiesced: ['s0'] });
    await r.clock.advance(1000);
    expect(r.quiesced).toEqual([['s0'], []]);
    expect(r.bgp.status()).toMatchObject({ draining: 'drained by operator', drain: { phase: 'settled', quiesced: [] } });
    await r.bgp.drain(false);
    expect(r.speaker.asked).toEqual([`announce ${VIP}`, `withdraw ${VIP}`, `announce ${VIP}`]);
    expect(r.bgp.status().drain).toBeNull();

    r.open.n = 3;
    void r.bgp.drain(true);
    await r.clock.advance(100);
    expect(r.bgp.status().drain).toMatchObject({ phase: 'waiting', connections: 3 });
    const ready = r.bgp.drain(false);
    await r.clock.advance(20);
    await ready;
    expect(r.quiesced).toEqual([['s0'], [], ['s0'], []]);
    expect(r.speaker.asked).toHaveLength(3); // never withdrawn
    expect(r.bgp.status()).toMatchObject({ draining: null, drain: null, vips: [{ announced: true }] });
  });

  it('the filter cannot be set: withdraws at once and keeps accepting for `drain`, saying why', async () => {
    const r = quiescing('cannot hold new connections back: not built');
    await r.bgp.evaluate('settle');
    void r.bgp.stop('SIGTERM');
    await settle();
    await settle();
    expect(r.speaker.asked).toEqual([`announce ${VIP}`, `withdraw ${VIP}`]);
    expect(r.quiesced).toEqual([['s0'], []]);
    expect(r.bgp.status().drain).toMatchObject({ phase: 'withdrawn', quiesced: [], unquiesced: `s0 ${VIP}:80: cannot hold new connections back: not built` });
  });
});
