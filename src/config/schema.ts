/**
 * The configuration schema: what a YAML file may say, its defaults, and the messages for what it
 * may not. Names are the YAML names (snake_case) all the way through the code, so the README,
 * the config file and the source use one vocabulary. Durations are parsed to milliseconds here.
 *
 * Every message is written to follow "path: " and to end in ", got <value>" (see load.ts), as
 * HAProxy's parser quotes the keyword and the value.
 */
import { z } from 'zod';
import { MAX_BACKENDS, MAX_MEMBERS, MAX_SERVICES, MAX_WEIGHT, MAX_WORKERS, RING_CAPACITY } from '../shm/layout.ts';
import { splitHostPort, parseHostPort, type HostPort } from './address.ts';

// The address helpers live apart (no zod) for the data plane and the probe thread; re-exported here.
export { canonicalIPv6, formatHostPort, parseHostPort, type HostPort } from './address.ts';

// ── scalar building blocks ──────────────────────────────────────────────────

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** "250ms", "2s", "1.5m", "30m", "1h" → milliseconds; a bare number is milliseconds, as in HAProxy. */
export function parseDuration(v: unknown): number | undefined {
  if (typeof v === 'number') return Number.isFinite(v) && v >= 0 ? Math.round(v) : undefined;
  if (typeof v !== 'string') return undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$/.exec(v);
  if (!m) return undefined;
  return Math.round(Number(m[1]) * DURATION_UNITS[m[2]]);
}

export const duration = (min = 0, max = 7 * 24 * 3_600_000) =>
  z.custom<number | string>((v) => {
    const ms = parseDuration(v);
    return ms !== undefined && ms >= min && ms <= max;
  }, { error: `must be a duration like 500ms, 2s, 30m or 1h${min > 0 ? ` (at least ${min}ms)` : ''}` })
    .transform((v) => parseDuration(v) as number);

export const intIn = (min: number, max: number) =>
  z.custom<number>((v) => Number.isInteger(v) && (v as number) >= min && (v as number) <= max, {
    error: `must be an integer ${min}–${max}`,
  });

export const bool = () => z.custom<boolean>((v) => typeof v === 'boolean', { error: 'must be true or false' });

export const oneOf = <const T extends readonly [string, ...string[]]>(values: T) =>
  z.custom<T[number]>((v) => typeof v === 'string' && (values as readonly string[]).includes(v), {
    error: `must be one of ${values.join(' | ')}`,
  });

/** A TCP keepalive time: the kernel takes whole seconds, 1–32767 (rounded up when sent: proxy/table.ts). */
const keepaliveTime = () =>
  z.custom<number | string>((v) => {
    const ms = parseDuration(v);
    return ms !== undefined && ms >= 1000 && ms <= 32_767_000;
  }, { error: 'must be a duration 1s–32767s (the kernel counts keepalive in seconds), like 30s or 5m' })
    .transform((v) => parseDuration(v) as number);

const nonEmptyString = (what: string) =>
  z.custom<string>((v) => typeof v === 'string' && v.trim().length > 0, { error: `must be a non-empty ${what}` });

const HOST_PORT_RULE = 'must be host:port with a port 1–65535 (IPv6 as [addr]:port)';

export const hostPort = () =>
  z.custom<string>((v) => parseHostPort(v) !== undefined, {
    error: (issue) => {
      const { problem } = splitHostPort(issue.input, false);
      return problem ? `${HOST_PORT_RULE}: ${problem}` : HOST_PORT_RULE;
    },
  }).transform((v) => parseHostPort(v) as HostPort);

/** "10.0.0.100/24" → { address, prefix }. */
export function parseCidr(v: unknown): { address: string; prefix: number } | undefined {
  if (typeof v !== 'string') return undefined;
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})\/(\d{1,2})$/.exec(v.trim());
  if (!m || m[1].split('.').some((o) => Number(o) > 255) || Number(m[2]) > 32) return undefined;
  return { address: m[1], prefix: Number(m[2]) };
}

export function isPrime(n: number): boolean {
  if (n < 2 || !Number.isInteger(n)) return false;
  for (let d = 2; d * d <= n; d++) if (n % d === 0) return false;
  return true;
}

