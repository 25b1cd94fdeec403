import { describe, it, expect, afterEach } from 'vitest';
import { on } from 'node:events';
import { Worker } from 'node:worker_threads';
import { env, closeEnvs, backends, engineModule, type Env } from './env.ts';
import { hashKey } from '../../src/balancer/hash.ts';
import { PICK_SERVICE_FULL, PICK_NO_BACKEND, PICK_BACKENDS_FULL, PICK_BAD_SERVICE, MAX_TRIED, S_QUEUED, HEADER_OFFSET, H_GENERATION, S_ACTIVE, B_ACTIVE, T_SERVICE_QUEUED, backendAddr, serviceAddr, tallyAddr } from '../../src/shm/layout.ts';
import { instantiateEngine, triedList } from '../../src/balancer/engine.ts';


afterEach(closeEnvs);

/** Acquires `n` connections and holds them; returns the per-backend counts (by list position). */
function hold(e: Env, n: number, addresses: string[], key = (i: number) => i): number[] {
  const counts = addresses.map(() => 0);
  for (let i = 0; i < n; i++) {
    const b = e.worker.acquire(0, key(i));
    expect(b).toBeGreaterThanOrEqual(0);
    counts[addresses.findIndex((a) => e.balancer.backendIndex('s0', a) === b)]++;
  }
  return counts;
}

function expectShares(counts: number[], weights: number[], tolerance: number): void {
  const total = counts.reduce((a, b) => a + b, 0);
  const wsum = weights.reduce((a, b) => a + b, 0);
  counts.forEach((c, i) => expect(Math.abs(c / total - weights[i] / wsum)).toBeLessThan(tolerance));
}

describe('leastconn', () => {
  it('weights 1:1:2 with 400 held connections give 1:1:2', () => {
    const list = backends(3, (i) => ({ weight: i === 2 ? 2 : 1 }));
    const e = env({ balance: 'leastconn', backends: list });
    const counts = hold(e, 400, list.map((b) => b.address));
    expectShares(counts, [1, 1, 2], 0.02);
    expect(counts).toEqual([100, 100, 200]);
  });

  it('a released connection is replaced on the least loaded backend', () => {
    const list = backends(3);
    const e = env({ balance: 'leastconn', backends: list });
    const ids = [0, 1, 2].map(() => e.worker.acquire(0, 0));
    expect(new Set(ids).size).toBe(3);
    e.worker.release(0, ids[1]);
    expect(e.worker.acquire(0, 0)).toBe(ids[1]);
  });
});

describe('roundrobin', () => {
  it('weights 1:2:3 give 1:2:3, interleaved (smooth)', () => {
    const list = backends(3, (i) => ({ weight: i + 1 }));
    const e = env({ balance: 'roundrobin', backends: list });
    const counts = hold(e, 600, list.map((b) => b.address));
    expect(counts).toEqual([100, 200, 300]);
    // Smooth: the heaviest never takes more than 2 in a row with 1:2:3.
    const ring = e.balancer.records.activeRing(0);
    expect(ring.length).toBe(6);
    let run = 1;
    for (let i = 1; i < ring.length; i++) {
      run = ring[i] === ring[i - 1] ? run + 1 : 1;
      expect(run).toBeLessThanOrEqual(2);
    }
  });

  it('schedules are reduced by the gcd and capped at the ring capacity', () => {
    const list = backends(1000, (i) => ({ weight: 1 + (i % 256) }));
    const e = env({ balance: 'roundrobin', backends: list });
    const len = e.balancer.records.activeRing(0).length;
    expect(len).toBeGreaterThan(60000);
    expect(len).toBeLessThanOrEqual(65537);
    const e2 = env({ balance: 'roundrobin', backends: backends(4, () => ({ weight: 8 })) });
    expect(e2.balancer.records.activeRing(0).length).toBe(4);
  });
});

