/**
 * Reading and validating a config file. Every problem is reported at once, each as
 * "path: what is wrong, got <value>", so `fulcrum check` reads like `haproxy -c`.
 */
import { closeSync, constants as fsConstants, fstatSync, openSync, readFileSync, type Stats } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, resolve } from 'node:path';
import { Worker } from 'node:worker_threads';
import { isMap, isScalar, LineCounter, parseDocument, visit, type Document, type YAMLError } from 'yaml';
import type { z } from 'zod';
import { ConfigInvalidError, ConfigUnreadableError, type ConfigProblem } from '../errors.ts';
import { MAX_BACKENDS } from '../shm/layout.ts';
import { configSchema, formatHostPort, ROLE_HEALTH_TYPES, UDP_HEALTH_TYPE, type Config } from './schema.ts';
import { resolveSecretPaths } from './secrets.ts';

export type { Config } from './schema.ts';

/** "services[0].backends[1].weight" from zod's path array. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out;
}

/** Text cut to `max` characters, with "..." where it was cut. */
const cut = (s: string, max: number): string => (s.length > max ? s.slice(0, max - 3) + '...' : s);

/** A value as a problem quotes it: JSON, cut at 80 characters (a 100 KB string is not echoed whole). */
function formatValue(v: unknown): string {
  if (v === undefined) return 'nothing';
  let s: string;
  try {
    s = JSON.stringify(v);
  } catch {
    s = String(v);
  }
  return cut(s, 80);
}

/**
 * The parser's own errors as problems. The yaml library quotes the offending token whole (a
 * 100 KB scalar made a 100 KB message: found by test/fuzz/config.test.ts) and a broken file can
 * raise hundreds: each is cut to 200 characters and the first 20 are listed.
 */
const MAX_YAML_PROBLEMS = 20;
function yamlProblems(doc: Document, lines: LineCounter): ConfigProblem[] {
  // One mistake, one message: the parser may raise two errors at one place (a line indented
  // under a scalar gave "Nested mappings…" and "Implicit keys…" at the same column).
  const errors = doc.errors.filter((e, i, all) => all.findIndex((f) => f.pos[0] === e.pos[0]) === i);
  const problems = errors.slice(0, MAX_YAML_PROBLEMS).map((e) => ({ path: '', message: yamlMessage(e, doc, lines) }));
  if (errors.length > MAX_YAML_PROBLEMS) problems.push({ path: '', message: `YAML: ${errors.length - MAX_YAML_PROBLEMS} more errors not listed` });
  return problems;
}

/**
 * One parser error as one line: "YAML: line 3, column 13: <what>" (the library's own text put the
 * position last, before an excerpt of several lines). A quote or a flow [ or { left open is
 * reported where it was opened: the parser notices only where the file or the block ends, which
 * is not where the fix goes.
 */
function yamlMessage(e: YAMLError, doc: Document, lines: LineCounter): string {
  const what = cut(e.message.split('\n')[0].replace(/ at line \d+, column \d+:?$/, ''), 200);
  const at = e.linePos?.[0];
  if (at === undefined) return `YAML: ${what}`;
  const opener = unclosedOpener(e, doc);
  if (opener !== undefined) {
    const o = lines.linePos(opener.offset);
    return `YAML: line ${o.line}, column ${o.col}: the ${opener.char} opened here is not closed (found at line ${at.line}, column ${at.col}: ${what})`;
  }
  return `YAML: line ${at.line}, column ${at.col}: ${what}`;
}

/** For an unclosed quote or flow collection: the node the error ends, and its opening character. */
function unclosedOpener(e: YAMLError, doc: Document): { offset: number; char: string } | undefined {
  const quote = /^Missing closing (["'])quote/.exec(e.message)?.[1];
  const flow = /end with a ([\]}])/.exec(e.message)?.[1];
  if (quote === undefined && flow === undefined) return undefined;
  let found: { offset: number; char: string } | undefined;
  visit(doc, {
    Node(_key, node) {
      const range = (node as { range?: [number, number, number] }).range;
      if (!range || range[1] !== e.pos[0]) return;
      const n = node as { type?: string; flow?: boolean };
      const char = quote !== undefined
        ? (n.type === 'QUOTE_DOUBLE' ? '"' : n.type === 'QUOTE_SINGLE' ? "'" : undefined)
        : n.flow ? (flow === ']' ? '[' : '{') : undefined;
      // The innermost (last visited) node that ends at the error.
      if (char !== undefined && (quote === undefined || char === quote)) found = { offset: range[0], char };
    },
  });
  return found;
}

