/**
 * Records the git commit fulcrum is built from in build/out/version.json (src/version.ts reads
 * it), so `fulcrum --version`, /api/status and fulcrum_build_info can name the commit without
 * git at run time. Called by build/asc.ts, so every build (npm ci, npm test, the Dockerfile)
 * writes it. FULCRUM_COMMIT overrides (a build from a tarball or a Docker context without .git);
 * with neither, the file says null and fulcrum shows the package.json version alone.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const VERSION_JSON = join(root, 'build', 'out', 'version.json');

/** The short commit of the checkout, with "-dirty" when tracked files differ from it; null without git. */
function gitCommit(): string | null {
  const git = (...args: string[]): string => execFileSync('git', args, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  try {
    const commit = git('rev-parse', '--short=12', 'HEAD');
    let dirty = false;
    try {
      git('diff', '--quiet', 'HEAD', '--');
    } catch {
      dirty = true;
    }
    return dirty ? `${commit}-dirty` : commit;
  } catch {
    return null; // no git, or not a checkout
  }
}

/** Writes `{ "commit": … }` to `file`; returns what it wrote. */
export function writeVersion(file = VERSION_JSON): { commit: string | null } {
  const fromEnv = process.env.FULCRUM_COMMIT?.trim();
  const info = { commit: fromEnv || gitCommit() };
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, JSON.stringify(info) + '\n');
  return info;
}

if (import.meta.main) writeVersion();
