import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, loadConfigOffThread, MAX_CONFIG_BYTES, parseConfig, resolveWorkers } from '../../src/config/load.ts';
import { parseDuration, parseHostPort, isPrime } from '../../src/config/schema.ts';
import { ConfigInvalidError, ConfigUnreadableError } from '../../src/errors.ts';

const minimal = `
services:
  - name: redis
    listen: 127.0.0.1:6380
    backends:
      - { address: 127.0.0.1:7001 }
`;

function problemsOf(text: string): string[] {
  try {
    parseConfig(text, 'test.yaml');
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigInvalidError);
    expect((err as ConfigInvalidError).code).toBe('FULCRUM_ERR_CONFIG_INVALID');
    return (err as ConfigInvalidError).problems.map((p) => `${p.path}: ${p.message}`);
  }
  throw new Error('expected the config to be refused');
}

describe('config scalars', () => {
  it('parses durations in ms, s, m, h and bare milliseconds', () => {
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration('2s')).toBe(2000);
    expect(parseDuration('1.5m')).toBe(90_000);
    expect(parseDuration('1h')).toBe(3_600_000);
    expect(parseDuration(40)).toBe(40);
    expect(parseDuration(1.5)).toBe(2); // whole milliseconds, as "1.5ms" gives
    expect(parseDuration('2 weeks')).toBeUndefined();
    expect(parseDuration(-1)).toBeUndefined();
  });
  it('parses host:port including bracketed IPv6', () => {
    expect(parseHostPort('127.0.0.1:80')).toEqual({ host: '127.0.0.1', port: 80 });
    expect(parseHostPort('[::1]:6380')).toEqual({ host: '::1', port: 6380 });
    expect(parseHostPort('db.internal:5432')).toEqual({ host: 'db.internal', port: 5432 });
    expect(parseHostPort('127.0.0.1')).toBeUndefined();
    expect(parseHostPort('127.0.0.1:70000')).toBeUndefined();
  });
  it('writes each IPv6 address one way, so two spellings are one backend', () => {
    expect(parseHostPort('[0:0::1]:6380')).toEqual({ host: '::1', port: 6380 });
    expect(parseHostPort('[2001:DB8:0:0:0:0:0:1]:5432')).toEqual({ host: '2001:db8::1', port: 5432 });
    expect(parseHostPort('[::FFFF:192.0.2.1]:5432')).toEqual({ host: '::ffff:192.0.2.1', port: 5432 });
    expect(problemsOf(`
services:
  - name: a
    listen: 127.0.0.1:6000
    backends: [{ address: "[::1]:7001" }, { address: "[0::1]:7001" }]
`)).toEqual(['services[0].backends[1].address: duplicates backends[0].address, got "[::1]:7001"']);
  });
  it('refuses hosts that are no address: a bad IPv4 or IPv6 literal, or no host name', () => {
    // Each used to pass, and failed only when a worker resolved it: a backend marked down for
    // good, or a reload answered "applied, but a listener could not bind".
    for (const bad of ['256.1.1.1:80', '10.0.0.300:80', '127.1:80', '[:::::]:80', '[abc]:80', '[1.2.3.4]:80', 'a/b:80', '../../etc:80', 'a%20b:80', '-db:80', 'дб:80', `${'a'.repeat(64)}.internal:80`]) {
      expect(parseHostPort(bad), bad).toBeUndefined();
    }
    for (const good of ['10.0.0.1:80', '[fe80::1]:80', '[::ffff:10.0.0.1]:80', 'db-1.internal:80', 'db_1:80', 'localhost.:80', 'x:80']) {
      expect(parseHostPort(good), good).toBeDefined();
    }
    expect(problemsOf(minimal.replace('127.0.0.1:7001', '10.0.0.300:7001'))).toEqual([
      'services[0].backends[0].address: must be host:port with a port 1–65535 (IPv6 as [addr]:port): "10.0.0.300" is not an IPv4 address, got "10.0.0.300:7001"',
    ]);
    expect(problemsOf(minimal.replace('127.0.0.1:6380', '"[::g]:6380"'))).toEqual([
      'services[0].listen: must be host:port with a port 1–65535 (IPv6 as [addr]:port): "::g" is not an IPv6 address, got "[::g]:6380"',
    ]);
  });
  it('knows its primes', () => {
    expect([7, 11, 101, 65537].every(isPrime)).toBe(true);
    expect([1, 9, 100, 65535].some(isPrime)).toBe(false);
  });
});