describe('random (power of two)', () => {
  it('weights 1:3 give about 1:3 over 4000 held connections', () => {
    const list = backends(2, (i) => ({ weight: i === 0 ? 1 : 3 }));
    const e = env({ balance: 'random', backends: list });
    const counts = hold(e, 4000, list.map((b) => b.address));
    expectShares(counts, [1, 3], 0.03);
  });

  it('with acquire+release and equal weights, draws spread evenly', () => {
    // Under no load the key (0 + 1) / weight favours the heavier of two draws outright, so
    // weight-proportional shares show under load (previous test); here the draws themselves are checked.
    const list = backends(4);
    const e = env({ balance: 'random', backends: list });
    const counts = [0, 0, 0, 0];
    const ids = list.map((b) => e.balancer.backendIndex('s0', b.address));
    for (let i = 0; i < 20000; i++) {
      const b = e.worker.acquire(0, 0);
      counts[ids.indexOf(b)]++;
      e.worker.release(0, b);
    }
    expectShares(counts, [1, 1, 1, 1], 0.03);
  });
});

describe('backups', () => {
  for (const balance of ['leastconn', 'maglev', 'roundrobin', 'random'] as const) {
    it(`${balance}: backups take connections only while no primary is up`, () => {
      const list = [...backends(2), { address: '10.1.0.1:5432', backup: true }];
      const e = env({ balance, backends: list });
      const backup = e.balancer.backendIndex('s0', '10.1.0.1:5432');
      for (let i = 0; i < 50; i++) {
        const b = e.worker.acquire(0, hashKey(`k${i}`));
        expect(b).not.toBe(backup);
        e.worker.release(0, b);
      }
      e.balancer.setHealth('s0', list[0].address, false, 'test');
      expect(e.worker.acquire(0, 1)).not.toBe(backup);
      e.worker.release(0, e.balancer.backendIndex('s0', list[1].address));
      e.balancer.setAdminState('s0', list[1].address, 'maint', 'test');
      for (let i = 0; i < 20; i++) {
        expect(e.worker.acquire(0, hashKey(`k${i}`))).toBe(backup);
        e.worker.release(0, backup);
      }
      e.balancer.setHealth('s0', list[0].address, true, 'test');
      expect(e.worker.acquire(0, 7)).toBe(e.balancer.backendIndex('s0', list[0].address));
    });
  }
});

describe('admission', () => {
  it('service max_connections → PICK_SERVICE_FULL, and no slot is held on a negative result', () => {
    const e = env({ max_connections: 3, backends: backends(2) });
    const got = [0, 1, 2].map(() => e.worker.acquire(0, 0));
    for (const b of got) expect(b).toBeGreaterThanOrEqual(0);
    expect(e.worker.acquire(0, 0)).toBe(PICK_SERVICE_FULL);
    expect(e.balancer.describe()[0].active).toBe(3);
    e.worker.release(0, got[0]);
    expect(e.worker.acquire(0, 0)).toBeGreaterThanOrEqual(0);
  });

  it('backend max_connections → PICK_BACKENDS_FULL (and the service slot is given back)', () => {
    const e = env({ backends: backends(2, () => ({ max_connections: 2 })) });
    for (let i = 0; i < 4; i++) expect(e.worker.acquire(0, 0)).toBeGreaterThanOrEqual(0);
    expect(e.worker.acquire(0, 0)).toBe(PICK_BACKENDS_FULL);
    expect(e.balancer.describe()[0].active).toBe(4);
    expect(e.balancer.describe()[0].backends.map((b) => b.active)).toEqual([2, 2]);
  });

  for (const balance of ['leastconn', 'maglev', 'roundrobin', 'random'] as const) {
    it(`${balance}: nothing up → PICK_NO_BACKEND; all full → PICK_BACKENDS_FULL`, () => {
      const list = backends(3, () => ({ max_connections: 1 }));
      const e = env({ balance, backends: list });
      for (let i = 0; i < 3; i++) expect(e.worker.acquire(0, hashKey(`c${i}`))).toBeGreaterThanOrEqual(0);
      expect(e.worker.acquire(0, 99)).toBe(PICK_BACKENDS_FULL);
      for (const b of list) e.balancer.setHealth('s0', b.address, false, 'test');
      expect(e.worker.acquire(0, 99)).toBe(PICK_NO_BACKEND);
      expect(e.balancer.describe()[0].active).toBe(3);
    });
  }

  it('weight 0 takes no new connections; an unknown or removed service → PICK_BAD_SERVICE', () => {
    const list = backends(2, (i) => ({ weight: i === 0 ? 0 : 1 }));
    const e = env({ backends: list });
    const live = e.balancer.backendIndex('s0', list[1].address);
    for (let i = 0; i < 10; i++) expect(e.worker.acquire(0, i)).toBe(live);
    expect(e.worker.acquire(5, 0)).toBe(PICK_BAD_SERVICE);
    expect(e.worker.acquire(1_000_000, 0)).toBe(PICK_BAD_SERVICE);
  });
});

