/**
 * Fuzzing what discovery and the lag probe read from servers they do not control: Patroni's
 * /cluster JSON (src/discovery/patroni.ts readCluster) and Redis's INFO replication text
 * (src/health/probes/lag.ts redisLag). Whatever arrives, the reader answers or fails with its own
 * error (DiscoveryError, ProbeFailure) — never anything else — and what it answers is sane:
 * backends with IP addresses and ports 1–65535, a lag that is null or a finite number ≥ 0.
 */
import { isIP } from 'node:net';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DiscoveryError } from '../../src/discovery/errors.ts';
import { readCluster } from '../../src/discovery/patroni.ts';
import { redisLag } from '../../src/health/probes/lag.ts';
import { ProbeFailure } from '../../src/health/probes/probe.ts';
import { corpus, inputs, rounds } from './fuzz.ts';

describe('fuzz: Patroni /cluster answers', () => {
  it('answers with sane backends or a DiscoveryError', () => {
    fc.assert(fc.property(inputs(corpus('patroni-cluster')), fc.constantFrom('primary', 'replica') as fc.Arbitrary<'primary' | 'replica'>, fc.boolean(), (buf, role, backup) => {
      let body: unknown;
      try {
        body = JSON.parse(buf.toString('utf8'));
      } catch {
        return; // not JSON: the source's fetch says so before the reader runs
      }
      try {
        for (const b of readCluster(body, role, 'fuzz', backup).backends) {
          expect(isIP(b.address.host)).not.toBe(0);
          expect(b.address.port >= 1 && b.address.port <= 65535).toBe(true);
        }
      } catch (err) {
        expect(err).toBeInstanceOf(DiscoveryError);
      }
    }), rounds());
  });
});

describe('fuzz: Patroni /cluster members, structured', () => {
  // Mutated bytes are mostly not JSON: members built field by field reach the reader's checks.
  const member = fc.record({
    name: fc.oneof(fc.string(), fc.anything()),
    role: fc.oneof(fc.constantFrom('leader', 'master', 'standby_leader', 'replica', 'sync_standby', 'quorum_standby', 'uninitialized'), fc.anything()),
    state: fc.oneof(fc.constantFrom('running', 'streaming', 'stopped', 'starting'), fc.anything()),
    host: fc.oneof(fc.ipV4(), fc.ipV6(), fc.domain(), fc.anything()),
    port: fc.oneof(fc.integer({ min: -10, max: 70_000 }), fc.double(), fc.string(), fc.anything()),
    lag: fc.oneof(fc.nat(), fc.constant('unknown'), fc.anything()),
  }, { requiredKeys: [] });
  it('answers with sane backends or a DiscoveryError', () => {
    fc.assert(fc.property(fc.oneof(fc.record({ members: fc.array(fc.oneof(member, fc.anything()), { maxLength: 8 }) }), fc.anything()), fc.constantFrom('primary', 'replica') as fc.Arbitrary<'primary' | 'replica'>, fc.boolean(), (body, role, backup) => {
      try {
        for (const b of readCluster(body, role, 'fuzz', backup).backends) {
          expect(isIP(b.address.host)).not.toBe(0);
          expect(Number.isInteger(b.address.port) && b.address.port >= 1 && b.address.port <= 65535).toBe(true);
        }
      } catch (err) {
        expect(err).toBeInstanceOf(DiscoveryError);
      }
    }), rounds());
  });
});

describe('fuzz: INFO replication texts', () => {
  it('a lag that is null or finite and ≥ 0, or a ProbeFailure', () => {
    fc.assert(fc.property(inputs(corpus('redis-info')), (buf) => {
      try {
        const { lag_ms } = redisLag(buf.toString('latin1'));
        expect(lag_ms === null || (Number.isFinite(lag_ms) && lag_ms >= 0)).toBe(true);
      } catch (err) {
        expect(err).toBeInstanceOf(ProbeFailure);
      }
    }), rounds());
  });
});