describe('parseConfig', () => {
  it('fills documented defaults', () => {
    const c = parseConfig(minimal);
    const s = c.services[0];
    expect(c.workers).toBe('auto');
    expect(c.shutdown_grace).toBe(30_000);
    expect(s.balance).toBe('leastconn');
    expect(s.table_size).toBe(65537);
    expect(s.hash_balance_factor).toBe(0);
    expect(s.retries).toBe(2);
    expect(s.queue).toEqual({ max: 1000, timeout: 5000, when_down: 0 });
    expect(s.timeouts).toEqual({ connect: 2000, idle: 1_800_000, proxy_header: 5000 });
    expect(s.accept_proxy).toBe(false);
    expect(s.send_proxy).toBe('none');
    expect(s.tcp_keepalive).toBeUndefined();
    expect(s.propagate_reset).toBe(false);
    expect(s.backends[0]).toEqual({ address: { host: '127.0.0.1', port: 7001 }, weight: 1, max_connections: 0, backup: false, state: 'ready' });
    expect(c.logging).toEqual({ level: 'info', connections: true, format: 'json' });
    expect(resolveWorkers(c)).toBeGreaterThanOrEqual(1);
  });

  it('logging.format: json or text, anything else named', () => {
    expect(parseConfig(`${minimal}logging: { format: text }\n`, 'test.yaml').logging).toEqual({ level: 'info', connections: true, format: 'text' });
    expect(problemsOf(`${minimal}logging: { format: pretty }\n`)).toEqual(['logging.format: must be one of json | text, got "pretty"']);
  });

  it('tcp_keepalive and propagate_reset: defaults, and errors naming the field', () => {
    const svc = (extra: string): string => minimal.replace('    backends:', `${extra}\n    backends:`);
    const c = parseConfig(svc('    tcp_keepalive: { idle: 10m }\n    propagate_reset: true'), 'test.yaml');
    expect(c.services[0].tcp_keepalive).toEqual({ idle: 600_000, interval: 30_000, count: 5 });
    expect(c.services[0].propagate_reset).toBe(true);
    expect(problemsOf(svc('    tcp_keepalive: { idle: 500ms, interval: 10h, count: 0, every: 1s }\n    propagate_reset: yes'))).toEqual([
      'services[0].tcp_keepalive.idle: must be a duration 1s–32767s (the kernel counts keepalive in seconds), like 30s or 5m, got "500ms"',
      'services[0].tcp_keepalive.interval: must be a duration 1s–32767s (the kernel counts keepalive in seconds), like 30s or 5m, got "10h"',
      'services[0].tcp_keepalive.count: must be an integer 1–127, got 0',
      'services[0].tcp_keepalive.every: unknown key',
      'services[0].propagate_reset: must be true or false, got "yes"',
    ]);
    // TCP only: refused by name for a UDP service.
    expect(problemsOf(svc('    protocol: udp\n    tcp_keepalive: { idle: 1m }\n    propagate_reset: false'))).toEqual([
      'services[0].tcp_keepalive: means nothing for protocol udp (TCP keepalive probes TCP connections only), got {"idle":60000,"interval":30000,"count":5}',
      'services[0].propagate_reset: means nothing for protocol udp (a datagram flow has no reset to pass on), got false',
    ]);
  });

  it('accepts the full example of the data plane issue', () => {
    const c = parseConfig(`
workers: auto
services:
  - name: redis
    listen: 127.0.0.1:6380
    balance: maglev
    hash_key: source_ip
    table_size: 65537
    hash_balance_factor: 125
    max_connections: 10000
    queue: { max: 1000, timeout: 2s }
    retries: 2
    timeouts: { connect: 1s, idle: 30m }
    backends:
      - { address: 127.0.0.1:7001, weight: 1, max_connections: 500 }
      - { address: 127.0.0.1:7002, weight: 2 }
      - { address: 127.0.0.1:7003, backup: true }
`);
    expect(c.services[0].queue.timeout).toBe(2000);
    expect(c.services[0].timeouts.idle).toBe(1_800_000);
    expect(c.services[0].backends[2].backup).toBe(true);
    expect(c.services[0].hash_balance_factor).toBe(125);
  });

  it('hash_balance_factor: 0 (off) or a percent 100–10000, named in the error', () => {
    for (const bad of ['50', '99', '125.5', '"high"', '10001', '-1']) {
      expect(problemsOf(minimal.replace('listen:', `hash_balance_factor: ${bad}\n    listen:`))).toEqual([
        `services[0].hash_balance_factor: must be 0 (off) or an integer percent 100–10000, got ${bad === '"high"' ? '"high"' : bad}`,
      ]);
    }
    for (const good of [0, 100, 125, 10000]) {
      expect(parseConfig(minimal.replace('listen:', `hash_balance_factor: ${good}\n    listen:`)).services[0].hash_balance_factor).toBe(good);
    }
  });

  it('queue.when_down: off by default, a duration up to 1h, its errors naming the field', () => {
    expect(parseConfig(minimal).services[0].queue).toEqual({ max: 1000, timeout: 5000, when_down: 0 });
    const withQueue = (q: string) => minimal.replace('    backends:', `    queue: ${q}\n    backends:`);
    expect(parseConfig(withQueue('{ when_down: 5s }')).services[0].queue).toEqual({ max: 1000, timeout: 5000, when_down: 5000 });
    expect(problemsOf(withQueue('{ when_down: soon }'))).toEqual([
      'services[0].queue.when_down: must be a duration like 500ms, 2s, 30m or 1h, got "soon"',
    ]);
    expect(problemsOf(withQueue('{ when_down: 2h }'))).toEqual([
      'services[0].queue.when_down: must be a duration like 500ms, 2s, 30m or 1h, got "2h"',
    ]);
  });

  it('names the path and the value of every problem at once', () => {
    const problems = problemsOf(`
workers: 0
bogus: 1
services:
  - name: "a b"
    listen: 127.0.0.1
    table_size: 100
    timeouts: { connect: 5x }
    backends:
      - { address: 127.0.0.1:7001, weight: -1 }
      - { address: 127.0.0.1:7002, weight: "x", extra: 1 }
`);
    expect(problems).toEqual(expect.arrayContaining([
      'workers: must be auto or an integer 1–16, got 0',
      'bogus: unknown key',
      'services[0].name: must be 1–64 characters of letters, digits, _ . -, got "a b"',
      'services[0].listen: must be host:port with a port 1–65535 (IPv6 as [addr]:port), got "127.0.0.1"',
      'services[0].table_size: must be a prime 7–65537, got 100',
      'services[0].timeouts.connect: must be a duration like 500ms, 2s, 30m or 1h (at least 1ms), got "5x"',
      'services[0].backends[0].weight: must be an integer 0–256, got -1',
      'services[0].backends[1].weight: must be an integer 0–256, got "x"',
      'services[0].backends[1].extra: unknown key',
    ]));
    expect(problems).toHaveLength(9);
  });

  it('quotes a long value in part: a 100 KB value does not make a 100 KB message', () => {
    const [problem] = problemsOf(minimal.replace('name: redis', `name: ${'x'.repeat(100_000)}`));
    expect(problem).toMatch(/^services\[0\]\.name: must be 1–64 characters of letters, digits, _ \. -, got "x{70,}\.\.\.$/);
    expect(problem.length).toBeLessThan(200);
  });

  it('cuts the YAML parser’s own messages short, and lists at most 20 of them (found by fuzzing)', () => {
    // What the fuzzer found: a config whose first key lost its name and a service name repeated
    // in a run of lines, so the rest is one long scalar the yaml library quotes whole in each message.
    const full = readFileSync(new URL('../fuzz/corpus/config/full.yaml', import.meta.url), 'utf8');
    const text = full.replace('workers: 2', ' 2').replace('  - name: cache\n', '  - name: cache\n' + ' cache\n cache\n cach'.repeat(300) + 'e\n');
    const err = (() => {
      try {
        parseConfig(text);
      } catch (e) {
        return e as ConfigInvalidError;
      }
      throw new Error('parsed');
    })();
    expect(err).toBeInstanceOf(ConfigInvalidError);
    expect(err.problems.length).toBeLessThanOrEqual(21);
    for (const p of err.problems) expect(p.message.length).toBeLessThanOrEqual(206);
    expect(err.problems[0].message).toMatch(/^YAML: /);
  });

  it('says what is missing', () => {
    expect(problemsOf('services:\n  - name: x\n    backends: []\n')).toEqual(expect.arrayContaining([
      expect.stringMatching(/^services\[0\]\.listen: is required/),
      expect.stringMatching(/^services\[0\]\.backends: must list at least one backend/),
    ]));
    expect(problemsOf('{}')).toEqual([expect.stringMatching(/^services: is required/)]);
  });

  it('refuses duplicates and health blocks that do not fit their type', () => {
    const problems = problemsOf(`
services:
  - name: a
    listen: 127.0.0.1:6000
    health: { type: tcp, role: primary, interval: 1s, timeout: 2s }
    backends: [{ address: 127.0.0.1:7001 }, { address: 127.0.0.1:7001 }]
  - name: a
    listen: 127.0.0.1:6000
    health: { type: send_expect }
    backends: [{ address: 127.0.0.1:7001 }]
`);
    expect(problems).toEqual(expect.arrayContaining([
      'services[0].backends[1].address: duplicates backends[0].address, got "127.0.0.1:7001"',
      'services[1].name: duplicates services[0].name, got "a"',
      'services[1].listen: duplicates services[0].listen, got "127.0.0.1:6000"',
      'services[0].health.role: needs health.type redis, postgres or mysql, got "primary" with type "tcp"',
      'services[0].health.timeout: must not exceed health.interval (1000ms), got 2000ms',
      'services[1].health.send_expect: is required when health.type is send_expect',
    ]));
  });

  it('max_lag: a duration, on a database check that is not primary-only; lag_action remove or close', () => {
    const withHealth = (h: string) => minimal.replace('    backends:', `    health: ${h}\n    backends:`);
    expect(problemsOf(withHealth('{ type: tcp, max_lag: 10s }'))).toEqual(['services[0].health.max_lag: needs health.type redis, postgres or mysql, got 10000ms with type "tcp"']);
    expect(problemsOf(withHealth('{ type: postgres, role: primary, max_lag: 10s }'))).toEqual(['services[0].health.max_lag: needs health.role replica or any (a primary has no lag), got 10000ms with role "primary"']);
    expect(problemsOf(withHealth('{ type: mysql, role: replica, max_lag: soon }'))).toEqual([expect.stringMatching(/^services\[0\]\.health\.max_lag: must be a duration like 500ms, 2s, 30m or 1h, got "soon"$/)]);
    expect(problemsOf(withHealth('{ type: redis, role: replica, max_lag: 1s, lag_action: drop }'))).toEqual(['services[0].health.lag_action: must be one of remove | close, got "drop"']);
    const ok = parseConfig(withHealth('{ type: postgres, role: replica, max_lag: 10s, lag_action: close }'));
    expect(ok.services[0].health).toMatchObject({ max_lag: 10_000, lag_action: 'close' });
    expect(parseConfig(withHealth('{ type: redis, role: any, max_lag: 500ms }')).services[0].health).toMatchObject({ max_lag: 500, lag_action: 'remove' });
  });

  it('discover.dns: one source, a DNS name, a port for A/AAAA only; backends may then be empty', () => {
    const svc = (d: string, backends = '[]') => `services:\n  - name: x\n    listen: 127.0.0.1:6000\n    discover: ${d}\n    backends: ${backends}\n`;
    const ok = parseConfig(svc('{ dns: { name: _pg._tcp.db.internal, resolvers: [10.0.0.53:53] } }'));
    expect(ok.services[0].discover?.dns).toEqual({ name: '_pg._tcp.db.internal', type: 'SRV', resolvers: [{ host: '10.0.0.53', port: 53 }], interval: 5000, hold: 60_000, timeout: 2000 });
    expect(ok.services[0].backends).toEqual([]);
    expect(problemsOf(svc('{ dns: { name: db.internal, type: A } }'))).toEqual(['services[0].discover.dns.port: is required with type A (SRV records carry their port)']);
    expect(problemsOf(svc('{ dns: { name: _pg._tcp.db, port: 5432 } }'))).toEqual(['services[0].discover.dns.port: is for type A or AAAA (SRV records carry their port), got 5432']);
    expect(problemsOf(svc('{ }'))).toEqual(['services[0].discover: must name exactly one source (dns, redis_sentinel or patroni), got none']);
    expect(problemsOf(svc('{ dns: { name: "bad name!", type: MX, resolvers: [nowhere], interval: 1ms } }'))).toEqual(expect.arrayContaining([
      expect.stringMatching(/^services\[0\]\.discover\.dns\.name: must be a DNS name .*, got "bad name!"$/),
      'services[0].discover.dns.type: must be one of SRV | A | AAAA, got "MX"',
      expect.stringMatching(/^services\[0\]\.discover\.dns\.resolvers\[0\]: must be host:port/),
      expect.stringMatching(/^services\[0\]\.discover\.dns\.interval: must be a duration .*\(at least 100ms\), got "1ms"$/),
    ]));
    expect(problemsOf(svc('{ consul: {} }'))).toEqual(['services[0].discover.consul: unknown key']);
  });

  it('an unknown key names the nearest key the schema knows at that place, when one is close', () => {
    const svc = (extra: string, backend = '') => `services:\n  - name: r\n    listen: 127.0.0.1:6380\n${extra}    backends:\n      - { address: 127.0.0.1:7001${backend} }\n`;
    expect(problemsOf('worker: 2\n' + svc(''))).toEqual(['worker: unknown key; did you mean "workers"?']);
    expect(problemsOf(svc('', ', max_conections: 5'))).toEqual(['services[0].backends[0].max_conections: unknown key; did you mean "max_connections"?']);
    expect(problemsOf(svc('    maxconnections: 5\n'))).toEqual(['services[0].maxconnections: unknown key; did you mean "max_connections"?']);
    expect(problemsOf(svc('    health: { type: tcp, intreval: 1s }\n'))).toEqual(['services[0].health.intreval: unknown key; did you mean "interval"?']);
    expect(problemsOf(svc('    timeouts: { Idle: 5m }\n'))).toEqual(['services[0].timeouts.Idle: unknown key; did you mean "idle"?']);
    // Known where it stands, not elsewhere: `weight` belongs to a backend, not to a service.
    expect(problemsOf(svc('    wieght: 2\n'))).toEqual(['services[0].wieght: unknown key']);
    expect(problemsOf('colour: blue\n' + svc(''))).toEqual(['colour: unknown key']);
  });

  it('a YAML syntax error is one message at its line and column; an unclosed quote or bracket where it was opened', () => {
    expect(problemsOf('services:\n\t- name: a\n')).toEqual([': YAML: line 2, column 1: Tabs are not allowed as indentation']);
    expect(problemsOf('services:\n  - name: "a\n    listen: x\n')).toEqual([
      ': YAML: line 2, column 11: the " opened here is not closed (found at line 4, column 1: Missing closing "quote)',
    ]);
    expect(problemsOf('services:\n  - name: a\n    listen: {a: 1\n    x: 2\nworkers: 1\n')).toEqual([
      ': YAML: line 3, column 13: the { opened here is not closed (found at line 4, column 5: Flow map in block collection must be sufficiently indented and end with a })',
    ]);
    // Two parser errors at one place are one mistake: one message.
    expect(problemsOf('workers: 1\n  services: []\n')).toEqual([': YAML: line 1, column 10: Nested mappings are not allowed in compact mappings']);
    expect(problemsOf('workers: 2\nservices:\n  - name: a\n    listen: x: y\n')).toEqual([
      ': YAML: line 4, column 13: Nested mappings are not allowed in compact mappings',
    ]);
  });

  it('reports YAML syntax errors and a non-mapping top level', () => {
    expect(problemsOf('services: [\n')[0]).toMatch(/^: YAML: /);
    expect(problemsOf('- 1\n- 2\n')[0]).toMatch(/the top level must be a mapping/);
    expect(problemsOf('a: 1\na: 2\n')[0]).toMatch(/YAML/);
  });

  it('names a repeated key and its line, and finds repeats among 40,000 keys in linear time', () => {
    expect(problemsOf(minimal + 'workers: 1\nworkers: 2\n')).toEqual([': YAML: duplicate key "workers" at line 8']);
    // 40,000 distinct keys then one repeat: yaml's own check compared each key with every other (15 s).
    let text = 'x:\n';
    for (let i = 0; i < 40_000; i++) text += `  k${i}: ${i}\n`;
    text += '  k7: again\n';
    const started = performance.now();
    expect(problemsOf(text + minimal)).toEqual([': YAML: duplicate key "k7" at line 40002']);
    expect(performance.now() - started).toBeLessThan(5000);
  });

  it('refuses an alias bomb ("billion laughs") as an invalid config, at once', () => {
    // Each level repeats the one before nine times: 9^9 strings if expanded.
    let text = 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n';
    for (let i = 1; i <= 9; i++) text += `a${i}: &a${i} [${Array(9).fill(`*a${i - 1}`).join(',')}]\n`;
    const started = Date.now();
    expect(problemsOf(text + minimal)).toEqual([expect.stringMatching(/^: YAML: .*alias/i)]);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('refuses health settings a probe could not use, instead of marking every backend down', () => {
    const se = (send: string, expect: string) => minimal.replace('    backends:', `    health: { type: send_expect, send_expect: { send: ${JSON.stringify(send)}, expect: ${JSON.stringify(expect)} } }\n    backends:`);
    const http = (o: string) => minimal.replace('    backends:', `    health: { type: http, http: ${o} }\n    backends:`);
    expect(problemsOf(se('PING', 'regex:(+'))).toEqual([expect.stringMatching(/^services\[0\]\.health\.send_expect\.expect: must be a regular expression after regex: \(Invalid regular expression: .*\), got "regex:\(\+"$/)]);
    expect(problemsOf(se('PING', 'hex:2b50'.replace('0', 'z')))).toEqual(['services[0].health.send_expect.expect: must be pairs of hex digits after hex:, got "hex:2b5z"']);
    expect(problemsOf(se('hex:0d0', '+PONG'))).toEqual(['services[0].health.send_expect.send: must be pairs of hex digits after hex:, got "hex:0d0"']);
    // A request line or header broken by a space or a line break (a header injected into the probe).
    expect(problemsOf(http('{ path: "/health check" }'))).toEqual(['services[0].health.http.path: must be a path starting with / without spaces or control characters, got "/health check"']);
    expect(problemsOf(http('{ host: "a\\r\\nX-Injected: 1" }'))).toEqual(['services[0].health.http.host: must be a host name without spaces or control characters, got "a\\r\\nX-Injected: 1"']);
    // What works still passes.
    expect(parseConfig(se('hex:0d 0a', 'regex:^\\+PONG')).services[0].health?.send_expect?.expect).toBe('regex:^\\+PONG');
    expect(parseConfig(http('{ path: "/health?x=1", host: "api.internal:8080" }')).services[0].health?.http?.path).toBe('/health?x=1');
  });

  it('validates the ha section', () => {
    const problems = problemsOf(`
services:
  - { name: a, listen: 127.0.0.1:6000, backends: [{ address: 127.0.0.1:7001 }] }
ha:
  vip: 10.0.0.300/24
  interface: eth0
  bind: 10.0.0.1:7946
  peer: 10.0.0.1:7946
  priority: 255
  secret_file: ./ha.secret
`);
    expect(problems).toEqual(expect.arrayContaining([
      'ha.vip[0]: must be an IPv4 address with a prefix, like 10.0.0.100/24, got "10.0.0.300/24"',
      'ha.priority: must be an integer 1–254, got 255',
    ]));
    expect(problemsOf(`
services:
  - { name: a, listen: 127.0.0.1:6000, backends: [{ address: 127.0.0.1:7001 }] }
ha:
  vip: [10.0.0.100/24, 10.0.0.101/24, 10.0.0.100/32]
  interface: eth0
  bind: 10.0.0.1:7946
  peer: 10.0.0.2:7946
  priority: 100
  secret_file: ./ha.secret
`)).toEqual(['ha.vip[2]: duplicates ha.vip[0] (10.0.0.100), got "10.0.0.100/32"']);
  });
});

describe('loadConfig', () => {
  it('reads a file, and says so when it cannot', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fulcrum-config-'));
    const file = join(dir, 'ok.yaml');
    writeFileSync(file, minimal);
    expect(loadConfig(file).services[0].name).toBe('redis');
    expect(() => loadConfig(join(dir, 'missing.yaml'))).toThrow(expect.objectContaining({ code: 'FULCRUM_ERR_CONFIG_UNREADABLE' }));
  });

  it('refuses a file larger than 4 MiB unread', () => {
    const file = join(mkdtempSync(join(tmpdir(), 'fulcrum-config-')), 'huge.yaml');
    writeFileSync(file, minimal + '#'.repeat(MAX_CONFIG_BYTES));
    expect(() => loadConfig(file)).toThrow(expect.objectContaining({
      code: 'FULCRUM_ERR_CONFIG_UNREADABLE',
      message: expect.stringContaining(`a config file may have at most ${MAX_CONFIG_BYTES}`),
    }));
  });
});

describe('loadConfig: only a regular file', () => {
  it('refuses a FIFO at once instead of waiting for a writer, and a directory', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fulcrum-config-'));
    const fifo = join(dir, 'fifo.yaml');
    execFileSync('mkfifo', [fifo]);
    expect(() => loadConfig(fifo)).toThrow(expect.objectContaining({
      code: 'FULCRUM_ERR_CONFIG_UNREADABLE',
      message: `${fifo}: is a FIFO; a config must be a regular file`,
    }));
    const sub = join(dir, 'sub.yaml');
    mkdirSync(sub);
    expect(() => loadConfig(sub)).toThrow(expect.objectContaining({ message: `${sub}: is a directory; a config must be a regular file` }));
  });

  it('a reload of a FIFO is refused, and the next reload is not held up behind it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fulcrum-config-'));
    const fifo = join(dir, 'fifo.yaml');
    execFileSync('mkfifo', [fifo]);
    await expect(loadConfigOffThread(fifo)).rejects.toThrow(/is a FIFO/);
    const ok = join(dir, 'ok.yaml');
    writeFileSync(ok, minimal);
    expect((await loadConfigOffThread(ok)).services[0].name).toBe('redis');
  });
});

