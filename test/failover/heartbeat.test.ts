// Heartbeat validation over real UDP on loopback (127.4.1.0/24): every kind of bad packet is
// dropped, counted under its reason and never emitted as an advert.
import { createSocket, type Socket } from 'node:dgram';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ipv4ToInt } from '../../src/failover/fsm.ts';
import {
  decodeAdvert, encodeAdvert, Heartbeat, PACKET_SIZE, readSecret, ReplayGuard, staleWindowMs,
  type Advert, type DropReason,
} from '../../src/failover/heartbeat.ts';
import { silentLogger } from '../../src/observability/log.ts';
import { waitFor } from '../helpers/net.ts';

const KEY = Buffer.from('0123456789abcdef0123456789abcdef');
const WRONG = Buffer.from('fedcba9876543210fedcba9876543210');
const A = { host: '127.4.1.1', port: 17946 };
const B = { host: '127.4.1.2', port: 17946 };

function valid(over: Partial<Advert> = {}): Advert {
  return {
    role: 'master', priority: 150, epoch: 0x1234_5678, counter: 1, timestampMs: Date.now(),
    senderAddress: ipv4ToInt(A.host), senderPort: A.port, intervalMs: 100, ...over,
  };
}

describe('packet codec', () => {
  it('round-trips a 64-byte packet', () => {
    const a = valid({ counter: 7, priority: 0 });
    const buf = encodeAdvert(a, KEY);
    expect(buf.length).toBe(PACKET_SIZE);
    expect(decodeAdvert(buf, KEY)).toEqual(a);
  });
  it('names each structural problem', () => {
    const good = encodeAdvert(valid(), KEY);
    expect(decodeAdvert(good.subarray(0, 40), KEY)).toBe('malformed');
    expect(decodeAdvert(Buffer.concat([good, Buffer.alloc(1)]), KEY)).toBe('oversized');
    const magic = Buffer.from(good); magic[0] ^= 0xff;
    expect(decodeAdvert(magic, KEY)).toBe('bad_magic');
    const version = Buffer.from(good); version[4] = 2;
    expect(decodeAdvert(version, KEY)).toBe('bad_version');
    expect(decodeAdvert(good, WRONG)).toBe('bad_mac');
    const flipped = Buffer.from(good); flipped[6] = 254; // priority changed after signing
    expect(decodeAdvert(flipped, KEY)).toBe('bad_mac');
    expect(decodeAdvert(encodeAdvert(valid({ intervalMs: 0 }), KEY), KEY)).toBe('malformed');
  });
  it('ReplayGuard: counters only grow within an epoch; a left epoch stays retired', () => {
    const g = new ReplayGuard();
    const take = (a: Advert) => { const r = g.check(a); if (r === 'ok') g.accept(a); return r; };
    expect(take(valid({ epoch: 1, counter: 5 }))).toBe('ok');
    expect(take(valid({ epoch: 1, counter: 5 }))).toBe('replayed');
    expect(take(valid({ epoch: 1, counter: 4 }))).toBe('replayed');
    expect(take(valid({ epoch: 1, counter: 6 }))).toBe('ok');
    expect(take(valid({ epoch: 2, counter: 1 }))).toBe('ok'); // the peer restarted
    expect(take(valid({ epoch: 1, counter: 99 }))).toBe('replayed');
  });
  it('ReplayGuard: an epoch never seen, older than what was accepted, is a replay, not a restart', () => {
    const g = new ReplayGuard();
    const take = (a: Advert) => { const r = g.check(a); if (r === 'ok') g.accept(a); return r; };
    const t = Date.now();
    expect(take(valid({ epoch: 2, counter: 1, timestampMs: t }))).toBe('ok');
    // The peer's previous run, which this instance never heard (it started after, or was cut off).
    expect(take(valid({ epoch: 1, counter: 50, timestampMs: t - 400 }))).toBe('replayed');
    expect(take(valid({ epoch: 2, counter: 2, timestampMs: t + 100 }))).toBe('ok');
    expect(take(valid({ epoch: 3, counter: 1, timestampMs: t + 200 }))).toBe('ok'); // a real restart
  });
  it('stale window: dead_after × interval + allowed clock skew', () => {
    expect(staleWindowMs(3, 100, 2000)).toBe(2300);
  });
});

