/**
 * Fuzzing the config loader (src/config/load.ts parseConfig): what `fulcrum check`, start-up and
 * every reload run on an operator's file. Whatever the text, the answer is a Config or a
 * ConfigInvalidError whose every problem names a path and says something — never another
 * exception (a crash of `fulcrum check`, a 500 from POST /api/reload).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.ts';
import { ConfigInvalidError } from '../../src/errors.ts';
import { corpus, FUZZ_RUNS, inputs, rounds, seed } from './fuzz.ts';

const seeds = corpus('config');

/** YAML-shaped noise the byte mutations rarely produce: keys, flow collections, anchors, tags. */
const yamlish = fc.array(fc.constantFrom(
  'services:', '\n  - ', 'name: a', 'listen: 127.0.0.1:1', 'backends:', '[', ']', '{', '}', ',', ': ', '&a ', '*a', '!!str ',
  '<<: *a', '\n', '    ', 'weight: ', '-1', '1e400', '0x1F', 'null', '~', '"', "'", '#', '---', '...', '? ', '|', '>',
  'health: { type: postgres, role: primary }', 'ha:', 'vip: 10.0.0.1/24', 'timeouts: { connect: 1h }', '[::1]:5432',
), { maxLength: 60 }).map((parts) => Buffer.from(parts.join('')));

function check(buf: Buffer): void {
  let config: unknown;
  try {
    config = parseConfig(buf.toString('utf8'), 'fuzz.yaml');
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigInvalidError);
    const e = err as ConfigInvalidError;
    expect(e.code).toBe('FULCRUM_ERR_CONFIG_INVALID');
    expect(e.problems.length).toBeGreaterThan(0);
    for (const p of e.problems) {
      expect(typeof p.path).toBe('string');
      expect(p.message.length).toBeGreaterThan(0);
      // Values are quoted cut short, not echoed whole (a 100 KB value once was).
      expect(p.message.length).toBeLessThan(2000);
    }
    return;
  }
  expect(typeof config).toBe('object');
}

describe('fuzz: config loader', () => {
  it('the seeds that should load do', () => {
    for (const name of ['demo.yaml', 'good.yaml', 'full.yaml']) expect(() => parseConfig(seed('config', name).toString('utf8'), name)).not.toThrow();
    expect(() => parseConfig(seed('config', 'many-problems.yaml').toString('utf8'))).toThrow(ConfigInvalidError);
  });

  it('mutated configs: a Config or a ConfigInvalidError naming each problem, nothing else', () => {
    fc.assert(fc.property(inputs(seeds, 256), check), rounds(Math.ceil(FUZZ_RUNS / 3)));
  });

  it('YAML-shaped noise: the same', () => {
    fc.assert(fc.property(yamlish, check), rounds(Math.ceil(FUZZ_RUNS / 3)));
  });
});
