/**
 * What fulcrum is: the package.json version and, when the build recorded it (build/version.ts),
 * the git commit. The one owner of that fact: `fulcrum --version`, /api/status (and so the status
 * page) and fulcrum_build_info all read it here. Read once, at first use; git is never run here.
 */
import { readFileSync } from 'node:fs';

export interface BuildInfo {
  /** package.json's version, e.g. "0.1.0". */
  version: string;
  /** The commit built from ("1a2b3c4d5e6f", "-dirty" when the checkout had changes), or null when unknown. */
  commit: string | null;
}

let cached: BuildInfo | undefined;

export function buildInfo(): BuildInfo {
  cached ??= {
    version: (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version,
    commit: recordedCommit(),
  };
  return cached;
}

/** "0.1.0 (commit 1a2b3c4d5e6f)", or "0.1.0" when the commit is unknown. */
export function versionText(info: BuildInfo = buildInfo()): string {
  return info.commit === null ? info.version : `${info.version} (commit ${info.commit})`;
}

function recordedCommit(): string | null {
  try {
    const { commit } = JSON.parse(readFileSync(new URL('../build/out/version.json', import.meta.url), 'utf8')) as { commit: unknown };
    return typeof commit === 'string' && commit !== '' ? commit : null;
  } catch {
    return null; // not built with build/asc.ts (or built before it recorded the commit)
  }
}
