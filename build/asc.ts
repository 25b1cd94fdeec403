/**
 * Builds the engine: generates the layout constants, then compiles assembly/ with asc into
 * build/out/engine.wasm; records the commit built (build/version.ts). Called by `npm install`
 * (prepare), `npm test`, `npm start` and the Dockerfile; the output is never committed.
 */
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import asc from 'assemblyscript/asc';
import { MEMORY_PAGES } from '../src/shm/layout.ts';
import { writeLayout } from './gen-layout.ts';
import { writeVersion } from './version.ts';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const ENGINE_WASM = join(root, 'build', 'out', 'engine.wasm');

writeLayout();
writeVersion();
mkdirSync(dirname(ENGINE_WASM), { recursive: true });
const { error, stderr } = await asc.main([
  join(root, 'assembly', 'index.ts'),
  '--outFile', ENGINE_WASM,
  '--textFile', ENGINE_WASM.replace(/\.wasm$/, '.wat'),
  '--optimizeLevel', '3', '--shrinkLevel', '0', '--noAssert',
  // No allocator, no GC: the engine only reads and writes the shared layout.
  '--runtime', 'stub',
  // One shared memory, made by the JavaScript side and imported by every instance.
  '--importMemory', '--sharedMemory', '--initialMemory', String(MEMORY_PAGES), '--maximumMemory', String(MEMORY_PAGES),
  '--enable', 'threads',
  // Nothing in the engine can abort (no bounds checks, no allocation): no host import needed.
  '--use', 'abort=',
]);
if (error) {
  console.error(stderr.toString());
  console.error(`build/asc.ts: compiling the engine failed: ${error.message}`);
  process.exit(1);
}
