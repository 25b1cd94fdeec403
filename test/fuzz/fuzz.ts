/**
 * The fuzzing harness shared by test/fuzz/*.test.ts: property-based fuzzing with fast-check over
 * byte strings that are either random or mutations of a seed corpus kept in
 * test/fuzz/corpus/<target>/ (one file a seed, the bytes as they travel on the wire).
 *
 * In `npm test` each target runs a short, bounded round (FUZZ_RUNS inputs, default 4,000, and at
 * most FUZZ_SECONDS seconds, default 8). A longer run is the same test with bigger numbers, e.g.
 *   FUZZ_RUNS=1000000 FUZZ_SECONDS=3600 node_modules/.bin/vitest run --project relay test/fuzz
 * A failure prints fast-check's seed and the shrunk input; the input goes into the target's corpus
 * as a regression seed (and the bug gets a test of its own beside the code it concerns).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';

const CORPUS = new URL('./corpus/', import.meta.url).pathname;

export const FUZZ_RUNS = Number(process.env.FUZZ_RUNS ?? 4000);
const FUZZ_SECONDS = Number(process.env.FUZZ_SECONDS ?? 8);

/** fast-check parameters of one bounded round; a reproducing seed may be given as FUZZ_SEED. */
export function rounds(runs = FUZZ_RUNS): fc.Parameters<unknown> {
  const seed = process.env.FUZZ_SEED === undefined ? undefined : Number(process.env.FUZZ_SEED);
  return { numRuns: runs, interruptAfterTimeLimit: FUZZ_SECONDS * 1000, markInterruptAsFailure: false, seed };
}

/** The seeds of one target, each a Buffer (sorted by file name, so runs are reproducible). */
export function corpus(target: string): Buffer[] {
  const dir = join(CORPUS, target);
  const seeds = readdirSync(dir).sort().map((f) => readFileSync(join(dir, f)));
  if (seeds.length === 0) throw new Error(`test/fuzz/corpus/${target} has no seeds`);
  return seeds;
}

/** One seed by its file name. */
export const seed = (target: string, name: string): Buffer => readFileSync(join(CORPUS, target, name));

/** The mutations a coverage-less fuzzer gets most from: flips, interesting bytes, cuts and splices. */
const mutation = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('set' as const), at: fc.nat(), byte: fc.constantFrom(0x00, 0x01, 0x0a, 0x0d, 0x20, 0x2a, 0x3a, 0x7f, 0x80, 0xff) }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('repeat' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 64 }), times: fc.integer({ min: 2, max: 64 }) }),
);

type Mutation = typeof mutation extends fc.Arbitrary<infer T> ? T : never;

function mutate(seed: Buffer, steps: Mutation[]): Buffer {
  let b = Buffer.from(seed);
  for (const m of steps) {
    const at = b.length === 0 ? 0 : m.at % (b.length + 1);
    switch (m.kind) {
      case 'flip': if (at < b.length) b[at] ^= 1 << m.bit; break;
      case 'set': if (at < b.length) b[at] = m.byte; break;
      case 'insert': b = Buffer.concat([b.subarray(0, at), Buffer.from(m.bytes), b.subarray(at)]); break;
      case 'delete': b = Buffer.concat([b.subarray(0, at), b.subarray(at + m.n)]); break;
      case 'truncate': b = b.subarray(0, at); break;
      case 'repeat': {
        const piece = b.subarray(at, at + m.n);
        b = Buffer.concat([b.subarray(0, at), ...Array<Buffer>(m.times).fill(piece), b.subarray(at)]);
        break;
      }
    }
  }
  return b;
}

/**
 * Inputs for one target: a seed unchanged, a seed after 1–6 mutations, two seeds spliced, or
 * random bytes (up to `maxRandom`).
 */
export function inputs(seeds: Buffer[], maxRandom = 512): fc.Arbitrary<Buffer> {
  const seed = fc.constantFrom(...seeds);
  return fc.oneof(
    { weight: 1, arbitrary: seed },
    { weight: 6, arbitrary: fc.tuple(seed, fc.array(mutation, { minLength: 1, maxLength: 6 })).map(([s, m]) => mutate(s, m)) },
    { weight: 1, arbitrary: fc.tuple(seed, seed, fc.nat(), fc.nat()).map(([a, b, i, j]) => Buffer.concat([a.subarray(0, i % (a.length + 1)), b.subarray(j % (b.length + 1))])) },
    { weight: 2, arbitrary: fc.uint8Array({ maxLength: maxRandom }).map((u) => Buffer.from(u)) },
  );
}

/** Splits `buf` at the given cut points (each taken modulo the length): how bytes arrive on a socket. */
export function chunks(buf: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => (buf.length === 0 ? 0 : c % buf.length)))].filter((c) => c > 0).sort((a, b) => a - b);
  const out: Buffer[] = [];
  let from = 0;
  for (const p of points) {
    out.push(buf.subarray(from, p));
    from = p;
  }
  out.push(buf.subarray(from));
  return out;
}