/** A zod schema's definition, as far as knownKeys reads it. */
interface SchemaDef {
  type: string;
  shape?: Record<string, { _zod: { def: SchemaDef } }>;
  innerType?: { _zod: { def: SchemaDef } };
  in?: { _zod: { def: SchemaDef } };
  element?: { _zod: { def: SchemaDef } };
  options?: { _zod: { def: SchemaDef } }[];
}

/** The keys the config schema knows for the mapping at `path` (through optional, default, pipe, array, union). */
function knownKeys(path: readonly PropertyKey[]): string[] {
  let defs: SchemaDef[] = [(configSchema as unknown as { _zod: { def: SchemaDef } })._zod.def];
  const unwrap = (d: SchemaDef): SchemaDef[] => {
    for (let i = 0; i < 16; i++) {
      if (d.innerType) d = d.innerType._zod.def;
      else if (d.type === 'pipe' && d.in) d = d.in._zod.def;
      else if (d.type === 'union' && d.options) return d.options.flatMap((o) => unwrap(o._zod.def));
      else break;
    }
    return [d];
  };
  for (const p of path) {
    defs = defs.flatMap(unwrap).flatMap((d): SchemaDef[] => {
      if (typeof p === 'number') return d.type === 'array' && d.element ? [d.element._zod.def] : [];
      const child = d.shape?.[String(p)];
      return child ? [child._zod.def] : [];
    });
  }
  return defs.flatMap(unwrap).flatMap((d) => Object.keys(d.shape ?? {}));
}

/** Edit distance (insertions, deletions, substitutions, and a swap of two neighbours counted once). */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

/** "unknown key", and the nearest key the schema knows there when one is close (a typo). */
function unknownKeyMessage(key: string, path: readonly PropertyKey[]): string {
  // Long keys are not compared: a 100 KB key would cost 100 KB × each known key.
  if (key.length > 64) return 'unknown key';
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const known of knownKeys(path)) {
    const d = editDistance(key.toLowerCase(), known);
    if (d < bestDistance) [best, bestDistance] = [known, d];
  }
  const close = best !== undefined && bestDistance <= Math.max(2, Math.floor(best.length / 3));
  return close ? `unknown key; did you mean ${JSON.stringify(best)}?` : 'unknown key';
}

function problemsFromZod(error: z.ZodError): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  for (const issue of error.issues) {
    const path = formatPath(issue.path);
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) out.push({ path: path ? `${path}.${key}` : key, message: unknownKeyMessage(key, issue.path) });
      continue;
    }
    const input = (issue as { input?: unknown }).input;
    const message = input === undefined ? `is required: ${issue.message}` : `${issue.message}, got ${formatValue(input)}`;
    out.push({ path, message });
  }
  return out;
}

/** Services that list no backend and have no discover section: nothing would ever serve them. */
function emptyBackends(data: object): ConfigProblem[] {
  const services = (data as { services?: unknown }).services;
  if (!Array.isArray(services)) return [];
  return services.flatMap((s: unknown, i) => {
    const v = s as { backends?: unknown; discover?: unknown } | null;
    return v !== null && typeof v === 'object' && Array.isArray(v.backends) && v.backends.length === 0 && v.discover === undefined
      ? [{ path: `services[${i}].backends`, message: 'must list at least one backend (or the service needs a discover section), got []' }]
      : [];
  });
}

