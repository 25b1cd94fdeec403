/**
 * What `fulcrum check` says beyond the config's own validation and the preflight it shares with
 * `fulcrum run` (src/control/preflight.ts: listen addresses, every secret file, ca files, which
 * fail the check): the capabilities the config needs (./capabilities.ts) and whether this
 * process holds them; an admin API beyond loopback (src/admin/server.ts's adminExposure, the one
 * owner of that text). These are notes and warnings, printed; they do not fail the check.
 */
import { adminExposure } from '../admin/server.ts';
import type { Config } from '../config/schema.ts';
import { checkCapabilities, uncertainWarning } from './capabilities.ts';

/** "note: …" and "warning: …" lines. */
export async function checkNotes(config: Config): Promise<string[]> {
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
  return notes;
}
