/**
 * The monitoring kit in ops/: the Prometheus alert rules pass `promtool check rules` and their
 * unit tests (`promtool test rules`, one case at least per alert that fires it), the Grafana
 * dashboard is well-formed and its queries are valid PromQL (promtool parses them as recording
 * rules), and every metric name the rules and the dashboard use is one fulcrum exports: read from
 * /metrics of a running fulcrum with a TCP service under health checks and a UDP service with
 * traffic, and — for the families that appear only with ha, bgp or a database role check — from
 * the definitions in its metrics registry. Needs promtool (Debian package prometheus).
 * Addresses: 127.5.41.x.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { connectClient, readLine, waitFor } from '../helpers/net.ts';
import { startUdpBackend, UdpClient, type UdpBackend } from '../helpers/udp.ts';
import { api, startStack, type Stack } from '../admin/stack.ts';

const HOST = '127.5.41.1';
const OPS = new URL('../../ops/', import.meta.url).pathname;
const RULES = join(OPS, 'prometheus', 'fulcrum.rules.yml');
const RULE_TESTS = join(OPS, 'prometheus', 'fulcrum.rules.test.yml');
const DASHBOARD = join(OPS, 'grafana', 'fulcrum.json');

/** Series Prometheus itself makes (not fulcrum's): the rules may use these too. */
const PROMETHEUS_OWN = new Set(['up']);
/** Families that exist only with an ha section, a bgp section or a database role check: from the registry's definitions. */
const NEEDS_HA_BGP_OR_ROLES = /^fulcrum_(failover_|bgp_|backend_role|backend_replication_lag)/;

let stack: Stack;
let game: UdpBackend;
let tmp: string;
/** Sample names of a scrape of the running fulcrum. */
let scraped: Set<string>;
/** Sample names the registry defines (histograms with _bucket, _sum and _count), whatever the config. */
let defined: Set<string>;

const rules = parseYaml(readFileSync(RULES, 'utf8')) as { groups: { name: string; rules: { alert?: string; record?: string; expr: string }[] }[] };
const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8'));

const promtool = (...args: string[]): string => execFileSync('promtool', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'fulcrum-ops-'));
  stack = await startStack({ host: HOST, backends: 2, serviceExtra: '    health: { type: tcp, interval: 200ms, timeout: 100ms, rise: 1, fall: 1 }\n' });
  game = await startUdpBackend('g', HOST);
  await stack.writeConfig(readFileSync(stack.configFile, 'utf8') + `  - name: arena
    protocol: udp
    listen: ${HOST}:${stack.servicePort}
    backends: [{ address: ${game.address} }]
`);
  const r = await api(stack.admin, 'POST', '/api/reload');
  expect(r.status, JSON.stringify(r.body)).toBe(200);
  // Traffic both ways on both services, and probe results, so every family has its samples.
  const c = await connectClient(stack.servicePort, HOST);
  expect(await readLine(c)).toMatch(/^b[01]$/);
  c.destroy();
  const u = await UdpClient.open(HOST);
  expect(await u.ask('ping', stack.servicePort, HOST)).toBe('g|ping');
  await u.close();
  const text = async (): Promise<string> => (await api(stack.admin, 'GET', '/metrics', undefined, null)).body as string;
  await waitFor(async () => /^fulcrum_health_probe_duration_seconds_bucket\{/m.test(await text()), 5000, 'probe results in /metrics');
  scraped = new Set((await text()).split('\n').filter((l) => l && !l.startsWith('#')).map((l) => /^[a-zA-Z_:][\w:]*/.exec(l)![0]));
  defined = new Set((await stack.ops.metrics.registry.getMetricsAsJSON()).flatMap((m) =>
    String(m.type) === 'histogram' ? ['_bucket', '_sum', '_count'].map((s) => m.name + s) : String(m.type) === 'summary' ? [m.name, m.name + '_sum', m.name + '_count'] : [m.name]));
});

