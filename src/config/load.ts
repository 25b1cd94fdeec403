/**
 * Reading and validating a config file. Every problem is reported at once, each as
 * "path: what is wrong, got <value>", so `fulcrum check` reads like `haproxy -c`.
 */
import { readFileSync, statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, resolve } from 'node:path';
import { Worker } from 'node:worker_threads';
import { parseDocument } from 'yaml';
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
function yamlProblems(errors: readonly { message: string }[]): ConfigProblem[] {
  const problems = errors.slice(0, MAX_YAML_PROBLEMS).map((e) => ({ path: '', message: `YAML: ${cut(e.message.split('\n')[0], 200)}` }));
  if (errors.length > MAX_YAML_PROBLEMS) problems.push({ path: '', message: `YAML: ${errors.length - MAX_YAML_PROBLEMS} more errors not listed` });
  return problems;
}

function problemsFromZod(error: z.ZodError): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  for (const issue of error.issues) {
    const path = formatPath(issue.path);
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) out.push({ path: path ? `${path}.${key}` : key, message: 'unknown key' });
      continue;
    }
    const input = (issue as { input?: unknown }).input;
    const message = input === undefined ? `is required: ${issue.message}` : `${issue.message}, got ${formatValue(input)}`;
    out.push({ path, message });
  }
  return out;
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
      if (h.timeout > h.interval) problems.push({ path: `${at}.health.timeout`, message: `must not exceed health.interval (${h.interval}ms), got ${h.timeout}ms` });
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
  return problems;
}

/** Validates YAML text; throws ConfigInvalidError listing every problem. */
export function parseConfig(text: string, file = '<config>'): Config {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigInvalidError(file, yamlProblems(doc.errors));
  }
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
  if (!result.success) throw new ConfigInvalidError(file, problemsFromZod(result.error));
  const problems = crossChecks(result.data);
  if (problems.length > 0) throw new ConfigInvalidError(file, problems);
  return result.data;
}

/**
 * Files larger than this are refused unread: the largest config the layout holds (64 services,
 * 4,096 backends) is ≈ 250 KB written out, and parsing runs at ≈ 0.5 MB/s (a 14 MB file took 13 s).
 */
export const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

/** Reads and validates a config file. */
export function loadConfig(file: string): Config {
  let text: string;
  try {
    const size = statSync(file).size;
    if (size > MAX_CONFIG_BYTES) {
      throw new ConfigUnreadableError(file, `is ${size} bytes; a config file may have at most ${MAX_CONFIG_BYTES} (4 MiB)`);
    }
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if (err instanceof ConfigUnreadableError) throw err;
    throw new ConfigUnreadableError(file, `cannot read: ${(err as Error).message}`, err);
  }
  // Relative secret paths mean "beside this config file", wherever fulcrum was started from.
  return resolveSecretPaths(parseConfig(text, file), dirname(resolve(file)));
}

/** What load-worker.ts posts back: the config, or the error's parts to build it again here. */
export type OffThreadResult =
  | { ok: true; config: Config }
  | { ok: false; code: string; message: string; why?: string; problems?: ConfigProblem[] };

/**
 * loadConfig on a worker thread of its own, for reloads while the process serves: parsing is
 * slow (the `yaml` package composes ≈ 0.5 MB/s, so the largest config takes ≈ 0.4 s) and the main
 * thread also sends the heartbeats — held up past Master_Down_Interval (≈ 300 ms by default) the
 * peer would take the VIP. Rejects with the same errors loadConfig throws.
 */
export function loadConfigOffThread(file: string): Promise<Config> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const worker = new Worker(new URL('./load-worker.ts', import.meta.url), { workerData: { file }, name: 'fulcrum-config' });
    worker.once('message', (r: OffThreadResult) => {
      settled = true;
      if (r.ok) resolve(r.config);
      else if (r.code === 'FULCRUM_ERR_CONFIG_INVALID') reject(new ConfigInvalidError(file, r.problems ?? []));
      else if (r.code === 'FULCRUM_ERR_CONFIG_UNREADABLE') reject(new ConfigUnreadableError(file, r.why ?? r.message));
      else reject(new ConfigUnreadableError(file, `cannot be loaded: ${r.message}`));
    });
    worker.once('error', (err) => {
      settled = true;
      reject(new ConfigUnreadableError(file, `cannot be loaded: ${err.message}`, err));
    });
    worker.once('exit', (code) => {
      if (!settled) reject(new ConfigUnreadableError(file, `cannot be loaded: the loading thread exited with code ${code}`));
    });
  });
}

/** `workers: auto` → one per core, at most 16 (the layout's MAX_WORKERS). */
export function resolveWorkers(config: Config): number {
  return config.workers === 'auto' ? Math.min(16, Math.max(1, availableParallelism())) : config.workers;
}