describe('reacquire', () => {
  for (const balance of ['leastconn', 'maglev', 'roundrobin', 'random'] as const) {
    it(`${balance}: excludes every backend this connection tried, then says none is left`, () => {
      const list = backends(4);
      const e = env({ balance, backends: list });
      const h = hashKey('203.0.113.9');
      const scratch = triedList(e.memory, 1);
      const tried: number[] = [];
      let b = e.worker.acquire(0, h);
      for (let i = 0; i < 3; i++) {
        // As the proxy does: the connection's own list into the worker's scratch, then reacquire.
        scratch.set(tried);
        const failed = b;
        b = e.worker.reacquire(0, h, failed, tried.length);
        tried.push(failed);
        expect(b).toBeGreaterThanOrEqual(0);
        expect(tried.includes(b)).toBe(false);
      }
      scratch.set(tried);
      expect(e.worker.reacquire(0, h, b, tried.length)).toBe(PICK_NO_BACKEND);
      // The failed backends' slots were given back; the service slot is still held.
      expect(e.balancer.describe()[0].backends.map((x) => x.active)).toEqual([0, 0, 0, 0]);
      expect(e.balancer.describe()[0].active).toBe(1);
      e.worker.release(0, -1);
      expect(e.balancer.describe()[0].active).toBe(0);
      // A new acquire clears the tried list.
      expect(e.worker.acquire(0, h)).toBeGreaterThanOrEqual(0);
    });
  }

  it('takes the caller\'s tried list whatever another connection\'s acquire left in the scratch', () => {
    const list = backends(3);
    const e = env({ backends: list });
    const ids = list.map((x) => e.balancer.backendIndex('s0', x.address));
    const scratch = triedList(e.memory, 1);
    const first = e.worker.acquire(0, 0);
    const [other, last] = ids.filter((i) => i !== first);
    e.worker.release(0, e.worker.acquire(0, 1)); // another connection meanwhile: clears the scratch
    scratch[0] = other;
    expect(e.worker.reacquire(0, 0, first, 1)).toBe(last);
    // A count beyond MAX_TRIED is bounded: the list is never read past its end.
    scratch.fill(first);
    expect(e.worker.reacquire(0, 0, last, MAX_TRIED + 4)).toBe(other);
  });
});

describe('release', () => {
  it('bumps the release sequence and wakes Atomics.waitAsync waiters', async () => {
    const e = env({ max_connections: 1, backends: backends(1) });
    const b = e.worker.acquire(0, 0);
    expect(e.worker.acquire(0, 0)).toBe(PICK_SERVICE_FULL);
    const i32 = new Int32Array(e.memory.buffer);
    const idx = e.balancer.records.releaseSeqIndex(0);
    // A queued connection counts itself in S_QUEUED before it reads the sequence (the proxy's protocol).
    Atomics.add(i32, (serviceAddr(0) + S_QUEUED) >> 2, 1);
    const seq = Atomics.load(i32, idx);
    const wait = Atomics.waitAsync(i32, idx, seq, 2000);
    expect(wait.async).toBe(true);
    setImmediate(() => e.worker.release(0, b)); // once this test is waiting on the promise
    expect(await wait.value).toBe('ok');
    expect(Atomics.load(i32, idx)).toBe(seq + 1);
    expect(e.worker.acquire(0, 0)).toBe(b);
  });

  it('with nobody queued, a release leaves the sequence alone (no contended add, no notify)', () => {
    const e = env({ backends: backends(2) });
    const i32 = new Int32Array(e.memory.buffer);
    const idx = e.balancer.records.releaseSeqIndex(0);
    const seq = Atomics.load(i32, idx);
    for (let k = 0; k < 10; k++) e.worker.release(0, e.worker.acquire(0, k));
    expect(Atomics.load(i32, idx)).toBe(seq);
    // Once a connection is queued, every release bumps it.
    Atomics.add(i32, (serviceAddr(0) + S_QUEUED) >> 2, 1);
    e.worker.release(0, e.worker.acquire(0, 0));
    expect(Atomics.load(i32, idx)).toBe(seq + 1);
  });

  it('a release from another thread wakes a waiter blocked in Atomics.wait', async () => {
    const e = env({ backends: backends(1) });
    const i32 = new Int32Array(e.memory.buffer);
    const idx = e.balancer.records.releaseSeqIndex(0);
    Atomics.add(i32, (serviceAddr(0) + S_QUEUED) >> 2, 1);
    const seq = Atomics.load(i32, idx);
    // The worker says 'waiting' just before it blocks: the release below follows that, not a guess.
    const w = new Worker(`
      const { workerData, parentPort } = require('node:worker_threads');
      const i32 = new Int32Array(workerData.memory.buffer);
      parentPort.postMessage('waiting');
      parentPort.postMessage(Atomics.wait(i32, workerData.idx, workerData.seq, 2000));
    `, { eval: true, workerData: { memory: e.memory, idx, seq } });
    try {
      const messages = on(w, 'message'); // buffered, in order
      expect((await messages.next()).value).toEqual(['waiting']);
      const b = e.worker.acquire(0, 0);
      e.worker.release(0, b);
      // 'ok': woken by the notify. 'not-equal' only if the release landed in the instant between
      // the worker's 'waiting' and its wait: not a lost wake-up either. A missing notify shows as 'timed-out'.
      expect(['ok', 'not-equal']).toContain((await messages.next()).value?.[0]);
    } finally {
      await w.terminate();
    }
  });
});