afterAll(async () => {
  await stack?.close();
  await game?.close();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

// ── PromQL, just enough to find the metric names in an expression ─────────────────────────────

const KEYWORDS = new Set(['and', 'or', 'unless', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'offset', 'inf', 'nan']);

/** Grafana's variables and macros replaced by values PromQL accepts (used by the names and promtool). */
function grafanaToPromql(expr: string): string {
  return expr.replace(/\$__rate_interval|\$__interval|\$__range/g, '5m').replace(/\$\{?(\w+)\}?/g, '.*');
}

/** The metric names an expression selects: identifiers that are not functions, keywords, label names or inside strings. */
function metricNames(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""') // strings (label values)
    .replace(/\{[^}]*\}/g, ' ') // label matchers
    .replace(/\[[^\]]*\]/g, ' ') // ranges and subqueries
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' '); // label lists
  const names: string[] = [];
  for (const m of bare.matchAll(/\d[\w.]*|[a-zA-Z_:][\w:]*/g)) {
    const token = m[0];
    if (/^\d/.test(token) || KEYWORDS.has(token.toLowerCase())) continue;
    if (/^\s*\(/.test(bare.slice(m.index! + token.length))) continue; // a function
    names.push(token);
  }
  return names;
}

/** Every PromQL expression of the dashboard: panel targets, annotations, and the variables' selectors. */
function dashboardExprs(): { where: string; expr: string }[] {
  const out: { where: string; expr: string }[] = [];
  for (const p of dashboard.panels) for (const t of p.targets ?? []) out.push({ where: `panel "${p.title}" ${t.refId}`, expr: t.expr });
  for (const a of dashboard.annotations.list) if (a.expr) out.push({ where: `annotation "${a.name}"`, expr: a.expr });
  for (const v of dashboard.templating.list) {
    if (v.type !== 'query') continue;
    const m = /^label_values\((.*),\s*(\w+)\)$/.exec(v.query.query);
    if (!m) throw new Error(`variable ${v.name}: expected label_values(selector, label), got ${v.query.query}`);
    out.push({ where: `variable ${v.name}`, expr: m[1] });
  }
  return out;
}

describe('metricNames (the checker itself)', () => {
  it('finds the selectors and nothing else', () => {
    expect(metricNames('sum by (service, le) (rate(fulcrum_a_total{job=~"x_y", state="down"}[5m])) / on (job) group_left (z) fulcrum_b offset 1m > 0.5')).toEqual(['fulcrum_a_total', 'fulcrum_b']);
    expect(metricNames('histogram_quantile(0.95, sum by (le) (rate(x_bucket[$__rate_interval])))')).toEqual(['x_bucket']);
    expect(metricNames('absent(up{job="fulcrum"}) or vector(1)')).toEqual(['up']);
    expect(metricNames('max_over_time(a[1h]) < bool 3 unless b')).toEqual(['a', 'b']);
  });
});

describe('Prometheus alert rules (ops/prometheus)', () => {
  it('pass promtool check rules', () => {
    expect(promtool('check', 'rules', RULES)).toMatch(/SUCCESS: \d+ rules found/);
  });

  it('pass their unit tests, and every alert has a case that fires it', () => {
    expect(promtool('test', 'rules', RULE_TESTS)).toContain('SUCCESS');
    const cases = (parseYaml(readFileSync(RULE_TESTS, 'utf8')) as { tests: { alert_rule_test?: { alertname: string; exp_alerts: unknown[] }[] }[] }).tests
      .flatMap((t) => t.alert_rule_test ?? []);
    const alerts = rules.groups.flatMap((g) => g.rules).map((r) => r.alert).filter((a): a is string => a !== undefined);
    expect(alerts).toEqual(expect.arrayContaining(['FulcrumBackendDown', 'FulcrumServiceNoBackendUp', 'FulcrumFailover', 'FulcrumQueueGrowing', 'FulcrumBgpSessionDown', 'FulcrumDown']));
    for (const alert of alerts) expect(cases.some((c) => c.alertname === alert && c.exp_alerts.length > 0), `a unit test that fires ${alert}`).toBe(true);
  });

  it('use only metric names fulcrum exports', () => {
    for (const rule of rules.groups.flatMap((g) => g.rules)) {
      for (const name of metricNames(rule.expr)) {
        if (PROMETHEUS_OWN.has(name)) continue;
        expect(scraped.has(name) || (NEEDS_HA_BGP_OR_ROLES.test(name) && defined.has(name)), `${rule.alert ?? rule.record}: ${name}`).toBe(true);
      }
    }
  });
});

