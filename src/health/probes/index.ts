/**
 * The probe registry: health.type → its probe, one file per type. A probe's module is loaded on
 * first use, so the probe thread holds only the drivers the config needs (the thread measured
 * 26 MB loading tcp alone, 48 MB loading every type: pg and mysql2 are most of the difference).
 */
import type { HealthConfig } from '../../config/schema.ts';
import type { Probe } from './probe.ts';

export type { Probe, ProbeResult, Role, RoleFilter } from './probe.ts';

const MODULES: Record<HealthConfig['type'], () => Promise<Probe>> = {
  tcp: async () => (await import('./tcp.ts')).tcpProbe,
  send_expect: async () => (await import('./send-expect.ts')).sendExpectProbe,
  http: async () => (await import('./http.ts')).httpProbe,
  redis: async () => (await import('./redis.ts')).redisProbe,
  postgres: async () => (await import('./postgres.ts')).postgresProbe,
  mysql: async () => (await import('./mysql.ts')).mysqlProbe,
  udp: async () => (await import('./udp.ts')).udpProbe,
};

const loaded = new Map<HealthConfig['type'], Promise<Probe>>();

/** The probe for `type`, its module loaded the first time. */
export function loadProbe(type: HealthConfig['type']): Promise<Probe> {
  let p = loaded.get(type);
  if (p === undefined) {
    p = MODULES[type]();
    loaded.set(type, p);
  }
  return p;
}
