/**
 * Maglev's bounded load (`hash_balance_factor`, assembly/ring.ts): a backend takes a new connection
 * only while its active count < ceil(factor × (total + 1) / eligible backends); a refused key walks
 * its own permutation of the table to the first backend under the bound.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { env, closeEnvs, backends, rng, type Env } from './env.ts';
import { hashKey } from '../../src/balancer/hash.ts';

afterEach(closeEnvs);

const N = 50;

function maglev(factor: number, n = N): Env {
  return env({ balance: 'maglev', table_size: 65537, hash_balance_factor: factor, backends: backends(n) });
}

const activeOf = (e: Env, b: number): number => e.balancer.records.backendActive(b);
const bound = (factor: number, total: number, n: number): number => Math.ceil((factor * total) / (100 * n));

/** 10,000 connections held: 5 sources open 80 % of them, 2,000 others the rest. */
function skewedKeys(seed: number): number[] {
  const random = rng(seed);
  const hot = Array.from({ length: 5 }, (_, i) => hashKey(`203.0.113.${i + 1}`));
  const cold = Array.from({ length: 2000 }, (_, i) => hashKey(`198.18.${i >> 8}.${i & 255}`));
  return Array.from({ length: 10_000 }, () => (random() < 0.8 ? hot[Math.floor(random() * 5)] : cold[Math.floor(random() * 2000)]));
}

describe('maglev bounded load', () => {
  it('with a skewed key distribution no backend exceeds the bound, and the same state gives the same answers', () => {
    const e = maglev(125);
    const twin = maglev(125);
    const keys = skewedKeys(7);
    for (let i = 0; i < keys.length; i++) {
      const b = e.worker.acquire(0, keys[i]);
      expect(b).toBeGreaterThanOrEqual(0);
      // total + 1 = the connections the service holds now, this one included.
      expect(activeOf(e, b), `connection ${i}`).toBeLessThanOrEqual(bound(125, i + 1, N));
      expect(twin.worker.acquire(0, keys[i]), `connection ${i} on another instance`).toBe(b);
    }
    const max = Math.max(...e.balancer.records.members(0).map((b) => activeOf(e, b)));
    expect(max).toBeLessThanOrEqual(bound(125, keys.length, N));
  });

  it('without the factor the same skew overloads the hot keys\' backends (what the bound prevents)', () => {
    const e = maglev(0);
    for (const k of skewedKeys(7)) e.worker.acquire(0, k);
    const max = Math.max(...e.balancer.records.members(0).map((b) => activeOf(e, b)));
    expect(max).toBeGreaterThan(3 * bound(125, 10_000, N));
  });

  it('with uniform keys the factor changes almost no assignments', () => {
    const on = maglev(125);
    // Factor 0 and nothing held: the plain Maglev owner of each key.
    const off = maglev(0);
    const random = rng(11);
    // A steady population: 5,000 connections from distinct clients, then churn (one leaves, one comes).
    const held: Array<{ key: number; b: number }> = [];
    let moved = 0;
    let placed = 0;
    for (let i = 0; i < 20_000; i++) {
      if (held.length >= 5000) {
        const k = Math.floor(random() * held.length);
        const gone = held[k];
        held[k] = held[held.length - 1];
        held.pop();
        on.worker.release(0, gone.b);
      }
      const key = hashKey(`192.0.2.${i}:${Math.floor(random() * 65536)}`);
      const b = on.worker.acquire(0, key);
      const owner = off.worker.acquire(0, key);
      off.worker.release(0, owner);
      if (i >= 5000) {
        placed++;
        if (b !== owner) moved++;
      }
      held.push({ key, b });
    }
    // With 100 connections per backend on average, a 1.25× bound is rarely reached by chance.
    expect(moved / placed).toBeLessThan(0.01); // measured: 18 of 15,000 (0.12 %)
  });

  it('keys that moved go back to their own backend when the load falls', () => {
    const e = maglev(125, 20);
    const owners = maglev(0, 20);
    const random = rng(3);
    const background = Array.from({ length: 400 }, (_, i) => e.worker.acquire(0, hashKey(`198.51.100.${i}:${Math.floor(random() * 65536)}`)));
    // One hot client opens 100 connections: its backend fills to the bound, the rest spill over.
    const hot = hashKey('203.0.113.9');
    const own = owners.worker.acquire(0, hot);
    const hotConns = Array.from({ length: 100 }, () => e.worker.acquire(0, hot));
    const spilled = hotConns.filter((b) => b !== own);
    expect(spilled.length).toBeGreaterThan(0);
    expect(new Set(spilled).size).toBeGreaterThan(1); // the overflow spreads along the key's permutation
    expect(activeOf(e, own)).toBeLessThanOrEqual(bound(125, 500, 20));
    // A moved key's next connection stays off its backend while the load holds…
    expect(e.worker.acquire(0, hot)).not.toBe(own);
    // …and goes back once the load falls.
    for (const b of [...hotConns, ...background]) e.worker.release(0, b);
    const back = e.worker.acquire(0, hot);
    expect(back).toBe(own);
  });

  it('the bound counts the eligible backends only', () => {
    const e = maglev(100, 4);
    const list = backends(4);
    e.balancer.setAdminState('s0', list[0].address, 'maint', 'test');
    e.balancer.setAdminState('s0', list[1].address, 'maint', 'test');
    // Two eligible backends, factor 1.00: each may hold ceil(total / 2); six connections split 3 + 3.
    const got = Array.from({ length: 6 }, (_, i) => e.worker.acquire(0, hashKey(`203.0.113.${i % 2}`)));
    const counts = new Map<number, number>();
    for (const b of got) counts.set(b, (counts.get(b) ?? 0) + 1);
    expect([...counts.values()].sort()).toEqual([3, 3]);
  });
});