describe('loadConfigOffThread (reloads)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'fulcrum-config-'));

  it('ends a loading thread that does not answer within its bound, and refuses the reload', async () => {
    let text = 'workers: 1\nservices:\n';
    for (let s = 0; s < 64; s++) {
      text += `  - name: s${s}\n    listen: 127.0.0.1:${10000 + s}\n    backends:\n`;
      for (let b = 0; b < 64; b++) text += `      - { address: 10.0.${s}.${b + 1}:5432 }\n`;
    }
    const file = join(dir, 'slow.yaml');
    writeFileSync(file, text);
    const started = performance.now();
    const err = await loadConfigOffThread(file, 20).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigUnreadableError);
    expect((err as Error).message).toBe(`${file}: cannot be loaded: no result within 20ms (the loading thread was ended)`);
    expect(performance.now() - started).toBeLessThan(2000);
  });

  it('gives the config, or the same errors loadConfig throws', async () => {
    const ok = join(dir, 'ok.yaml');
    writeFileSync(ok, minimal);
    expect(await loadConfigOffThread(ok)).toEqual(loadConfig(ok));
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'workers: 0\n' + minimal);
    const invalid = await loadConfigOffThread(bad).catch((e: unknown) => e);
    expect(invalid).toBeInstanceOf(ConfigInvalidError);
    expect((invalid as ConfigInvalidError).problems).toEqual([{ path: 'workers', message: 'must be auto or an integer 1–16, got 0' }]);
    const missing = await loadConfigOffThread(join(dir, 'missing.yaml')).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(ConfigUnreadableError);
    expect((missing as Error).message).toMatch(/missing\.yaml: cannot read: ENOENT/);
  });

  it('leaves the main thread free while a large file is parsed (the heartbeats are sent from it)', async () => {
    // 64 services × 64 backends, the most the layout holds: hundreds of milliseconds of parsing.
    let text = 'workers: 1\nservices:\n';
    for (let s = 0; s < 64; s++) {
      text += `  - name: s${s}\n    listen: 127.0.0.1:${10000 + s}\n    backends:\n`;
      for (let b = 0; b < 64; b++) text += `      - { address: 10.0.${s}.${b + 1}:5432, weight: 10 }\n`;
    }
    const file = join(dir, 'large.yaml');
    writeFileSync(file, text);
    let t = performance.now();
    const here = parseConfig(text, file);
    const onThisThread = performance.now() - t;
    // The longest the event loop went without a turn while the other thread parsed.
    let longest = 0;
    t = performance.now();
    const tick = setInterval(() => {
      const now = performance.now();
      longest = Math.max(longest, now - t);
      t = now;
    }, 2);
    try {
      expect(await loadConfigOffThread(file)).toEqual(here);
    } finally {
      clearInterval(tick);
    }
    expect(onThisThread).toBeGreaterThan(100);
    expect(longest).toBeLessThan(onThisThread / 2);
  });
});

