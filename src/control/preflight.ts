/**
 * What a config needs of this machine before anything of it starts: the one list that
 * `fulcrum run` (startFulcrum) refuses a config by and `fulcrum check` reports, so the two
 * cannot disagree (check passed `localhost:X` beside `127.0.0.1:X`, a missing admin.token_file,
 * a missing ha.secret_file, while run refused them).
 *
 * - listen addresses as the kernel sees them (src/config/listen.ts): two services on one
 *   resolved address, a name that does not resolve; and the admin server on a service's address;
 * - every secret file, read by the one reader (src/config/secrets.ts) with its setting's rule:
 *   the admin token, the heartbeat key (at least 16 bytes), the probes' and Sentinel's
 *   passwords (a probe with an unreadable password file fails every probe: its backends would
 *   all be down from the first round);
 * - every probe's ca_file is readable.
 *
 * Not here: whether a listener can be bound now (the workers bind at start; a `check` beside a
 * running fulcrum would find its own ports taken), capabilities, and bgp's binaries (cli check).
 * Every problem is listed at once, as the loader lists the file's own (ConfigInvalidError).
 */
import { closeSync, openSync } from 'node:fs';
import { checkListens, resolveHost } from '../config/listen.ts';
import { formatHostPort, type Config } from '../config/schema.ts';
import { readSecretFileSync, SecretFileError, type SecretSetting } from '../config/secrets.ts';
import { ConfigInvalidError, type ConfigProblem } from '../errors.ts';
import { readSecret as readHeartbeatKey } from '../failover/heartbeat.ts';

/** Each secret file of `config`: where it is set, the setting whose rule applies, and the path. */
function secretFiles(config: Config): { path: string; setting: SecretSetting; file: string }[] {
  const out: { path: string; setting: SecretSetting; file: string }[] = [];
  if (config.admin?.token_file) out.push({ path: 'admin.token_file', setting: 'admin.token_file', file: config.admin.token_file });
  if (config.ha) out.push({ path: 'ha.secret_file', setting: 'ha.secret_file', file: config.ha.secret_file });
  config.services.forEach((s, i) => {
    for (const kind of ['redis', 'postgres', 'mysql'] as const) {
      const file = s.health?.[kind]?.password_file;
      if (file) out.push({ path: `services[${i}].health.${kind}.password_file`, setting: `health.${kind}.password_file`, file });
    }
    const sentinel = s.discover?.redis_sentinel?.password_file;
    if (sentinel) out.push({ path: `services[${i}].discover.redis_sentinel.password_file`, setting: 'discover.redis_sentinel.password_file', file: sentinel });
  });
  return out;
}

/** The problem of one secret file, in the reader's words less the setting (the path says it). */
function secretProblem(path: string, setting: SecretSetting, file: string): ConfigProblem | undefined {
  try {
    if (setting === 'ha.secret_file') readHeartbeatKey(file);
    else readSecretFileSync(setting, file);
    return undefined;
  } catch (err) {
    const message = err instanceof SecretFileError ? err.message.slice(setting.length + 1) : `${file}: ${(err as Error).message}`;
    return { path, message };
  }
}

/** Each probe's ca_file that cannot be opened for reading. */
function caFileProblems(config: Config): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  config.services.forEach((s, i) => {
    for (const kind of ['redis', 'postgres', 'mysql'] as const) {
      const file = s.health?.[kind]?.ca_file;
      if (!file) continue;
      try {
        closeSync(openSync(file, 'r'));
      } catch (err) {
        problems.push({ path: `services[${i}].health.${kind}.ca_file`, message: `${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})` });
      }
    }
  });
  return problems;
}

/** The admin server on an address a service listens on (TCP): one of the two could not bind it. */
async function adminProblems(config: Config): Promise<ConfigProblem[]> {
  if (!config.admin) return [];
  const admin = await resolveHost(config.admin.listen.host).catch(() => undefined);
  if (admin === undefined) return [{ path: 'admin.listen', message: `cannot resolve ${config.admin.listen.host}, got ${JSON.stringify(formatHostPort(config.admin.listen))}` }];
  const problems: ConfigProblem[] = [];
  await Promise.all(config.services.map(async (s, i) => {
    if (s.protocol !== 'tcp' || s.listen.port !== config.admin!.listen.port) return;
    const ip = await resolveHost(s.listen.host).catch(() => undefined);
    if (ip === admin) problems.push({ path: 'admin.listen', message: `is the address of services[${i}].listen (${formatHostPort(s.listen)}), got ${JSON.stringify(formatHostPort(config.admin!.listen))}` });
  }));
  return problems;
}

/** Throws ConfigInvalidError listing every problem above; resolves when there is none. */
export async function preflight(config: Config, file = '<config>'): Promise<void> {
  const problems: ConfigProblem[] = [];
  try {
    // No bind: at start the workers bind (and say which address is taken); check must not.
    await checkListens(undefined, config, { file, skipBind: () => true });
  } catch (err) {
    if (err instanceof ConfigInvalidError) problems.push(...err.problems);
    else problems.push({ path: 'services', message: (err as Error).message });
  }
  problems.push(...await adminProblems(config));
  problems.push(...fileProblems(config));
  if (problems.length > 0) throw new ConfigInvalidError(file, problems);
}

/** Every secret file and ca_file that cannot be used. */
function fileProblems(config: Config): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  for (const s of secretFiles(config)) {
    const p = secretProblem(s.path, s.setting, s.file);
    if (p) problems.push(p);
  }
  problems.push(...caFileProblems(config));
  return problems;
}

/**
 * The files part of the preflight, for a reload of the file (src/control/reload.ts): a reload
 * that names a probe password or a ca_file that cannot be used is refused as start-up would
 * refuse it, and the running config stays. (Listen addresses have the reload's own check, which
 * knows the listeners it holds; the admin server's are its reload hook's.)
 */
export function preflightFiles(config: Config, file = '<config>'): void {
  const problems = fileProblems(config);
  if (problems.length > 0) throw new ConfigInvalidError(file, problems);
}
