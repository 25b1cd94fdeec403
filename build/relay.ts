/**
 * Builds the relay (src/proxy/relay/*.c, the data path's system calls in native code) into
 * build/out/relay.node with the system's C compiler, against the headers of the Node that runs
 * this script (the pinned Node 24 ships them beside its binary). Called by `npm install`
 * (prepare), `npm test`, `npm start` and `npm run bench`; the output is never committed.
 *
 * Without a C compiler the build says so and stops short of failing the install: fulcrum then
 * runs every session on the JavaScript path and logs why at start-up (relay.ts, pool.ts).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const RELAY_NODE = join(root, 'build', 'out', 'relay.node');
/** The relay's sources: relay.c (the Node-API surface), loop.c, handoff.c, and relay.h they share. */
const SOURCE_DIR = join(root, 'src', 'proxy', 'relay');
const sources = (): string[] => readdirSync(SOURCE_DIR).filter((f) => f.endsWith('.c')).sort().map((f) => join(SOURCE_DIR, f));

/** Where Node's headers are (node_api.h), or undefined. */
function nodeHeaders(): string | undefined {
  // Node-API is ABI-stable, so any Node's headers serve; the pinned Node's come first. The npm
  // package `node` copies its binary to node_modules/node/bin and keeps the release (headers
  // included) in the platform package it installed from.
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

/** Compiles relay.c into `out` (`defines`: extra -D flags, for tests). */
export function compileRelay(out = RELAY_NODE, defines: string[] = []): RelayBuild {
  const headers = nodeHeaders();
  if (headers === undefined) return { ok: false, missing: 'headers', message: 'no Node headers (node_api.h) beside this Node or in node_modules' };
  mkdirSync(dirname(out), { recursive: true });
  const cc = process.env.CC ?? 'cc';
  // -fvisibility=hidden: what the files give each other stays inside the addon; only its
  // Node-API init is exported.
  const args = ['-O2', '-fPIC', '-shared', '-pthread', '-fvisibility=hidden', '-Wall', '-Wextra', '-Werror',
    ...defines.map((d) => `-D${d}`), '-I', headers, '-o', out, ...sources()];
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

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const r = compileRelay();
  if (!r.ok) {
    // Missing tools: the install goes on, fulcrum runs its JavaScript path. A compile error fails it.
    console.error(`build/relay.ts: ${r.message}${r.missing ? ': the relay is not built, sessions stay on the JavaScript path' : ''}`);
    process.exit(r.missing ? 0 : 1);
  }
}