describe('probe TLS and PostgreSQL auth settings', () => {
  const withHealth = (health: string) => minimal.replace('    backends:', `    health: ${health}\n    backends:`);
  it('defaults to no TLS and SCRAM only, and names the field of a bad value', () => {
    const c = parseConfig(withHealth('{ type: postgres, postgres: { user: monitor } }'));
    expect(c.services[0].health?.postgres).toEqual({ user: 'monitor', tls: 'disable', auth: 'scram' });
    expect(problemsOf(withHealth('{ type: postgres, postgres: { auth: plain, tls: yes } }')).sort()).toEqual([
      'services[0].health.postgres.auth: must be one of scram | md5 | password, got "plain"',
      'services[0].health.postgres.tls: must be one of disable | require | verify-full, got "yes"',
    ]);
    expect(problemsOf(withHealth('{ type: redis, redis: { tls: require, ca_file: ./ca.pem } }'))).toEqual([
      'services[0].health.redis.ca_file: needs health.redis.tls: verify-full, got tls "require"',
    ]);
    expect(problemsOf(withHealth('{ type: mysql, mysql: { auth: md5 } }'))).toEqual(['services[0].health.mysql.auth: unknown key']);
  });

  it('admin.allowed_hosts: host names, each checked', () => {
    expect(parseConfig(minimal + 'admin: { allowed_hosts: [fulcrum.internal, "10.0.0.5"] }\n').admin?.allowed_hosts).toEqual(['fulcrum.internal', '10.0.0.5']);
    expect(parseConfig(minimal + 'admin: {}\n').admin?.allowed_hosts).toEqual([]);
    expect(problemsOf(minimal + 'admin: { allowed_hosts: [ok.example, "bad host", 10.0.0.300] }\n')).toEqual([
      'admin.allowed_hosts[1]: must be a host name without spaces or control characters, got "bad host"',
      'admin.allowed_hosts[2]: must be a host name without spaces or control characters, got "10.0.0.300"',
    ]);
  });
});

