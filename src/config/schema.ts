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

export const LAG_ACTIONS = ['remove', 'close'] as const;

export const HEALTH_TYPES = ['tcp', 'send_expect', 'http', 'redis', 'postgres', 'mysql', 'udp'] as const;

/** The one health type a UDP service can use (the others speak TCP), and the TCP services cannot. */
export const UDP_HEALTH_TYPE = 'udp';

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
  /**
   * Replication lag (redis/postgres/mysql, role replica or any): a replica further behind its
   * primary than this fails its probe (src/health/probes/lag.ts says how each server's lag is
   * measured), and returns after `rise` probes under it.
   */
  max_lag: duration(0).optional(),
  /** What a replica over max_lag loses: new connections (remove), or its open sessions too (close). */
  lag_action: oneOf(LAG_ACTIONS).default('remove'),
  /** type udp: the datagram sent (text with escapes, or "hex:…"), as send_expect's send. */
  send: probeText(false, 'string (text or hex:…)').optional(),
  /** type udp: what the reply datagram must hold (text, "hex:…" prefix, or "regex:…"), as send_expect's expect. */
  expect: probeText(true, 'string (text, hex:… or regex:…)').optional(),
});

/** A DNS name (letters, digits, _ - . ; at most 253 characters): an SRV owner like _pg._tcp.db.internal, or a host name. */
const dnsName = () => z.custom<string>((v) => typeof v === 'string' && v.length <= 253 && /^(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?$/.test(v), {
  error: 'must be a DNS name (labels of letters, digits, _ and -, dot-separated, at most 253 characters)',
});

export const DNS_RECORD_TYPES = ['SRV', 'A', 'AAAA'] as const;

/** services[].discover.dns: backends from DNS (src/discovery/dns.ts). */
export const dnsDiscoverySchema = z.strictObject({
  name: dnsName(),
  type: oneOf(DNS_RECORD_TYPES).default('SRV'),
  /** ip:port of the servers to ask; the system's resolvers when absent. */
  resolvers: z.array(hostPort()).min(1, { error: 'must list at least one resolver' }).max(8, { error: 'must list at most 8 resolvers' }).optional(),
  interval: duration(100).default(5000),
  /** How long failures and empty answers keep the last good set (HAProxy's hold valid). */
  hold: duration().default(60_000),
  /** Each query's bound (per resolver). */
  timeout: duration(10).default(2000),
  /** type A / AAAA: the backends' port (SRV records carry theirs). */
  port: intIn(1, 65535).optional(),
});

/** services[].discover.redis_sentinel: the primary (or the replicas) of a master Sentinel watches (src/discovery/sentinel.ts). */
export const sentinelDiscoverySchema = z.strictObject({
  sentinels: z.array(hostPort()).min(1, { error: 'must list at least one sentinel' }).max(16, { error: 'must list at most 16 sentinels' }),
  /** The master's name in Sentinel (sentinel monitor <name> …). */
  master: z.custom<string>((v) => typeof v === 'string' && /^[A-Za-z0-9_.:-]{1,128}$/.test(v), { error: 'must be 1–128 characters of letters, digits, _ . : -' }),
  role: oneOf(['primary', 'replica'] as const).default('primary'),
  /** role replica: the primary joins as a backup, so reads fall back to it when every replica is out. */
  primary_as_backup: bool().default(true),
  /** Sentinel's password (requirepass / sentinel auth), when it has one. */
  password_file: nonEmptyString('file path').optional(),
  /** Sentinel asked again this often, besides its announcements. */
  interval: duration(100).default(5000),
  hold: duration().default(60_000),
  timeout: duration(10).default(2000),
});

/** services[].discover.patroni: members of a Patroni cluster from GET /cluster (src/discovery/patroni.ts). */
export const patroniDiscoverySchema = z.strictObject({
  urls: z.array(z.custom<string>((v) => {
    if (typeof v !== 'string') return false;
    try {
      const u = new URL(v);
      return (u.protocol === 'http:' || u.protocol === 'https:') && u.hostname !== '';
    } catch {
      return false;
    }
  }, { error: 'must be an http:// or https:// URL of a Patroni REST API' })).min(1, { error: 'must list at least one URL' }).max(16, { error: 'must list at most 16 URLs' }),
  role: oneOf(['primary', 'replica'] as const).default('primary'),
  /** role replica: the leader joins as a backup, so reads fall back to it when every replica is out. */
  primary_as_backup: bool().default(true),
  interval: duration(100).default(5000),
  hold: duration().default(60_000),
  timeout: duration(10).default(2000),
});

/** Where a service's backends come from besides its `backends` list: one source (src/discovery/). */
export const discoverSchema = z.strictObject({
  dns: dnsDiscoverySchema.optional(),
  redis_sentinel: sentinelDiscoverySchema.optional(),
  patroni: patroniDiscoverySchema.optional(),
});

export const PROTOCOLS = ['tcp', 'udp'] as const;

/** Idle timeouts when the config names none: a TCP connection (HAProxy's usual 30 min), a UDP flow (nginx's proxy_timeout is 10 min; game servers' own client timeouts are shorter). */
export const IDLE_DEFAULT_TCP = 1_800_000;
export const IDLE_DEFAULT_UDP = 60_000;
const QUEUE_DEFAULT = { max: 1000, timeout: 5000, when_down: 0 };
/** The largest payload of a UDP datagram over IPv4 (65535 − 20 − 8). */
export const MAX_DATAGRAM = 65_507;
const UDP_DEFAULT = { responses: 0, max_datagram: MAX_DATAGRAM };

/**
 * Keys a UDP service refuses by name: they describe a TCP connection's life. Presence is what is
 * refused (a key that means nothing is a mistake even when its value is harmless).
 */
const TCP_ONLY_KEYS: Record<string, string> = {
  queue: 'a datagram that finds the service or its backends full is dropped and counted, never queued',
  accept_proxy: 'a PROXY header is read from TCP clients only',
  'timeouts.connect': 'a flow\'s upstream socket is ready at once',
  'timeouts.proxy_header': 'a PROXY header is read from TCP clients only',
  tcp_keepalive: 'TCP keepalive probes TCP connections only',
  propagate_reset: 'a datagram flow has no reset to pass on',
};

const serviceFields = z.strictObject({
  name: z.custom<string>((v) => typeof v === 'string' && /^[A-Za-z0-9_.-]{1,64}$/.test(v), {
    error: 'must be 1–64 characters of letters, digits, _ . -',
  }),
  /** tcp: connections; udp: flows of datagrams per client address and port. */
  protocol: oneOf(PROTOCOLS).default('tcp'),
  listen: hostPort(),
  balance: oneOf(['maglev', 'leastconn', 'roundrobin', 'random'] as const).default('leastconn'),
  hash_key: oneOf(['source_ip', 'source_ip_port'] as const).default('source_ip'),
  table_size: z.custom<number>((v) => isPrime(v as number) && (v as number) >= 7 && (v as number) <= RING_CAPACITY, {
    error: `must be a prime 7–${RING_CAPACITY}`,
  }).default(RING_CAPACITY),
  /**
   * Maglev's bounded load (HAProxy's hash-balance-factor), percent; 0 = off: a backend takes a new
   * connection only while its active count < ceil(factor × (total + 1) / eligible backends).
   */
  hash_balance_factor: z.custom<number>((v) => v === 0 || (Number.isInteger(v) && (v as number) >= 100 && (v as number) <= 10_000), {
    error: 'must be 0 (off) or an integer percent 100–10000',
  }).default(0),
  /** 0 = unlimited. UDP: flows. */
  max_connections: intIn(0, 10_000_000).default(0),
  queue: z.strictObject({
    max: intIn(0, 10_000_000).default(QUEUE_DEFAULT.max),
    timeout: duration().default(QUEUE_DEFAULT.timeout),
    /**
     * While no backend is eligible (a switchover's gap), a new connection waits up to this long
     * for one instead of being closed at once (0 = off: closed at once, no_backend).
     */
    when_down: duration(0, 3_600_000).default(QUEUE_DEFAULT.when_down),
  }).optional(),
  /** UDP: an ICMP port unreachable on a flow's socket is its failed connect (another backend is tried). */
  retries: intIn(0, 15).default(2),
  timeouts: z.strictObject({
    connect: duration(1).optional(),
    /** Closes a session with no traffic either way for this long (HAProxy's timeout client/server/tunnel; a UDP flow: nginx's proxy_timeout). */
    idle: duration(1).optional(),
    /** With accept_proxy: the client's PROXY header must be whole within this long. */
    proxy_header: duration(1).optional(),
  }).default({}),
  /** Clients send a PROXY protocol header (v1 or v2) first: fulcrum sits behind another L4 balancer (HAProxy's accept-proxy). */
  accept_proxy: bool().optional(),
  /** Tell backends who the client is with a PROXY protocol header (HAProxy's send-proxy / send-proxy-v2). UDP: v2 on every datagram. */
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
  propagate_reset: bool().optional(),
  /** protocol udp: a flow ends after `responses` replies (0: only when idle), and longer datagrams are dropped and counted. */
  udp: z.strictObject({
    responses: intIn(0, 1_000_000).default(UDP_DEFAULT.responses),
    max_datagram: intIn(1, MAX_DATAGRAM).default(UDP_DEFAULT.max_datagram),
  }).optional(),
  health: healthSchema.optional(),
  on_marked_down: oneOf(['shutdown_sessions', 'keep'] as const).default('keep'),
  slow_start: duration().default(0),
  /** Backends discovered at run time, joined to `backends` (src/discovery/). */
  discover: discoverSchema.optional(),
  /** At least one, unless `discover` is set (checked in config/load.ts). */
  backends: z.array(backendSchema).max(MAX_MEMBERS, {
    error: `must list at most ${MAX_MEMBERS} backends`,
  }),
});

type ServiceFields = z.output<typeof serviceFields>;

/** The value at a dotted key of a service ("timeouts.connect"), or undefined. */
const keyValue = (s: ServiceFields, key: string): unknown => {
  const dot = key.indexOf('.');
  if (dot < 0) return (s as Record<string, unknown>)[key];
  return ((s as Record<string, unknown>)[key.slice(0, dot)] as Record<string, unknown> | undefined)?.[key.slice(dot + 1)];
};

/**
 * A service (`backends` may be empty only with a `discover` section: config/load.ts checks it,
 * with the other problems): its fields, with the defaults that depend on the protocol filled in (the idle
 * timeout), and the keys that mean nothing for its protocol refused by name.
 */
export const serviceSchema = serviceFields.transform((s, ctx) => {
  const udp = s.protocol === 'udp';
  const refuse = (path: (string | number)[], message: string, input: unknown): void => {
    ctx.issues.push({ code: 'custom', path, message, input });
  };
  if (udp) {
    for (const [key, why] of Object.entries(TCP_ONLY_KEYS)) {
      const v = keyValue(s, key);
      if (v !== undefined) refuse(key.split('.'), `means nothing for protocol udp (${why})`, v);
    }
    if (s.send_proxy === 'v1') refuse(['send_proxy'], 'must be none or v2 for protocol udp (v1 is a text line for TCP)', s.send_proxy);
    if (s.health && s.health.type !== UDP_HEALTH_TYPE) {
      refuse(['health', 'type'], `must be ${UDP_HEALTH_TYPE} for protocol udp (a ${s.health.type} probe speaks TCP)`, s.health.type);
    }
  } else {
    if (s.udp !== undefined) refuse(['udp'], 'needs protocol: udp', s.udp);
    if (s.health?.type === UDP_HEALTH_TYPE) refuse(['health', 'type'], 'needs protocol: udp (the service is tcp)', s.health.type);
  }
  return {
    ...s,
    queue: s.queue ?? QUEUE_DEFAULT,
    timeouts: {
      connect: s.timeouts.connect ?? 2000,
      idle: s.timeouts.idle ?? (udp ? IDLE_DEFAULT_UDP : IDLE_DEFAULT_TCP),
      proxy_header: s.timeouts.proxy_header ?? 5000,
    },
    accept_proxy: s.accept_proxy ?? false,
    propagate_reset: s.propagate_reset ?? false,
    udp: s.udp ?? UDP_DEFAULT,
  };
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

/** An IPv4 literal ("10.0.1.1"): BGP router ids and neighbour addresses. */
export function isIPv4(v: unknown): v is string {
  return typeof v === 'string' && parseCidr(`${v}/32`) !== undefined;
}

const ipv4 = () => z.custom<string>((v) => isIPv4(v), { error: 'must be an IPv4 address like 10.0.1.1' });

/** A 4-byte AS number (RFC 6793); 0 and 4294967295 are reserved (RFC 7607, RFC 7300). */
const asn = () => z.custom<number>((v) => Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 4_294_967_294, {
  error: 'must be an AS number 1–4294967294',
});

/** "10.0.100.10/32" or "10.0.100.10" → the address: a BGP VIP is one host route, put on `lo`. */
const hostRoute = () =>
  z.custom<string>((v) => {
    if (typeof v !== 'string') return false;
    const c = parseCidr(v.includes('/') ? v : `${v}/32`);
    return c !== undefined && c.prefix === 32;
  }, { error: 'must be an IPv4 address, optionally with /32, like 10.0.100.10/32' })
    .transform((v) => v.split('/')[0].trim());

export const BGP_SPEAKERS = ['gobgp', 'command'] as const;

/**
 * Scale-out: every node announces its VIPs by BGP through a real daemon (src/bgp). `gobgp`:
 * fulcrum runs gobgpd as its child and drives it; `command`: the operator's announce/withdraw
 * commands, {vip} substituted. Cross-checks (load.ts): what each speaker needs, a VIP also under ha.
 */
export const bgpSchema = z.strictObject({
  speaker: oneOf(BGP_SPEAKERS),
  asn: asn().optional(),
  router_id: ipv4().optional(),
  /** The address gobgpd's sessions start from (default: the kernel's choice). */
  local_address: ipv4().optional(),
  neighbors: z.array(z.strictObject({
    address: ipv4(),
    asn: asn(),
  })).max(64, { error: 'must list at most 64 neighbors' }).default([]),
  vips: z.array(hostRoute()).min(1, { error: 'must list at least one VIP' }).max(64, { error: 'must list at most 64 VIPs' }),
  announce_when: z.strictObject({
    /** Every service listening on the VIP must have this many backends up. */
    min_backends_up: intIn(0, MAX_BACKENDS).default(1),
  }).default({ min_backends_up: 1 }),
  /** On stop: withdraw, keep accepting this long while the router moves flows away, then shut down. */
  drain: duration(0, 600_000).default(5000),
  /** gobgp: BGP hold time sent to the neighbours (keepalives at a third of it); 3 s is the least BGP allows. */
  hold_time: duration(3000, 65_535_000).default(3000),
  /**
   * gobgp: the hang bound. fulcrum's main loop feeds the wrapper that runs gobgpd every quarter of
   * this; a wrapper not fed for this long kills gobgpd, whose sessions then close.
   */
  liveness: duration(200, 60_000).default(1000),
  /** command: run with /bin/sh -c, {vip} replaced by the address and {prefix} by address/32. */
  announce: nonEmptyString('command').optional(),
  withdraw: nonEmptyString('command').optional(),
});

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
  /** json (one object per line, for log shippers) or text (a readable line: local time, level, message, key=value). */
  format: oneOf(['json', 'text'] as const).default('json'),
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
  bgp: bgpSchema.optional(),
  logging: loggingSchema.default({ level: 'info', connections: true, format: 'json' }),
});

export type Config = z.output<typeof configSchema>;
export type ServiceConfig = Config['services'][number];
export type BackendConfig = ServiceConfig['backends'][number];
export type HealthConfig = z.output<typeof healthSchema>;
export type DiscoverConfig = z.output<typeof discoverSchema>;
export type DnsDiscoveryConfig = z.output<typeof dnsDiscoverySchema>;
export type SentinelDiscoveryConfig = z.output<typeof sentinelDiscoverySchema>;
export type PatroniDiscoveryConfig = z.output<typeof patroniDiscoverySchema>;
export type HaConfig = z.output<typeof haSchema>;
export type BgpConfig = z.output<typeof bgpSchema>;
export type AdminConfig = z.output<typeof adminSchema>;
export type LoggingConfig = z.output<typeof loggingSchema>;

