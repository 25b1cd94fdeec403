/**
 * Builds the relay (src/proxy/relay.c, the native byte mover of established sessions) into
 * build/out/relay.node with the system's C compiler, against the headers of the Node that runs
 * this script (the pinned Node 24 ships them beside its binary). Called by `npm install`
 * (prepare), `npm test`, `npm start` and `npm run bench`; the output is never committed.
 *
 * Without a C compiler the build says so and stops short of failing the install: fulcrum then
 * runs every session on the JavaScript path and logs why at start-up (relay.ts).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const RELAY_NODE = join(root, 'build', 'out', 'relay.node');
const source = join(root, 'src', 'proxy', 'relay.c');
// Node-API is ABI-stable, so any Node's headers serve; the pinned Node's come first. The npm package
// `node` copies its binary to node_modules/node/bin and keeps the release (headers included) in
// the platform package it installed from.
const platformPackage = `node-${process.platform}-${process.arch}`;
const candidates = [
  join(dirname(process.execPath), '..', 'include', 'node'),
  join(root, 'node_modules', 'node', 'node_modules', platformPackage, 'include', 'node'),
  join(root, 'node_modules', platformPackage, 'include', 'node'),
  '/usr/include/node',
];
const headers = candidates.find((dir) => existsSync(join(dir, 'node_api.h')));

mkdirSync(dirname(RELAY_NODE), { recursive: true });
if (headers === undefined) {
  console.error(`build/relay.ts: no Node headers (node_api.h) in ${candidates.join(', ')}: the relay is not built ` +
    '(sessions stay on the JavaScript path)');
  process.exit(0);
}
const cc = process.env.CC ?? 'cc';
const args = ['-O2', '-fPIC', '-shared', '-Wall', '-Wextra', '-Werror', '-I', headers, '-o', RELAY_NODE, source];
try {
  execFileSync(cc, args, { stdio: ['ignore', 'inherit', 'inherit'] });
} catch (err) {
  rmSync(RELAY_NODE, { force: true });
  const e = err as NodeJS.ErrnoException & { status?: number };
  if (e.code === 'ENOENT') {
    console.error(`build/relay.ts: no C compiler (${cc}): the relay is not built, sessions stay on the JavaScript path ` +
      '(apt-get install gcc libc6-dev to build it)');
    process.exit(0);
  }
  console.error(`build/relay.ts: compiling the relay failed: ${cc} ${args.join(' ')}`);
  process.exit(1);
}
