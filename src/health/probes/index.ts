/** The probe registry: health.type → probe. One file per type, one export each. */
import type { HealthConfig } from '../../config/schema.ts';
import { httpProbe } from './http.ts';
import { mysqlProbe } from './mysql.ts';
import { postgresProbe } from './postgres.ts';
import type { Probe } from './probe.ts';
import { redisProbe } from './redis.ts';
import { sendExpectProbe } from './send-expect.ts';
import { tcpProbe } from './tcp.ts';

export type { Probe, ProbeResult, Role, RoleFilter } from './probe.ts';

export const PROBES: Record<HealthConfig['type'], Probe> = {
  tcp: tcpProbe,
  send_expect: sendExpectProbe,
  http: httpProbe,
  redis: redisProbe,
  postgres: postgresProbe,
  mysql: mysqlProbe,
};
