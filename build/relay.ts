/**
 * Builds the relay (src/proxy/relay/*.c, the data path's system calls in native code) into
 * build/out/relay.node with the system's C compiler, against the headers of the Node that runs
 * this script (the pinned Node 24 ships them beside its binary). Called by `npm install`
 * (prepare), `npm test`, `npm start` and `npm run bench`; the output is never committed.
 *
 * Build it with the Node that will run fulcrum. The relay uses libuv's API (uv_poll on the
 * worker's loop) as well as Node-API, and N-API's ABI promise covers only Node-API: libuv's
 * structures and functions may change between Node majors. So the build records the Node it was
 * built for (FULCRUM_NODE_ABI = process.versions.modules, and the version) in the generated
 * header, and relay.ts refuses at start-up a relay built for another ABI, naming both: the
 * sessions then run on the JavaScript path, and the log says why (`npm run build:relay` fixes it).
 *
 * Before compiling, the event layout's C header is generated from src/shm/layout.ts into
 * build/out/gen/relay-layout.h (build/gen-layout.ts), which relay.c includes.
 *
 * Without a C compiler the build says so and stops short of failing the install: fulcrum then
 * runs every session on the JavaScript path and logs why at start-up (relay.ts, pool.ts).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ENGINE_WASM_PATH } from '../src/balancer/engine.ts';
import { writeRelayHeader } from './gen-layout.ts';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const RELAY_NODE = join(root, 'build', 'out', 'relay.node');
/**
 * The same sources built with AddressSanitizer and UndefinedBehaviorSanitizer (`--sanitize`, run
 * by `npm test`): the proxy suite runs once more against it (vitest.config.ts, project
 * relay-sanitized), with the sanitizers' runtime preloaded into the test processes.
 */
export const RELAY_SANITIZED_NODE = join(root, 'build', 'out', 'relay-sanitized.node');
/** The relay's sources: relay.c (the Node-API surface), loop.c, handoff.c, and relay.h they share. */
const SOURCE_DIR = join(root, 'src', 'proxy', 'relay');
const sources = (): string[] => readdirSync(SOURCE_DIR).filter((f) => f.endsWith('.c')).sort().map((f) => join(SOURCE_DIR, f));

/** Where Node's headers are (node_api.h), or undefined. */
function nodeHeaders(): string | undefined {
  // The running Node's own headers come first (libuv's API is not covered by N-API's ABI promise:
  // see above); the npm package `node` copies its binary to node_modules/node/bin and keeps the
  // release (headers included) in the platform package it installed from.
  const platformPackage = `node-${process.platform}-${process.arch}`;
  const candidates = [
    join(dirname(process.execPath), '..', 'include', 'node'),
    join(root, 'node_modules', 'node', 'node_modules', platformPackage, 'include', 'node'),
    join(root, 'node_modules', platformPackage, 'include', 'node'),
    '/usr/include/node',
  ];
  return candidates.find((dir) => existsSync(join(dir, 'node_api.h')));
}

export type RelayBuild = { ok: true } | { ok: false; missing: 'headers' | 'compiler'; message: string } | { ok: false; missing: null; message: string };

/**
 * Compiles relay.c into `out` (`defines`: extra -D flags, for tests; `node`: the Node recorded as
 * the one it is built for, by default this one — tests build one for another). The generated
 * header goes into a `gen` folder beside `out`.
 */
export function compileRelay(out = RELAY_NODE, defines: string[] = [], node?: { abi: number; version: string }, sanitize = false): RelayBuild {
  const headers = nodeHeaders();
  if (headers === undefined) return { ok: false, missing: 'headers', message: 'no Node headers (node_api.h) beside this Node or in node_modules' };
  mkdirSync(dirname(out), { recursive: true });
  const generated = join(dirname(out), 'gen');
  writeRelayHeader(generated, node);
  const cc = process.env.CC ?? 'cc';
  // -fvisibility=hidden: what the files give each other stays inside the addon; only its
  // Node-API init is exported.
  // Sanitized: every undefined behaviour aborts (no recovery), frames kept for the reports.
  const optimize = sanitize
    ? ['-O1', '-g', '-fno-omit-frame-pointer', '-fsanitize=address,undefined', '-fno-sanitize-recover=all']
    : ['-O2'];
  const args = [...optimize, '-fPIC', '-shared', '-pthread', '-fvisibility=hidden', '-Wall', '-Wextra', '-Werror',
    ...defines.map((d) => `-D${d}`), '-I', generated, '-I', headers, '-o', out, ...sources()];
  try {
    execFileSync(cc, args, { stdio: ['ignore', 'inherit', 'inherit'] });
    return { ok: true };
  } catch (err) {
    rmSync(out, { force: true });
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      return { ok: false, missing: 'compiler', message: `no C compiler (${cc}; apt-get install gcc libc6-dev)` };
    }
    return { ok: false, missing: null, message: `compiling the relay failed: ${cc} ${args.join(' ')}` };
  }
}

/**
 * The sanitizers' runtime, to preload into a Node that loads the sanitized relay (Node itself is
 * not built with it, so it must come first: LD_PRELOAD). undefined without one.
 */
export function sanitizerRuntime(): string | undefined {
  try {
    const lib = execFileSync(process.env.CC ?? 'cc', ['-print-file-name=libasan.so'], { encoding: 'utf8' }).trim();
    return lib.startsWith('/') && existsSync(lib) ? lib : undefined;
  } catch {
    return undefined;
  }
}

const kib = (file: string): string => `${(statSync(file).size / 1024).toFixed(1)} KiB`;

/**
 * What `npm run build` (and so `npm ci`, through prepare) built, in one line: the engine and its
 * size (build/asc.ts runs first and says nothing when it succeeds), the relay or why not.
 */
export function buildSummary(r: RelayBuild, out: string, sanitize: boolean): string {
  const engine = existsSync(ENGINE_WASM_PATH) ? `engine ${relative(root, ENGINE_WASM_PATH)} (${kib(ENGINE_WASM_PATH)})` : 'engine not built (npm run build:wasm)';
  const relay = r.ok
    ? `relay ${relative(root, out)} (${kib(out)}${sanitize ? ', sanitized' : ''}, for Node ${process.versions.node})`
    : r.missing
      ? `relay not built: ${r.message}; sessions run on the JavaScript path`
      : `relay not built: ${r.message}`;
  return `fulcrum build: ${engine}; ${relay}`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const sanitize = process.argv.includes('--sanitize');
  const out = sanitize ? RELAY_SANITIZED_NODE : RELAY_NODE;
  const r = sanitize ? compileRelay(out, [], undefined, true) : compileRelay(out);
  // Missing tools: the install goes on, fulcrum runs its JavaScript path. A compile error fails it.
  (r.ok ? console.log : console.error)(buildSummary(r, out, sanitize));
  if (!r.ok) process.exit(r.missing ? 0 : 1);
}
