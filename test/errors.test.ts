/**
 * One list of error codes (src/errors.ts ERROR_CODES): the README's "Error codes" table documents
 * exactly that list, every code spelled anywhere in src/ (TypeScript or the relay's C) is on it,
 * every code on it is used, and every error class an operator can meet carries a code.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES } from '../src/errors.ts';

const root = join(import.meta.dirname, '..');
const codes = new Set<string>(Object.values(ERROR_CODES));

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && /\.(ts|c|h)$/.test(e.name) && !e.parentPath.includes('generated'))
    .map((e) => join(e.parentPath, e.name));
}
const files = sources(join(root, 'src')).map((f) => ({ file: f.slice(root.length + 1), text: readFileSync(f, 'utf8') }));

/** The codes in the first column of the README's "## Error codes" table. */
function readmeTable(): string[] {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const start = readme.indexOf('\n## Error codes\n');
  expect(start, 'README has an "## Error codes" section').toBeGreaterThan(0);
  const end = readme.indexOf('\n## ', start + 1);
  const rows = readme.slice(start, end < 0 ? undefined : end).split('\n').filter((l) => l.startsWith('| `FULCRUM_ERR_'));
  return rows.map((r) => {
    const cell = r.split('|')[1].trim();
    const m = /^`(FULCRUM_ERR_[A-Z0-9_]+)`$/.exec(cell);
    if (!m) throw new Error(`README error table: one code per row, got ${JSON.stringify(cell)}`);
    return m[1];
  });
}

describe('the one list of error codes', () => {
  it('is documented row by row in the README, nothing missing and nothing extra', () => {
    const table = readmeTable();
    expect(new Set(table).size, 'no code twice').toBe(table.length);
    expect([...codes].filter((c) => !table.includes(c)), 'codes missing from the README').toEqual([]);
    expect(table.filter((c) => !codes.has(c)), 'README codes not in src/errors.ts').toEqual([]);
    // Mentions elsewhere in the README name real codes too (wildcards like FULCRUM_ERR_ADMIN_* aside).
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    const mentioned = [...readme.matchAll(/FULCRUM_ERR_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_]*\*)/g)].map((m) => m[0]);
    expect(mentioned.filter((c) => !codes.has(c))).toEqual([]);
  });

  it('holds every code spelled in src/, and each of its codes is used there', () => {
    const spelled = new Map<string, string>();
    for (const { file, text } of files) {
      if (file === join('src', 'errors.ts')) continue;
      for (const m of text.matchAll(/FULCRUM_ERR_[A-Z0-9_]*[A-Z0-9]/g)) spelled.set(m[0], file);
    }
    expect([...spelled].filter(([c]) => !codes.has(c)).map(([c, f]) => `${c} in ${f}`), 'codes not on the list').toEqual([]);
    const used = (key: string, code: string) => spelled.has(code) || files.some(({ text }) => text.includes(`ERROR_CODES.${key}`));
    expect(Object.entries(ERROR_CODES).filter(([k, c]) => !used(k, c)).map(([, c]) => c), 'codes nothing throws').toEqual([]);
  });

  it('every error class an operator meets is a FulcrumError (a code from the list)', () => {
    // Three classes stay plain Errors on purpose: none reaches an operator as an error of its own.
    const internal: Record<string, string> = {
      CtlError: 'fulcrum ctl prints its message and exits 1; the server\'s code, when there is one, is in the message',
      UsageError: 'the command line\'s usage text (exit 2), not a condition of the running balancer',
      ProbeFailure: 'a probe\'s failed result: its message becomes the probe reason (health status), never thrown out',
    };
    const plain: string[] = [];
    for (const { file, text } of files) {
      for (const m of text.matchAll(/class (\w+) extends (\w+)/g)) {
        if (m[2] === 'Error' && m[1] !== 'FulcrumError' && !(m[1] in internal) && !file.endsWith('.d.ts')) plain.push(`${m[1]} in ${file}`);
      }
    }
    expect(plain).toEqual([]);
  });
});
