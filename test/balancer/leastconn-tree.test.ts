/**
 * The leastconn tree (assembly/tree.ts) against the plain-TypeScript reference scan
 * (bench/reference/leastconn.ts): at 1,024 backends, under random churn (acquires, releases,
 * retries, weight and state changes), every pick is the reference's pick, ties included. Both run
 * the same operations on their own memory with the same configuration; the reference only picks
 * (its Balancer's engine rebuilds records, which the scan does not read beyond members and states).
 */
import { describe, it, expect, afterEach } from 'vitest';
import { Worker } from 'node:worker_threads';
import { B_ACTIVE, backendAddr, MAX_TRIED, S_ACTIVE, S_CURSOR, serviceAddr, treeAddr, LT_LOCK } from '../../src/shm/layout.ts';
import { instantiateEngine, triedList } from '../../src/balancer/engine.ts';
import * as ref from '../../bench/reference/index.ts';
import { addTried, i32 as refI32 } from '../../bench/reference/records.ts';
import { env, makeEnv, closeEnvs, backends, config, engineModule, rng, type BackendSpec } from './env.ts';

afterEach(closeEnvs);

const N = 1024;

function fleet(random: () => number): BackendSpec[] {
  // Few distinct weights (many ties), some limits low enough to fill, a handful of backups.
  return backends(N, (i) => ({
    weight: 1 + Math.floor(random() * 4),
    max_connections: random() < 0.1 ? 1 + Math.floor(random() * 3) : 0,
    backup: i % 97 === 0,
  }));
}