// ── sections ─────────────────────────────────────────────────────────────────

export const BACKEND_ADMIN_STATES = ['ready', 'drain', 'maint'] as const;

export const backendSchema = z.strictObject({
  address: hostPort(),
  /** 0 takes no new connections (as HAProxy's weight 0). */
  weight: intIn(0, MAX_WEIGHT).default(1),
  /** 0 = unlimited. */
  max_connections: intIn(0, 1_000_000).default(0),
  /** Serves only while no primary backend is up. */
  backup: bool().default(false),
  /** The administrative state at start-up. */
  state: oneOf(BACKEND_ADMIN_STATES).default('ready'),
});

/**
 * Why a send/expect string cannot be used ("hex:" without pairs of hex digits, "regex:" that does
 * not compile), or undefined. Checked here, as src/health/probes/send-expect.ts reads them: a
 * probe that cannot be built fails every time, and every backend of the service goes down.
 */
function probeTextProblem(v: string, regexAllowed: boolean): string | undefined {
  if (v.startsWith('hex:')) return /^(?:[0-9a-fA-F]{2})*$/.test(v.slice(4).replace(/\s+/g, '')) ? undefined : 'must be pairs of hex digits after hex:';
  if (!regexAllowed || !v.startsWith('regex:')) return undefined;
  try {
    new RegExp(v.slice(6));
    return undefined;
  } catch (err) {
    return `must be a regular expression after regex: (${(err as Error).message})`;
  }
}

const probeText = (regexAllowed: boolean, what: string) =>
  z.custom<string>((v) => typeof v === 'string' && (regexAllowed ? v.trim().length > 0 : true) && probeTextProblem(v, regexAllowed) === undefined, {
    error: (issue) => (typeof issue.input === 'string' && probeTextProblem(issue.input, regexAllowed)) || `must be a${regexAllowed ? ' non-empty' : ''} ${what}`,
  });

/** Text a hand-written HTTP request carries: a space or a line break would end its line early. */
const requestText = (what: string, valid: (v: string) => boolean) =>
  z.custom<string>((v) => typeof v === 'string' && valid(v) && !/[\s\x00-\x1f\x7f]/.test(v), {
    error: `must be ${what} without spaces or control characters`,
  });

const sendExpectSchema = z.strictObject({
  /** Text with \r \n \t \\ escapes, or "hex:0a0b…". */
  send: probeText(false, 'string (text or hex:…)').default(''),
  /** Text the reply must contain, "hex:…" (bytes the reply must start with), or "regex:…". */
  expect: probeText(true, 'string (text, hex:… or regex:…)'),
});

const httpCheckSchema = z.strictObject({
  path: requestText('a path starting with /', (v) => v.startsWith('/')).default('/'),
  method: oneOf(['GET', 'HEAD'] as const).default('GET'),
  host: requestText('a host name', (v) => v.length > 0).optional(),
  expect_status: intIn(100, 599).default(200),
});

/**
 * TLS to the backend, for the redis, postgres and mysql probes (as libpq's sslmode): disable,
 * require (encrypted, whoever answers), verify-full (the chain checked against ca_file, or the
 * system's CAs, and the name or address the backend is configured with).
 */
export const PROBE_TLS_MODES = ['disable', 'require', 'verify-full'] as const;
const tlsSettings = {
  tls: oneOf(PROBE_TLS_MODES).default('disable'),
  /** PEM file of the CAs a verify-full probe trusts; needs tls: verify-full. */
  ca_file: nonEmptyString('file path').optional(),
};

const dbCheckSchema = z.strictObject({
  user: nonEmptyString('user name').optional(),
  password_file: nonEmptyString('file path').optional(),
  database: nonEmptyString('database name').optional(),
  ...tlsSettings,
});

/**
 * PostgreSQL password authentication the probe accepts, weakest allowed: scram (SCRAM-SHA-256
 * only, the default), md5 (also MD5), password (also cleartext). The probe gives its password
 * to whatever answers at the backend's address: cleartext hands it over, MD5 a replayable hash.
 */
export const POSTGRES_AUTH = ['scram', 'md5', 'password'] as const;

