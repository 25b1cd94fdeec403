/**
 * The README's "PostgreSQL / MySQL / Redis" recipes are configs that work as printed: each YAML
 * block of that section parses (parseConfig: the schema and the cross-field checks), and says
 * what the recipe promises (a write service routing to the primary, a read service to replicas
 * with max_lag where it says so).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.ts';
import { routedRole } from '../../src/config/schema.ts';

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
const start = readme.indexOf('\n## PostgreSQL / MySQL / Redis\n');
const section = readme.slice(start, readme.indexOf('\n## ', start + 5));
const blocks = [...section.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]);

describe('README recipes', () => {
  it('has the four recipes', () => {
    expect(start).toBeGreaterThan(0);
    expect(blocks).toHaveLength(4);
  });

  it.each(blocks.map((b, i) => [i, b] as const))('recipe %i parses: a write service on the primary, a read service on replicas', (_i, yaml) => {
    const config = parseConfig(yaml, 'README recipe');
    const [write, read] = config.services;
    expect(routedRole(write.health)).toBe('primary');
    expect(routedRole(read.health)).toBe('replica');
    expect(read.health?.max_lag).toBeGreaterThan(0);
    // The read service falls back to the primary: a listed backup, or the primary discovery adds as one.
    const fallback = read.backends.some((b) => b.backup) || read.discover?.patroni?.primary_as_backup || read.discover?.redis_sentinel?.primary_as_backup;
    expect(fallback).toBe(true);
  });
});