describe('leastconn tree against the reference scan', () => {
  for (const seed of [1, 2, 3]) {
    it(`picks exactly as the scan at ${N} backends under random churn (seed ${seed})`, () => {
      const random = rng(seed);
      const list = fleet(random);
      const e = env({ balance: 'leastconn', backends: list });
      const r = makeEnv();
      r.balancer.apply(config({ balance: 'leastconn', backends: list }));
      ref.bind(r.memory, 2);
      const held: number[] = [];
      let picks = 0;
      let retries = 0;
      let changes = 0;
      const both = (f: (b: typeof e.balancer) => void): void => {
        f(e.balancer);
        f(r.balancer);
      };
      try {
        for (let op = 0; op < 12000; op++) {
          const x = random();
          if (x < 0.62) {
            let got = e.worker.acquire(0, 0);
            let want = ref.acquire(0, 0);
            const tried: number[] = []; // this connection's own list, as the proxy keeps it
            expect(got, `op ${op}: acquire`).toBe(want);
            picks++;
            // Now and then the connect fails: retry on another backend, as the proxy does.
            while (got >= 0 && random() < 0.15) {
              const failed = got;
              triedList(e.memory, 1).set(tried.slice(0, MAX_TRIED)); // as the proxy does, then reacquire
              got = e.worker.reacquire(0, 0, failed, Math.min(tried.length, MAX_TRIED));
              tried.push(failed);
              Atomics.sub(refI32, (backendAddr(failed) + B_ACTIVE) >> 2, 1);
              addTried(failed);
              want = ref.leastconnPick(0);
              expect(got, `op ${op}: reacquire after ${failed}`).toBe(want);
              retries++;
              if (got < 0) {
                e.worker.release(0, -1);
                ref.release(0, -1);
              }
            }
            if (got >= 0) held.push(got);
          } else if (x < 0.93) {
            if (held.length === 0) continue;
            const k = Math.floor(random() * held.length);
            const b = held[k];
            held[k] = held[held.length - 1];
            held.pop();
            e.worker.release(0, b);
            ref.release(0, b);
          } else {
            const who = list[Math.floor(random() * N)].address;
            const y = random();
            changes++;
            if (y < 0.4) {
              const w = Math.floor(random() * 5);
              both((b) => b.setWeight('s0', who, w));
            } else if (y < 0.7) {
              const s = (['ready', 'drain', 'maint'] as const)[Math.floor(random() * 3)];
              both((b) => b.setAdminState('s0', who, s, 'test'));
            } else {
              const up = random() < 0.6;
              both((b) => b.setHealth('s0', who, up, 'test'));
            }
          }
        }
        // The counts agree too (every give-back went through the tree's lock).
        for (const { address } of list) {
          const b = e.balancer.backendIndex('s0', address);
          expect(e.balancer.records.backendActive(b)).toBe(r.balancer.records.backendActive(b));
        }
        expect(picks).toBeGreaterThan(6000);
        expect(held.length).toBeGreaterThan(2 * N);
        expect(retries).toBeGreaterThan(100);
        expect(changes).toBeGreaterThan(300);
      } finally {
        r.balancer.close();
      }
    });
  }

  it('ties rotate as the scan: equal backends take turns from the cursor', () => {
    const e = env({ balance: 'leastconn', backends: backends(8) });
    const first = Array.from({ length: 8 }, () => e.worker.acquire(0, 0));
    expect(new Set(first).size).toBe(8);
    for (const b of first) e.worker.release(0, b);
  });

  it('a member count that crosses a power of two rebuilds the tree, and picks stay exact', () => {
    const e = env({ balance: 'leastconn', backends: backends(8) });
    const r = makeEnv();
    try {
      r.balancer.apply(config({ balance: 'leastconn', backends: backends(8) }));
      ref.bind(r.memory, 2);
      for (const n of [9, 3, 17, 1, 16]) {
        e.balancer.apply(config({ balance: 'leastconn', backends: backends(n, (i) => ({ weight: 1 + (i % 3) })) }));
        r.balancer.apply(config({ balance: 'leastconn', backends: backends(n, (i) => ({ weight: 1 + (i % 3) })) }));
        const held: number[] = [];
        for (let i = 0; i < 40; i++) {
          const got = e.worker.acquire(0, 0);
          expect(got).toBe(ref.acquire(0, 0));
          held.push(got);
        }
        for (const b of held) {
          e.worker.release(0, b);
          ref.release(0, b);
        }
      }
    } finally {
      r.balancer.close();
    }
  });

  it('a worker that died holding a tree\'s lock: reclaim breaks it, gives its slots back and rebuilds the tree', () => {
    const list = backends(64, (i) => ({ weight: 1 + (i % 3) }));
    const e = env({ balance: 'leastconn', backends: list });
    const dead = instantiateEngine(engineModule, e.memory, 5);
    for (let i = 0; i < 100; i++) dead.acquire(0, 0);
    // It died inside a pick: the lock word still names it (worker 5 → 6).
    const u32 = new Uint32Array(e.memory.buffer);
    Atomics.store(u32, (treeAddr(0) + LT_LOCK) >> 2, 6);
    expect(e.control.reclaim(5)).toBe(200);
    expect(Atomics.load(u32, (treeAddr(0) + LT_LOCK) >> 2)).toBe(0);
    const r = makeEnv();
    try {
      r.balancer.apply(config({ balance: 'leastconn', backends: list }));
      ref.bind(r.memory, 2);
      // Same cursor on both sides, then the same picks: the rebuilt tree holds the true (zero) counts.
      Atomics.store(new Uint32Array(r.memory.buffer), (serviceAddr(0) + S_CURSOR) >> 2, Atomics.load(u32, (serviceAddr(0) + S_CURSOR) >> 2));
      for (let i = 0; i < 200; i++) expect(e.worker.acquire(0, 0)).toBe(ref.acquire(0, 0));
    } finally {
      r.balancer.close();
    }
  });

  it('workers picking and releasing at once on shared counters leave exact counts and an exact tree', async () => {
    const list = backends(N, (i) => ({ weight: 1 + (i % 4) }));
    const e = env({ balance: 'leastconn', backends: list });
    const s = e.balancer.serviceIndex('s0');
    const workers = [1, 2, 3].map((id) => new Worker(new URL('./tree-worker.ts', import.meta.url), {
      workerData: { module: engineModule, memory: e.memory, id, service: s, rounds: 20000 },
    }));
    // Meanwhile the control plane changes weights and states (each followed by its rebuild).
    const done = Promise.all(workers.map((w) => new Promise<number>((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
    })));
    let flips = 0;
    let finished = false;
    void done.then(() => { finished = true; });
    while (!finished) {
      const who = list[flips % N].address;
      e.balancer.setWeight('s0', who, 1 + (flips % 5));
      e.balancer.setAdminState('s0', who, flips % 2 ? 'drain' : 'ready', 'test');
      flips++;
      await new Promise((resolve) => setImmediate(resolve));
    }
    const held = (await done).reduce((a, b) => a + b, 0);
    await Promise.all(workers.map((w) => w.terminate()));
    // Each worker kept `held` connections open at the end: the counts say exactly that.
    let sum = 0;
    for (const { address } of list) sum += e.balancer.records.backendActive(e.balancer.backendIndex('s0', address));
    expect(sum).toBe(held);
    expect(Atomics.load(new Int32Array(e.memory.buffer), (serviceAddr(s) + S_ACTIVE) >> 2)).toBe(held);
    expect(flips).toBeGreaterThan(0);
    // Quiescent again: from the same cursor and counts, the tree's pick is the reference scan's.
    for (const { address } of list) e.balancer.setAdminState('s0', address, 'ready', 'test');
    ref.bind(e.memory, 2);
    const u32 = new Uint32Array(e.memory.buffer);
    const i32 = new Int32Array(e.memory.buffer);
    const cursorAt = (serviceAddr(s) + S_CURSOR) >> 2;
    for (let i = 0; i < 300; i++) {
      const c = Atomics.load(u32, cursorAt);
      const got = e.worker.acquire(s, 0);
      e.worker.release(s, got);
      Atomics.store(u32, cursorAt, c);
      const want = ref.leastconnPick(s);
      Atomics.sub(i32, (backendAddr(want) + B_ACTIVE) >> 2, 1); // net zero: the tree's view is unchanged
      expect(got, `pick ${i}`).toBe(want);
      e.worker.acquire(s, 0); // and the counts move on
    }
  });
});