describe('protocol udp', () => {
  const udp = (extra: string, listen = '127.0.0.1:27960') => `
services:
  - name: arena
    protocol: udp
    listen: ${listen}
${extra}    backends:
      - { address: 127.0.0.1:27961 }
`;
  it('takes the issue\'s example: udp block, hash_key, send_proxy v2, a udp health check; idle defaults to 60 s', () => {
    const c = parseConfig(udp(`    balance: maglev
    hash_key: source_ip_port
    max_connections: 200000
    udp: { responses: 1 }
    send_proxy: v2
    health: { type: udp, send: "hex:ffffffff676574737461747573", expect: "regex:^\\\\xff\\\\xff\\\\xff\\\\xffstatusResponse", interval: 2s, timeout: 1s }
`));
    const s = c.services[0];
    expect(s.protocol).toBe('udp');
    expect(s.timeouts.idle).toBe(60_000);
    expect(s.udp).toEqual({ responses: 1, max_datagram: 65_507 });
    expect(s.health).toMatchObject({ type: 'udp', send: 'hex:ffffffff676574737461747573', expect: 'regex:^\\xff\\xff\\xff\\xffstatusResponse' });
    expect(parseConfig(minimal).services[0].timeouts.idle).toBe(1_800_000);
    expect(parseConfig(udp('    timeouts: { idle: 5s }\n')).services[0].timeouts.idle).toBe(5000);
  });
  it('refuses, by name, the keys that mean nothing for a UDP service', () => {
    expect(problemsOf(udp(`    queue: { max: 10 }
    accept_proxy: true
    timeouts: { connect: 1s, proxy_header: 2s }
    send_proxy: v1
    health: { type: send_expect, send_expect: { expect: x } }
`))).toEqual([
      'services[0].queue: means nothing for protocol udp (a datagram that finds the service or its backends full is dropped and counted, never queued), got {"max":10,"timeout":5000,"when_down":0}',
      'services[0].accept_proxy: means nothing for protocol udp (a PROXY header is read from TCP clients only), got true',
      'services[0].timeouts.connect: means nothing for protocol udp (a flow\'s upstream socket is ready at once), got 1000',
      'services[0].timeouts.proxy_header: means nothing for protocol udp (a PROXY header is read from TCP clients only), got 2000',
      'services[0].send_proxy: must be none or v2 for protocol udp (v1 is a text line for TCP), got "v1"',
      'services[0].health.type: must be udp for protocol udp (a send_expect probe speaks TCP), got "send_expect"',
    ]);
  });
  it('refuses udp settings on a TCP service, and a udp check without send and expect', () => {
    expect(problemsOf(minimal.replace('    backends:', '    udp: { responses: 1 }\n    health: { type: udp, send: x, expect: y }\n    backends:'))).toEqual([
      'services[0].udp: needs protocol: udp, got {"responses":1,"max_datagram":65507}',
      'services[0].health.type: needs protocol: udp (the service is tcp), got "udp"',
    ]);
    expect(problemsOf(udp('    health: { type: udp }\n'))).toEqual([
      'services[0].health.send: is required when health.type is udp (the datagram to send)',
      'services[0].health.expect: is required when health.type is udp (what the reply must hold)',
    ]);
    expect(problemsOf(minimal.replace('    backends:', '    health: { type: tcp, expect: y }\n    backends:'))).toEqual([
      'services[0].health.expect: needs health.type udp (send_expect takes send_expect.expect), got "y"',
    ]);
    expect(problemsOf(udp('    udp: { max_datagram: 70000 }\n'))[0]).toMatch(/^services\[0\]\.udp\.max_datagram: must be an integer 1–65507, got 70000/);
  });
  it('lets a UDP and a TCP service share a port number, not two UDP services', () => {
    const both = `services:
  - { name: t, listen: 127.0.0.1:27960, backends: [{ address: 127.0.0.1:1 }] }
  - { name: u, protocol: udp, listen: 127.0.0.1:27960, backends: [{ address: 127.0.0.1:1 }] }
`;
    expect(parseConfig(both).services.map((s) => s.protocol)).toEqual(['tcp', 'udp']);
    expect(problemsOf(both + '  - { name: v, protocol: udp, listen: 127.0.0.1:27960, backends: [{ address: 127.0.0.1:1 }] }\n')).toEqual([
      'services[2].listen: duplicates services[1].listen, got "127.0.0.1:27960"',
    ]);
  });
});