describe('rebuild wakes the queue', () => {
  it('a backend coming up (a rebuild) wakes queued connections; the generation has moved when they wake', async () => {
    const list = backends(1, () => ({ state: 'maint' }));
    const e = env({ backends: list });
    expect(e.worker.acquire(0, 0)).toBe(PICK_NO_BACKEND);
    const i32 = new Int32Array(e.memory.buffer);
    const idx = e.balancer.records.releaseSeqIndex(0);
    const genIdx = (HEADER_OFFSET + H_GENERATION) >> 2;
    // A rebuild with nobody queued leaves the sequence alone.
    const seq0 = Atomics.load(i32, idx);
    e.control.rebuild(0);
    expect(Atomics.load(i32, idx)).toBe(seq0);
    // Queued (the proxy's protocol: count, read the sequence, then the generation, then pick and wait).
    Atomics.add(i32, (serviceAddr(0) + S_QUEUED) >> 2, 1);
    const seq = Atomics.load(i32, idx);
    const gen = Atomics.load(i32, genIdx);
    const wait = Atomics.waitAsync(i32, idx, seq, 2000);
    expect(wait.async).toBe(true);
    setImmediate(() => e.balancer.setAdminState('s0', list[0].address, 'ready', 'test')); // writes the state, rebuilds
    expect(await wait.value).toBe('ok');
    expect(Atomics.load(i32, idx)).toBe(seq + 1);
    expect(Atomics.load(i32, genIdx)).not.toBe(gen);
    expect(e.worker.acquire(0, 0)).toBe(e.balancer.backendIndex('s0', list[0].address));
  });
});

describe('reclaim', () => {
  it('gives back every slot a dead worker held — service, backends, queue — and only its own', () => {
    const e = env({ max_connections: 10, backends: backends(3) });
    const other = instantiateEngine(engineModule, e.memory, 2);
    const i32 = new Int32Array(e.memory.buffer);
    const sActive = (serviceAddr(0) + S_ACTIVE) >> 2;
    const sQueued = (serviceAddr(0) + S_QUEUED) >> 2;
    const bActive = (b: number) => Atomics.load(i32, (backendAddr(b) + B_ACTIVE) >> 2);
    // Worker 1: four sessions, one of which failed its connect and moved (reacquire), one closed.
    const held = [0, 1, 2, 3].map((k) => e.worker.acquire(0, k));
    const moved = e.worker.reacquire(0, 9, held[0], 0);
    expect(moved).toBeGreaterThanOrEqual(0);
    e.worker.release(0, held[3]);
    // …and two queued connections, counted as the proxy does (S_QUEUED and its own tally).
    Atomics.add(i32, sQueued, 2);
    i32[(tallyAddr(1) + T_SERVICE_QUEUED) >> 2] += 2;
    // Worker 2 holds one session of its own.
    const kept = other.acquire(0, 7);
    expect(Atomics.load(i32, sActive)).toBe(4);

    expect(e.control.reclaim(1)).toBe(3 + 3 + 2); // 3 service slots, 3 backend slots, 2 queued
    expect(Atomics.load(i32, sActive)).toBe(1);
    expect(Atomics.load(i32, sQueued)).toBe(0);
    const ids = e.balancer.describe()[0].backends.map((b) => b.index);
    expect(ids.map(bActive).reduce((a, b) => a + b, 0)).toBe(1);
    expect(bActive(kept)).toBe(1);
    // Idempotent: the tallies were zeroed.
    expect(e.control.reclaim(1)).toBe(0);
    other.release(0, kept);
    expect(ids.map(bActive)).toEqual([0, 0, 0]);
    expect(Atomics.load(i32, sActive)).toBe(0);
  });
});