export const HEALTH_TYPES = ['tcp', 'send_expect', 'http', 'redis', 'postgres', 'mysql'] as const;

/** Health types that ask the server its role (ROLE / INFO replication, pg_is_in_recovery(), @@read_only). */
export const ROLE_HEALTH_TYPES: readonly (typeof HEALTH_TYPES)[number][] = ['redis', 'postgres', 'mysql'];

/**
 * The role a service routes to, or null when its check does not route by role (no check, a type
 * that cannot see roles, or role: any). A service with a role routes only to backends whose role a
 * probe has seen: they start down until then (src/balancer/balancer.ts), a wrong-role answer takes
 * one out at once (src/health/monitor.ts).
 */
export function routedRole(health: { type: string; role: string } | undefined): 'primary' | 'replica' | null {
  if (!health || (health.role !== 'primary' && health.role !== 'replica')) return null;
  return (ROLE_HEALTH_TYPES as readonly string[]).includes(health.type) ? health.role : null;
}

export const healthSchema = z.strictObject({
  type: oneOf(HEALTH_TYPES).default('tcp'),
  /** redis/postgres/mysql: which servers may take connections. */
  role: oneOf(['primary', 'replica', 'any'] as const).default('any'),
  interval: duration(10).default(2000),
  timeout: duration(1).default(1000),
  rise: intIn(1, 100).default(2),
  fall: intIn(1, 100).default(3),
  /** Consecutive connect failures seen by the data plane that mark a backend down at once (0 = off). */
  observe_failures: intIn(0, 100).default(1),
  send_expect: sendExpectSchema.optional(),
  http: httpCheckSchema.optional(),
  redis: z.strictObject({ password_file: nonEmptyString('file path').optional(), user: nonEmptyString('user name').optional(), ...tlsSettings }).optional(),
  postgres: dbCheckSchema.extend({ auth: oneOf(POSTGRES_AUTH).default('scram') }).optional(),
  mysql: dbCheckSchema.optional(),
});

export const serviceSchema = z.strictObject({
  name: z.custom<string>((v) => typeof v === 'string' && /^[A-Za-z0-9_.-]{1,64}$/.test(v), {
    error: 'must be 1–64 characters of letters, digits, _ . -',
  }),
  listen: hostPort(),
  balance: oneOf(['maglev', 'leastconn', 'roundrobin', 'random'] as const).default('leastconn'),
  hash_key: oneOf(['source_ip', 'source_ip_port'] as const).default('source_ip'),
  table_size: z.custom<number>((v) => isPrime(v as number) && (v as number) >= 7 && (v as number) <= RING_CAPACITY, {
    error: `must be a prime 7–${RING_CAPACITY}`,
  }).default(RING_CAPACITY),
  /** 0 = unlimited. */
  max_connections: intIn(0, 10_000_000).default(0),
  queue: z.strictObject({
    max: intIn(0, 10_000_000).default(1000),
    timeout: duration().default(5000),
  }).default({ max: 1000, timeout: 5000 }),
  retries: intIn(0, 15).default(2),
  timeouts: z.strictObject({
    connect: duration(1).default(2000),
    /** Closes a session with no traffic either way for this long (HAProxy's timeout client/server/tunnel). */
    idle: duration(1).default(1_800_000),
    /** With accept_proxy: the client's PROXY header must be whole within this long. */
    proxy_header: duration(1).default(5000),
  }).default({ connect: 2000, idle: 1_800_000, proxy_header: 5000 }),
  /** Clients send a PROXY protocol header (v1 or v2) first: fulcrum sits behind another L4 balancer (HAProxy's accept-proxy). */
  accept_proxy: bool().default(false),
  /** Tell backends who the client is with a PROXY protocol header (HAProxy's send-proxy / send-proxy-v2). */
  send_proxy: oneOf(['none', 'v1', 'v2'] as const).default('none'),
  /**
   * TCP keepalive on the client's and the backend's socket (HAProxy's clitcpka / srvtcpka): the
   * kernel probes a connection idle this long, every `interval`, and drops it after `count`
   * unanswered probes. Whole seconds (the kernel's unit), 1 s–32767 s. Absent: the system's default (off).
   */
  tcp_keepalive: z.strictObject({
    idle: keepaliveTime().default(300_000),
    interval: keepaliveTime().default(30_000),
    count: intIn(1, 127).default(5),
  }).optional(),
  /** A reset from one side resets the other (SO_LINGER 0, then close) instead of closing it cleanly. */
  propagate_reset: bool().default(false),
  health: healthSchema.optional(),
  on_marked_down: oneOf(['shutdown_sessions', 'keep'] as const).default('keep'),
  slow_start: duration().default(0),
  backends: z.array(backendSchema).min(1, { error: 'must list at least one backend' }).max(MAX_MEMBERS, {
    error: `must list at most ${MAX_MEMBERS} backends`,
  }),
});