/** Checks that span fields: uniqueness, and a health block that fits its type. */
function crossChecks(config: Config): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const names = new Map<string, number>();
  const listens = new Map<string, number>();
  let backendTotal = 0;
  config.services.forEach((s, i) => {
    const at = `services[${i}]`;
    if (names.has(s.name)) problems.push({ path: `${at}.name`, message: `duplicates services[${names.get(s.name)}].name, got ${JSON.stringify(s.name)}` });
    else names.set(s.name, i);
    // A UDP and a TCP service may share a port number: the kernel keeps the two protocols apart.
    const listen = formatHostPort(s.listen);
    const key = `${s.protocol} ${listen}`;
    if (listens.has(key)) problems.push({ path: `${at}.listen`, message: `duplicates services[${listens.get(key)}].listen, got ${JSON.stringify(listen)}` });
    else listens.set(key, i);
    const addresses = new Map<string, number>();
    s.backends.forEach((b, j) => {
      const a = formatHostPort(b.address);
      if (addresses.has(a)) problems.push({ path: `${at}.backends[${j}].address`, message: `duplicates backends[${addresses.get(a)}].address, got ${JSON.stringify(a)}` });
      else addresses.set(a, j);
    });
    backendTotal += s.backends.length;
    if (s.discover) {
      const sources = Object.keys(s.discover).filter((k) => s.discover![k as keyof typeof s.discover] !== undefined);
      if (sources.length !== 1) problems.push({ path: `${at}.discover`, message: `must name exactly one source (dns, redis_sentinel or patroni), got ${sources.length === 0 ? 'none' : sources.join(' and ')}` });
      const dns = s.discover.dns;
      if (dns && dns.type !== 'SRV' && dns.port === undefined) problems.push({ path: `${at}.discover.dns.port`, message: `is required with type ${dns.type} (SRV records carry their port)` });
      if (dns && dns.type === 'SRV' && dns.port !== undefined) problems.push({ path: `${at}.discover.dns.port`, message: `is for type A or AAAA (SRV records carry their port), got ${dns.port}` });
    }
    const h = s.health;
    if (h) {
      if (h.type === 'send_expect' && !h.send_expect) problems.push({ path: `${at}.health.send_expect`, message: 'is required when health.type is send_expect' });
      if (h.type === UDP_HEALTH_TYPE) {
        // A UDP server never speaks first, and a reply-less probe could only time out.
        if (h.send === undefined) problems.push({ path: `${at}.health.send`, message: 'is required when health.type is udp (the datagram to send)' });
        if (h.expect === undefined) problems.push({ path: `${at}.health.expect`, message: 'is required when health.type is udp (what the reply must hold)' });
      } else {
        for (const key of ['send', 'expect'] as const) {
          if (h[key] !== undefined) problems.push({ path: `${at}.health.${key}`, message: `needs health.type udp (send_expect takes send_expect.${key}), got ${JSON.stringify(h[key])}` });
        }
      }
      if (h.role !== 'any' && !ROLE_HEALTH_TYPES.includes(h.type)) {
        problems.push({ path: `${at}.health.role`, message: `needs health.type redis, postgres or mysql, got ${JSON.stringify(h.role)} with type ${JSON.stringify(h.type)}` });
      }
      for (const section of ['redis', 'postgres', 'mysql'] as const) {
        const t = h[section];
        if (t?.ca_file !== undefined && t.tls !== 'verify-full') {
          problems.push({ path: `${at}.health.${section}.ca_file`, message: `needs health.${section}.tls: verify-full, got tls ${JSON.stringify(t.tls)}` });
        }
      }
      if (h.timeout > h.interval) problems.push({ path: `${at}.health.timeout`, message: `must not exceed health.interval (${h.interval}ms), got ${h.timeout}ms` });
      if (h.max_lag !== undefined && !ROLE_HEALTH_TYPES.includes(h.type)) {
        problems.push({ path: `${at}.health.max_lag`, message: `needs health.type redis, postgres or mysql, got ${h.max_lag}ms with type ${JSON.stringify(h.type)}` });
      } else if (h.max_lag !== undefined && h.role === 'primary') {
        problems.push({ path: `${at}.health.max_lag`, message: `needs health.role replica or any (a primary has no lag), got ${h.max_lag}ms with role "primary"` });
      }
    }
  });
  if (backendTotal > MAX_BACKENDS) problems.push({ path: 'services', message: `must hold at most ${MAX_BACKENDS} backends in all, got ${backendTotal}` });
  config.ha?.vip.forEach((v, i, all) => {
    const first = all.findIndex((w) => w.address === v.address);
    if (first !== i) problems.push({ path: `ha.vip[${i}]`, message: `duplicates ha.vip[${first}] (${v.address}), got ${JSON.stringify(`${v.address}/${v.prefix}`)}` });
  });
  if (config.ha && formatHostPort(config.ha.bind) === formatHostPort(config.ha.peer)) {
    problems.push({ path: 'ha.peer', message: `must differ from ha.bind, got ${JSON.stringify(formatHostPort(config.ha.peer))}` });
  }
  if (config.bgp) problems.push(...bgpProblems(config));
  return problems;
}