describe('several workers on one memory', () => {
  it('hammering acquire/release ends with every count at 0 and never exceeds a backend max', async () => {
    const list = backends(6, (i) => ({ max_connections: 3, weight: 1 + (i % 3) }));
    const e = env(
      { name: 'lc', balance: 'leastconn', max_connections: 15, backends: list },
      { name: 'mg', balance: 'maglev', table_size: 101, backends: list },
      { name: 'rr', balance: 'roundrobin', backends: list },
      { name: 'rd', balance: 'random', backends: list },
    );
    const services = ['lc', 'mg', 'rr', 'rd'].map((n) => e.balancer.serviceIndex(n));
    const code = `
      const { workerData, parentPort } = require('node:worker_threads');
      const { module, memory, workerId, services, iterations, backendBase, backendSize, activeOff, maxOff } = workerData;
      const ex = new WebAssembly.Instance(module, { env: { memory } }).exports;
      if (ex.init(workerId) !== 0) throw new Error('init');
      const i32 = new Int32Array(memory.buffer);
      const held = [];
      let over = 0, picked = 0, refused = 0;
      let seed = workerId * 7919 + 1;
      for (let i = 0; i < iterations; i++) {
        seed = (seed * 1103515245 + 12345) >>> 0;
        const s = services[seed % services.length];
        if (held.length > 0 && (seed & 3) === 0 || held.length > 40) {
          const [hs, hb] = held.splice((seed >>> 8) % held.length, 1)[0];
          ex.release(hs, hb);
          continue;
        }
        let b = ex.acquire(s, seed);
        if (b < 0) {
          if (b !== -1 && b !== -2 && b !== -3) throw new Error('acquire returned ' + b);
          refused++;
          continue;
        }
        if (seed & 16) { // a failed connect now and then
          b = ex.reacquire(s, seed, b, 0);
          if (b < 0) { ex.release(s, -1); refused++; continue; }
        }
        picked++;
        const a = (backendBase + b * backendSize) >> 2;
        if (Atomics.load(i32, a + (activeOff >> 2)) > Atomics.load(i32, a + (maxOff >> 2))) over++;
        held.push([s, b]);
      }
      for (const [hs, hb] of held) ex.release(hs, hb);
      parentPort.postMessage({ over, picked, refused });
    `;
    const { BACKENDS_OFFSET, BACKEND_SIZE, B_ACTIVE, B_MAX_CONN } = await import('../../src/shm/layout.ts');
    const workers = [1, 2, 3, 4].map((workerId) => new Worker(code, {
      eval: true,
      workerData: { module: engineModule, memory: e.memory, workerId, services, iterations: 50_000,
        backendBase: BACKENDS_OFFSET, backendSize: BACKEND_SIZE, activeOff: B_ACTIVE, maxOff: B_MAX_CONN },
    }));
    // Meanwhile the control plane keeps flipping states and rebuilding.
    let flips = 0;
    const churn = setInterval(() => {
      const b = list[flips++ % list.length].address;
      for (const n of ['lc', 'mg', 'rr', 'rd']) e.balancer.setHealth(n, b, flips % 2 === 0, 'churn');
    }, 2);
    try {
      const results = await Promise.all(workers.map((w) => new Promise<{ over: number; picked: number; refused: number }>((resolve, reject) => {
        w.once('message', resolve);
        w.once('error', reject);
      })));
      for (const r of results) {
        expect(r.over).toBe(0);
        expect(r.picked).toBeGreaterThan(1000);
      }
    } finally {
      clearInterval(churn);
      await Promise.all(workers.map((w) => w.terminate()));
    }
    for (const s of e.balancer.describe()) {
      expect(s.active).toBe(0);
      for (const b of s.backends) expect(b.active).toBe(0);
    }
  });
});