export const haSchema = z.strictObject({
  vip: z.union([z.string(), z.array(z.string()).min(1)]).transform((v) => (Array.isArray(v) ? v : [v]))
    .pipe(z.array(z.custom<string>((v) => parseCidr(v) !== undefined, { error: 'must be an IPv4 address with a prefix, like 10.0.0.100/24' })
      .transform((v) => parseCidr(v) as { address: string; prefix: number }))),
  interface: nonEmptyString('interface name'),
  bind: hostPort(),
  peer: hostPort(),
  priority: intIn(1, 254),
  advert_interval: duration(10, 10_000).default(100),
  dead_after: intIn(2, 100).default(3),
  preempt: bool().default(true),
  secret_file: nonEmptyString('file path'),
  /** Heartbeats whose timestamp is further than dead_after × advert_interval + this from our clock are dropped as stale. */
  max_clock_skew: duration(0, 60_000).default(2000),
  /**
   * Gratuitous ARP after taking the VIP: count announcements, interval apart. Linux ignores an ARP
   * update for an entry changed less than 1 s before (neigh locktime), so the burst spans 1 s.
   */
  garp: z.strictObject({
    count: intIn(1, 20).default(3),
    interval: duration(1).default(500),
  }).default({ count: 3, interval: 500 }),
  track: z.strictObject({
    min_backends_up: intIn(0, MAX_BACKENDS).default(0),
    interface: bool().default(true),
  }).default({ min_backends_up: 0, interface: true }),
});

/**
 * The ha settings a reload cannot change in place: they are the pair's identity (addresses, the
 * interface, the key). A reload reports them under restart_required and keeps the running ones;
 * the others (priority, intervals, preempt, track, garp) apply at once, as keepalived's reload does.
 */
export const HA_RESTART_ONLY = ['vip', 'interface', 'bind', 'peer', 'secret_file'] as const;

export const adminSchema = z.strictObject({
  listen: hostPort().default({ host: '127.0.0.1', port: 9900 }),
  token_file: nonEmptyString('file path').optional(),
  /** Require the token for reads (GET) too, not only for changes. */
  auth_reads: bool().default(false),
  /** Host names (besides the listen address and localhost) a request's Host header may carry. */
  allowed_hosts: z.array(requestText('a host name', (v) => parseHostPort(v, true) !== undefined)).default([]),
});

export const loggingSchema = z.strictObject({
  level: oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const).default('info'),
  /** One line per closed connection, as HAProxy's option tcplog. */
  connections: bool().default(true),
});

export const configSchema = z.strictObject({
  workers: z.union([
    z.literal('auto'),
    intIn(1, MAX_WORKERS),
  ], { error: `must be auto or an integer 1–${MAX_WORKERS}` }).default('auto'),
  shutdown_grace: duration().default(30_000),
  services: z.array(serviceSchema).min(1, { error: 'must list at least one service' }).max(MAX_SERVICES, {
    error: `must list at most ${MAX_SERVICES} services`,
  }),
  admin: adminSchema.optional(),
  ha: haSchema.optional(),
  logging: loggingSchema.default({ level: 'info', connections: true }),
});

export type Config = z.output<typeof configSchema>;
export type ServiceConfig = Config['services'][number];
export type BackendConfig = ServiceConfig['backends'][number];
export type HealthConfig = z.output<typeof healthSchema>;
export type HaConfig = z.output<typeof haSchema>;
export type AdminConfig = z.output<typeof adminSchema>;
export type LoggingConfig = z.output<typeof loggingSchema>;