/** The bgp section's cross-checks: what its speaker needs, duplicates, and a VIP held two ways. */
function bgpProblems(config: Config): ConfigProblem[] {
  const bgp = config.bgp!;
  const problems: ConfigProblem[] = [];
  if (bgp.speaker === 'gobgp') {
    if (bgp.asn === undefined) problems.push({ path: 'bgp.asn', message: 'is required with speaker: gobgp' });
    if (bgp.router_id === undefined) problems.push({ path: 'bgp.router_id', message: 'is required with speaker: gobgp' });
    if (bgp.neighbors.length === 0) problems.push({ path: 'bgp.neighbors', message: 'must list at least one neighbor with speaker: gobgp' });
    for (const key of ['announce', 'withdraw'] as const) {
      if (bgp[key] !== undefined) problems.push({ path: `bgp.${key}`, message: `is only used with speaker: command, got ${JSON.stringify(bgp[key])} with speaker: gobgp` });
    }
  } else {
    for (const key of ['announce', 'withdraw'] as const) {
      if (bgp[key] === undefined) problems.push({ path: `bgp.${key}`, message: 'is required with speaker: command (a shell command; {vip} is replaced by the address)' });
    }
  }
  bgp.neighbors.forEach((n, i) => {
    const first = bgp.neighbors.findIndex((m) => m.address === n.address);
    if (first !== i) problems.push({ path: `bgp.neighbors[${i}].address`, message: `duplicates bgp.neighbors[${first}].address, got ${JSON.stringify(n.address)}` });
  });
  const haVips = new Set(config.ha?.vip.map((v) => v.address) ?? []);
  bgp.vips.forEach((v, i) => {
    const first = bgp.vips.indexOf(v);
    if (first !== i) problems.push({ path: `bgp.vips[${i}]`, message: `duplicates bgp.vips[${first}], got ${JSON.stringify(v)}` });
    if (haVips.has(v)) {
      problems.push({
        path: `bgp.vips[${i}]`,
        message: `is also under ha.vip: a VIP is held either by bgp (announced by every node) or by ha (moved between a pair), not both, got ${JSON.stringify(v)}`,
      });
    }
  });
  return problems;
}

/**
 * Keys repeated within one mapping, each as a problem naming the key and its line. yaml's own
 * `uniqueKeys` check compares every key of a mapping with every other (40,000 keys took 15 s, a
 * 2.5 MB file under MAX_CONFIG_BYTES over 30 s); this keeps one Set per mapping, so it is linear.
 * Scalar keys compare by value (as yaml's check does: `1` and `"1"` differ); a key that is itself
 * a collection is rare enough in a config to be compared by its text.
 */
function duplicateKeys(doc: Document, lines: LineCounter): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  visit(doc, {
    Map(_key, map) {
      if (!isMap(map)) return;
      const seen = new Set<unknown>();
      for (const pair of map.items) {
        const k = pair.key;
        const value = isScalar(k) ? k.value : k === null ? null : String(k);
        if (!seen.has(value)) {
          seen.add(value);
          continue;
        }
        const at = (k as { range?: [number, number, number] } | null)?.range?.[0];
        const where = at === undefined ? '' : ` at line ${lines.linePos(at).line}`;
        problems.push({ path: '', message: `YAML: duplicate key ${formatValue(value)}${where}` });
      }
    },
  });
  return problems;
}

/** Validates YAML text; throws ConfigInvalidError listing every problem. */
export function parseConfig(text: string, file = '<config>'): Config {
  const lines = new LineCounter();
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: false, lineCounter: lines });
  if (doc.errors.length > 0) {
    throw new ConfigInvalidError(file, yamlProblems(doc, lines));
  }
  const duplicates = duplicateKeys(doc, lines);
  if (duplicates.length > 0) throw new ConfigInvalidError(file, duplicates);
  let data: unknown;
  try {
    // yaml refuses to expand an alias bomb ("billion laughs") here, with a ReferenceError: it is
    // the file's problem, so it is reported as one, not as a crash of `fulcrum check` or a reload.
    data = doc.toJS() ?? {};
  } catch (err) {
    throw new ConfigInvalidError(file, [{ path: '', message: `YAML: ${(err as Error).message} (too many aliases)` }]);
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw new ConfigInvalidError(file, [{ path: '', message: `the top level must be a mapping, got ${formatValue(data)}` }]);
  }
  const result = configSchema.safeParse(data, { reportInput: true });
  // Read from the input, so the problem is listed with zod's own even when other fields fail.
  const empty = emptyBackends(data);
  if (!result.success) throw new ConfigInvalidError(file, [...problemsFromZod(result.error), ...empty]);
  const problems = [...empty, ...crossChecks(result.data)];
  if (problems.length > 0) throw new ConfigInvalidError(file, problems);
  return result.data;
}

