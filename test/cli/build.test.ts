/**
 * What `npm run build` (so `npm ci`, through prepare) says: one line naming the engine and its
 * size, and the relay or why it was not built. Built into a folder of the test's own: the real
 * build/out is what the other tests load.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { buildSummary, compileRelay } from '../../build/relay.ts';

const dir = mkdtempSync(join(tmpdir(), 'fulcrum-build-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('the build says in one line what it built', () => {
  it('the engine with its size, the relay with its size and the Node it is for', () => {
    const out = join(dir, 'relay.node');
    const r = compileRelay(out);
    expect(r).toEqual({ ok: true });
    const line = buildSummary(r, out, false);
    expect(line).not.toContain('\n');
    expect(line).toMatch(/^fulcrum build: engine build\/out\/engine\.wasm \(\d+\.\d KiB\); relay \S+relay\.node \(\d+\.\d KiB, for Node 24\.\d+\.\d+\)$/);
  });

  it('without a C compiler: the relay is not built, why, and what runs instead', () => {
    const cc = process.env.CC;
    process.env.CC = '/nonexistent/cc';
    try {
      const out = join(dir, 'none.node');
      const r = compileRelay(out);
      expect(r).toMatchObject({ ok: false, missing: 'compiler' });
      expect(buildSummary(r, out, false)).toMatch(
        /^fulcrum build: engine build\/out\/engine\.wasm \(\d+\.\d KiB\); relay not built: no C compiler \(\/nonexistent\/cc; apt-get install gcc libc6-dev\); sessions run on the JavaScript path$/,
      );
    } finally {
      if (cc === undefined) delete process.env.CC;
      else process.env.CC = cc;
    }
  });
});
