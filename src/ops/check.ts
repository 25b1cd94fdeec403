/**
 * What `fulcrum check` says beyond the config's own validation: the secret files it names, read
 * by their rule (src/config/secrets.ts); the capabilities it needs (./capabilities.ts) and
 * whether this process holds them; an admin API beyond loopback (src/admin/server.ts's
 * adminExposure, the one owner of that text). Problems fail the check; notes are printed.
 */
import { adminExposure } from '../admin/server.ts';
import { checkSecretFiles } from '../config/secrets.ts';
import type { Config } from '../config/schema.ts';
import type { FulcrumError } from '../errors.ts';
import { checkCapabilities, uncertainWarning } from './capabilities.ts';

export interface CheckResult {
  /** What `fulcrum run` would refuse (or a probe would fail on): the check fails. */
  problems: FulcrumError[];
  /** "note: …" and "warning: …" lines. */
  notes: string[];
}

export async function checkRuntime(config: Config): Promise<CheckResult> {
  const problems: FulcrumError[] = checkSecretFiles(config);
  const notes: string[] = [];
  const caps = await checkCapabilities(config);
  const missing = new Set(caps.missing);
  const uncertain = new Set(caps.uncertain);
  // Capabilities are the running user's: `fulcrum check` may run as another one, so a missing
  // one is a warning here, and `fulcrum run` is where it refuses.
  for (const need of caps.needs) {
    if (missing.has(need)) notes.push(`warning: ${need.capability} is needed by ${need.what}; this process lacks it: \`fulcrum run\` with the same capabilities refuses to start`);
    else if (!uncertain.has(need)) notes.push(`note: ${need.capability} is needed by ${need.what}; this process holds it`);
  }
  const unsure = uncertainWarning(caps.uncertain);
  if (unsure) notes.push(`warning: ${unsure}`);
  const exposure = config.admin ? adminExposure(config.admin.listen, config.admin.auth_reads) : undefined;
  if (exposure) notes.push(`note: ${exposure.note}`);
  if (exposure?.warning) notes.push(`warning: ${exposure.warning}`);
  return { problems, notes };
}