describe('Grafana dashboard (ops/grafana/fulcrum.json)', () => {
  it('is well-formed: unique ids, panels inside 24 columns without overlap, every query on the datasource variable', () => {
    const ids = dashboard.panels.map((p: { id: number }) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    const cells = new Set<string>();
    for (const p of dashboard.panels) {
      const { x, y, w, h } = p.gridPos;
      expect(x + w, p.title).toBeLessThanOrEqual(24);
      for (let i = x; i < x + w; i++) for (let j = y; j < y + h; j++) {
        expect(cells.has(`${i},${j}`), `${p.title} overlaps another panel at ${i},${j}`).toBe(false);
        cells.add(`${i},${j}`);
      }
      if (p.type === 'row') continue;
      expect(p.targets.length, p.title).toBeGreaterThan(0);
      expect(p.datasource).toEqual({ type: 'prometheus', uid: '${datasource}' });
      for (const t of p.targets) expect(t.datasource.uid).toBe('${datasource}');
    }
    const variables = new Set(dashboard.templating.list.map((v: { name: string }) => v.name));
    for (const { where, expr } of dashboardExprs()) {
      for (const m of expr.matchAll(/\$(?!__)\{?(\w+)/g)) expect(variables.has(m[1]), `${where} uses $${m[1]}`).toBe(true);
    }
  });

  it('has valid PromQL everywhere (promtool parses each query as a recording rule)', () => {
    const file = join(tmp, 'dashboard.rules.yml');
    const exprs = dashboardExprs();
    writeFileSync(file, stringifyYaml({ groups: [{ name: 'dashboard', rules: exprs.map((e, i) => ({ record: `dashboard:query_${i}`, expr: grafanaToPromql(e.expr) })) }] }));
    expect(promtool('check', 'rules', file)).toContain(`SUCCESS: ${exprs.length} rules found`);
  });

  it('shows what an operator looks for, with metric names fulcrum exports', () => {
    const used = new Set(dashboardExprs().flatMap((e) => metricNames(grafanaToPromql(e.expr))));
    // connections per service, backend states, bytes, queue, failover role, BGP sessions, UDP flows and
    // datagrams, health check failures, build info
    for (const name of ['fulcrum_service_connections_total', 'fulcrum_service_active_connections', 'fulcrum_backend_state', 'fulcrum_service_bytes_in_total',
      'fulcrum_service_queue_length', 'fulcrum_failover_role', 'fulcrum_bgp_sessions_up', 'fulcrum_service_datagrams_in_total',
      'fulcrum_health_probes_total', 'fulcrum_build_info']) {
      expect(used.has(name), name).toBe(true);
    }
    for (const { where, expr } of dashboardExprs()) {
      for (const name of metricNames(grafanaToPromql(expr))) {
        if (PROMETHEUS_OWN.has(name)) continue;
        expect(scraped.has(name) || (NEEDS_HA_BGP_OR_ROLES.test(name) && defined.has(name)), `${where}: ${name}`).toBe(true);
      }
    }
    // And the scrape holds what a plain config must show: the checker is not reading an empty set.
    for (const name of ['fulcrum_build_info', 'fulcrum_service_datagrams_in_total', 'fulcrum_health_probe_duration_seconds_bucket', 'fulcrum_process_open_fds']) expect(scraped.has(name), name).toBe(true);
  });
});