describe('readSecret', () => {
  let dir: string;
  beforeAll(() => { dir = mkdtempSync(join(tmpdir(), 'fulcrum-h4-secret-')); });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  it('strips a trailing newline and accepts 16+ bytes', () => {
    const f = join(dir, 'ok'); writeFileSync(f, 'abcdefghijklmnopqrstuvwxyz\n'); chmodSync(f, 0o600);
    expect(readSecret(f).toString()).toBe('abcdefghijklmnopqrstuvwxyz');
  });
  it('refuses a short key and a missing file with FULCRUM_ERR_HA_SECRET', () => {
    const f = join(dir, 'short'); writeFileSync(f, 'short\n', { mode: 0o600 });
    expect(() => readSecret(f)).toThrow(expect.objectContaining({ code: 'FULCRUM_ERR_HA_SECRET', message: expect.stringMatching(/at least 16 bytes.*has 5/) }));
    expect(() => readSecret(join(dir, 'nope'))).toThrow(expect.objectContaining({ code: 'FULCRUM_ERR_HA_SECRET', message: expect.stringMatching(/ENOENT/) }));
  });
});

describe('Heartbeat over UDP', () => {
  let a: Heartbeat;
  let b: Heartbeat;
  let attacker: Socket;
  let spoofed: Socket; // on the peer's address, as a spoofing attacker would send from
  let received: Advert[];
  let drops: DropReason[];

  const make = (self: typeof A, peer: typeof A, key = KEY) => new Heartbeat({
    bind: self, peer, bindAddress: ipv4ToInt(self.host), peerAddress: ipv4ToInt(peer.host), key,
    advertIntervalMs: 100, staleWindowMs: staleWindowMs(3, 100, 2000), logger: silentLogger,
  });
  const sendRaw = (sock: Socket, buf: Buffer) => new Promise<void>((r) => sock.send(buf, B.port, B.host, () => r()));
  const handled = () => received.length + drops.length;
  /** Waits until b has handled `n` more datagrams (accepted or dropped). */
  const settle = (before: number, n: number) => waitFor(() => handled() >= before + n, 2000, `${n} more datagrams handled`, 5);

  beforeEach(async () => {
    a = make(A, B);
    b = make(B, A);
    await a.start();
    await b.start();
    received = [];
    drops = [];
    b.on('advert', (x) => received.push(x));
    b.on('drop', (r) => drops.push(r));
    attacker = createSocket('udp4');
    spoofed = createSocket('udp4');
    await new Promise<void>((r) => attacker.bind(0, '127.4.1.3', () => r()));
    await new Promise<void>((r) => spoofed.bind(0, A.host, () => r()));
  });
  afterEach(() => {
    a.close(); b.close(); attacker.close(); spoofed.close();
  });

  it('delivers genuine heartbeats in order', async () => {
    await a.send('master', 150);
    await a.send('master', 150);
    await settle(0, 2);
    expect(received.map((x) => [x.role, x.priority, x.counter])).toEqual([['master', 150, 1], ['master', 150, 2]]);
    expect(received[0].epoch).toBe(a.epoch);
    expect(b.received).toBe(2);
    expect(Object.values(b.dropped).every((n) => n === 0)).toBe(true);
  });

  it('drops forged, replayed, truncated, oversized, bad magic/version, wrong sender and stale packets, counting each', async () => {
    // A genuine packet from the peer, as an attacker would capture it off the wire and replay it.
    const genuine = encodeAdvert(valid({ counter: 10 }), KEY);

    let before = handled();
    await sendRaw(spoofed, genuine); // accepted: authentic, fresh, from the peer's address
    await settle(before, 1);
    expect(received.length).toBe(1);

    const cases: [string, Socket, Buffer, DropReason][] = [
      ['replay of the same packet', spoofed, genuine, 'replayed'],
      ['older sequence', spoofed, encodeAdvert(valid({ counter: 9 }), KEY), 'replayed'],
      ['wrong key', spoofed, encodeAdvert(valid({ counter: 11 }), WRONG), 'bad_mac'],
      ['truncated', spoofed, encodeAdvert(valid({ counter: 12 }), KEY).subarray(0, 63), 'malformed'],
      ['empty', spoofed, Buffer.alloc(0), 'malformed'],
      ['oversized', spoofed, Buffer.concat([encodeAdvert(valid({ counter: 13 }), KEY), Buffer.alloc(1000)]), 'oversized'],
      ['bad magic', spoofed, Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'.padEnd(64, ' ')), 'bad_magic'],
      ['bad version', spoofed, (() => { const x = encodeAdvert(valid({ counter: 14 }), KEY); x[4] = 9; return x; })(), 'bad_version'],
      ['another sender id', spoofed, encodeAdvert(valid({ counter: 15, senderAddress: ipv4ToInt('127.4.1.9') }), KEY), 'wrong_sender'],
      ['our own id reflected', spoofed, encodeAdvert(valid({ counter: 16, senderAddress: ipv4ToInt(B.host), senderPort: B.port }), KEY), 'wrong_sender'],
      ['right id, wrong source address', attacker, encodeAdvert(valid({ counter: 17 }), KEY), 'wrong_sender'],
      ['10 s old', spoofed, encodeAdvert(valid({ counter: 18, timestampMs: Date.now() - 10_000 }), KEY), 'stale'],
      ['10 s in the future', spoofed, encodeAdvert(valid({ counter: 19, timestampMs: Date.now() + 10_000 }), KEY), 'stale'],
    ];
    const expected: Partial<Record<DropReason, number>> = {};
    for (const [, sock, buf, reason] of cases) {
      before = handled();
      await sendRaw(sock, buf);
      await settle(before, 1);
      expected[reason] = (expected[reason] ?? 0) + 1;
    }
    expect(drops).toEqual(cases.map((c) => c[3]));
    expect(received.length).toBe(1); // nothing bad reached the FSM's side
    for (const [reason, n] of Object.entries(expected)) expect(b.dropped[reason as DropReason], reason).toBe(n);

    // Within clock skew (1.5 s off) is still fine, and a fresh higher sequence is accepted.
    before = handled();
    await sendRaw(spoofed, encodeAdvert(valid({ counter: 20, timestampMs: Date.now() - 1500 }), KEY));
    await settle(before, 1);
    expect(received.length).toBe(2);
  });

  it('a captured packet of an epoch never heard (the peer\'s previous run) neither reaches the FSM nor locks out the live peer', async () => {
    // Captured by an attacker while this instance was down or cut off; still inside the stale window.
    const previousRun = encodeAdvert(valid({ epoch: (a.epoch ^ 0x5a5a5a5a) >>> 0, counter: 4000, timestampMs: Date.now() - 300, priority: 254 }), KEY);
    let before = handled();
    await a.send('master', 150);
    await settle(before, 1);
    expect(received.map((x) => x.epoch)).toEqual([a.epoch]);
    before = handled();
    await sendRaw(spoofed, previousRun);
    await settle(before, 1);
    expect(drops).toEqual(['replayed']);
    // The live peer goes on being heard.
    for (let i = 0; i < 3; i++) {
      before = handled();
      await a.send('master', 150);
      await settle(before, 1);
    }
    expect(received.map((x) => x.epoch)).toEqual([a.epoch, a.epoch, a.epoch, a.epoch]);
    expect(b.dropped.replayed).toBe(1);
  });

  it('a heartbeat that continues another\'s sequence (an upgrade) is accepted; one that starts its counter again is not', async () => {
    let before = handled();
    await a.send('master', 150);
    await a.send('master', 150);
    await settle(before, 2);
    const seq = a.sequence();
    expect(seq).toEqual({ epoch: a.epoch, counter: 2 });
    a.close();
    const next = new Heartbeat({
      bind: A, peer: B, bindAddress: ipv4ToInt(A.host), peerAddress: ipv4ToInt(B.host), key: KEY,
      advertIntervalMs: 100, staleWindowMs: staleWindowMs(3, 100, 2000), logger: silentLogger, sequence: seq,
    });
    await next.start();
    try {
      expect(next.epoch).toBe(seq.epoch);
      before = handled();
      await next.send('master', 150);
      await settle(before, 1);
      expect(received.map((x) => [x.epoch, x.counter])).toEqual([[seq.epoch, 1], [seq.epoch, 2], [seq.epoch, 3]]);
      expect(drops).toEqual([]);
    } finally {
      next.close();
    }
    // Restarting the counter in the same epoch (what carrying only the epoch would do) is a replay.
    const again = new Heartbeat({
      bind: A, peer: B, bindAddress: ipv4ToInt(A.host), peerAddress: ipv4ToInt(B.host), key: KEY,
      advertIntervalMs: 100, staleWindowMs: staleWindowMs(3, 100, 2000), logger: silentLogger, sequence: { epoch: seq.epoch, counter: 0 },
    });
    await again.start();
    try {
      before = handled();
      await again.send('master', 150);
      await settle(before, 1);
      expect(drops).toEqual(['replayed']);
    } finally {
      again.close();
      a = make(A, B); // afterEach closes it
    }
  });

  it('a restarted peer (new epoch) is accepted, and its previous epoch is refused from then on', async () => {
    let before = handled();
    await a.send('master', 150);
    await settle(before, 1);
    const oldEpochPacket = encodeAdvert(valid({ epoch: a.epoch, counter: 1000 }), KEY);
    const restarted = make(A, B);
    a.close();
    await restarted.start();
    try {
      before = handled();
      await restarted.send('backup', 150);
      await settle(before, 1);
      expect(received.at(-1)?.epoch).toBe(restarted.epoch);
      before = handled();
      await sendRaw(spoofed, oldEpochPacket);
      await settle(before, 1);
      expect(drops).toEqual(['replayed']);
    } finally {
      restarted.close();
      a = make(A, B); // afterEach closes it
    }
  });
});