/**
 * Files larger than this are refused unread: the largest config the layout holds (64 services,
 * 4,096 backends) is ≈ 250 KB written out, and parsing runs at ≈ 0.5 MB/s (a 14 MB file took 13 s).
 */
export const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

/** What a non-regular file is, for the message that refuses it. */
function kindOf(st: Stats): string {
  if (st.isFIFO()) return 'a FIFO';
  if (st.isDirectory()) return 'a directory';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  return 'not a regular file';
}

/**
 * The text of a config file, read only if it is a regular file of at most MAX_CONFIG_BYTES. It is
 * opened non-blocking and checked on the descriptor it is read from: opening a FIFO for reading
 * blocks until a writer comes (a reload waited for ever, and every later reload queued behind
 * it), and checking the path first would leave a window for the file to be swapped.
 */
function readConfigFile(file: string): string {
  let fd: number;
  try {
    fd = openSync(file, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
  } catch (err) {
    throw new ConfigUnreadableError(file, `cannot read: ${(err as Error).message}`, err);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new ConfigUnreadableError(file, `is ${kindOf(st)}; a config must be a regular file`);
    if (st.size > MAX_CONFIG_BYTES) {
      throw new ConfigUnreadableError(file, `is ${st.size} bytes; a config file may have at most ${MAX_CONFIG_BYTES} (4 MiB)`);
    }
    return readFileSync(fd, 'utf8');
  } catch (err) {
    if (err instanceof ConfigUnreadableError) throw err;
    throw new ConfigUnreadableError(file, `cannot read: ${(err as Error).message}`, err);
  } finally {
    closeSync(fd);
  }
}

/** Reads and validates a config file. */
export function loadConfig(file: string): Config {
  // Relative secret paths mean "beside this config file", wherever fulcrum was started from.
  return resolveSecretPaths(parseConfig(readConfigFile(file), file), dirname(resolve(file)));
}

/** What load-worker.ts posts back: the config, or the error's parts to build it again here. */
export type OffThreadResult =
  | { ok: true; config: Config }
  | { ok: false; code: string; message: string; why?: string; problems?: ConfigProblem[] };

/**
 * How long a reload's loading thread may take before it is ended and the reload refused. The
 * largest file MAX_CONFIG_BYTES allows parses in ≈ 8 s on a busy machine; a reload that takes
 * longer is stuck on something (a file system that does not answer), and the reloads queued
 * behind it must not wait for ever.
 */
export const RELOAD_LOAD_TIMEOUT_MS = 30_000;

/**
 * loadConfig on a worker thread of its own, for reloads while the process serves: parsing is
 * slow (the `yaml` package composes ≈ 0.5 MB/s, so the largest config takes ≈ 0.4 s) and the main
 * thread also sends the heartbeats — held up past Master_Down_Interval (≈ 300 ms by default) the
 * peer would take the VIP. Rejects with the same errors loadConfig throws, and with
 * ConfigUnreadableError when the thread has not answered within `timeoutMs` (it is then ended).
 */
export function loadConfigOffThread(file: string, timeoutMs = RELOAD_LOAD_TIMEOUT_MS): Promise<Config> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const worker = new Worker(new URL('./load-worker.ts', import.meta.url), { workerData: { file }, name: 'fulcrum-config' });
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      void worker.terminate();
      reject(new ConfigUnreadableError(file, `cannot be loaded: no result within ${timeoutMs}ms (the loading thread was ended)`));
    }, timeoutMs);
    timer.unref();
    worker.once('message', (r: OffThreadResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (r.ok) resolve(r.config);
      else if (r.code === 'FULCRUM_ERR_CONFIG_INVALID') reject(new ConfigInvalidError(file, r.problems ?? []));
      else if (r.code === 'FULCRUM_ERR_CONFIG_UNREADABLE') reject(new ConfigUnreadableError(file, r.why ?? r.message));
      else reject(new ConfigUnreadableError(file, `cannot be loaded: ${r.message}`));
    });
    worker.once('error', (err) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(new ConfigUnreadableError(file, `cannot be loaded: ${err.message}`, err));
    });
    worker.once('exit', (code) => {
      clearTimeout(timer);
      if (!settled) reject(new ConfigUnreadableError(file, `cannot be loaded: the loading thread exited with code ${code}`));
    });
  });
}

/** `workers: auto` → one per core, at most 16 (the layout's MAX_WORKERS). */
export function resolveWorkers(config: Config): number {
  return config.workers === 'auto' ? Math.min(16, Math.max(1, availableParallelism())) : config.workers;
}
