/**
 * The one reader of secret files: the heartbeat key (`ha.secret_file`), the admin token
 * (`admin.token_file`), the probes' passwords (`health.redis|postgres|mysql.password_file`) and
 * Sentinel's (`discover.redis_sentinel.password_file`).
 *
 * The rule (also in the README):
 *  - the file must be a regular file that neither group nor others may access (mode 0600 or
 *    0400, as ssh demands of a private key); otherwise it is refused with its path and its mode;
 *  - the secret is the file's bytes less one trailing line ending ("\n" or "\r\n", what `echo`
 *    or an editor adds); nothing else is trimmed, so a password may begin or end with a space;
 *  - an empty secret is an error;
 *  - a relative path in a config file is resolved against the config file's folder (not the
 *    working directory, which a service manager chooses): `resolveSecretPaths`, at load.
 *
 * Errors carry the setting's code (FULCRUM_ERR_HA_SECRET, FULCRUM_ERR_ADMIN_TOKEN,
 * FULCRUM_ERR_PROBE_SECRET) and read "<setting> <file>: <why>". Read when needed (start, reload,
 * and per probe, so a rotated password needs no reload): never on a hot path.
 */
import { closeSync, constants, fstatSync, openSync, readFileSync, type Stats } from 'node:fs';
import { open } from 'node:fs/promises';
import { isAbsolute, resolve } from 'node:path';
import { ERROR_CODES, FulcrumError } from '../errors.ts';
import { localErrorCode } from '../local-errors.ts';
import type { Config } from './schema.ts';

/** The settings that name a secret file, and the code their errors carry. */
const CODES = {
  'ha.secret_file': ERROR_CODES.HA_SECRET,
  'admin.token_file': ERROR_CODES.ADMIN_TOKEN,
  'health.redis.password_file': ERROR_CODES.PROBE_SECRET,
  'health.postgres.password_file': ERROR_CODES.PROBE_SECRET,
  'health.mysql.password_file': ERROR_CODES.PROBE_SECRET,
  'discover.redis_sentinel.password_file': ERROR_CODES.DISCOVERY,
} as const;
export type SecretSetting = keyof typeof CODES;

/** A secret file that cannot be used: missing, not a regular file, too open, or empty. */
export class SecretFileError extends FulcrumError {
  readonly file: string;
  constructor(setting: SecretSetting, file: string, why: string, cause?: unknown) {
    super(CODES[setting], `${setting} ${file}: ${why}`, { cause });
    this.file = file;
  }
}

// O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, for ever.
const OPEN_FLAGS = constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY;

/** What is wrong with the file as fstat describes it, or undefined. */
function statProblem(st: Stats): string | undefined {
  if (!st.isFile()) return 'is not a regular file';
  const mode = st.mode & 0o777;
  if ((mode & 0o077) !== 0) {
    return `is accessible by group or others (mode ${mode.toString(8).padStart(4, '0')}); a secret file must be 0600 or 0400: chmod 600 it`;
  }
  return undefined;
}

/** The file's bytes less one trailing "\n" or "\r\n"; refused when nothing is left. */
function secretOf(setting: SecretSetting, file: string, raw: Buffer): Buffer {
  let end = raw.length;
  if (end > 0 && raw[end - 1] === 0x0a) end--;
  if (end > 0 && raw[end] === 0x0a && raw[end - 1] === 0x0d) end--;
  if (end === 0) throw new SecretFileError(setting, file, 'is empty');
  return raw.subarray(0, end);
}

const why = (err: unknown): string => `cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`;

/** Reads a secret file by the rule above (start-up and reload: the heartbeat key, the admin token). */
export function readSecretFileSync(setting: SecretSetting, file: string): Buffer {
  let fd: number;
  try {
    fd = openSync(file, OPEN_FLAGS);
  } catch (err) {
    throw new SecretFileError(setting, file, why(err), err);
  }
  try {
    // fstat on the open file: what is checked is what is read.
    const problem = statProblem(fstatSync(fd));
    if (problem) throw new SecretFileError(setting, file, problem);
    return secretOf(setting, file, readFileSync(fd));
  } catch (err) {
    if (err instanceof SecretFileError) throw err;
    throw new SecretFileError(setting, file, why(err), err);
  } finally {
    closeSync(fd);
  }
}

/**
 * The same, without blocking the thread (the probes read their password before each probe). A
 * local error (EMFILE…: src/local-errors.ts) is thrown as it came, not as a SecretFileError: this
 * process is out of files, the file is fine, and the probe that wanted it is skipped, not failed.
 */
export async function readSecretFile(setting: SecretSetting, file: string): Promise<Buffer> {
  let handle;
  try {
    handle = await open(file, OPEN_FLAGS);
  } catch (err) {
    if (localErrorCode(err) !== undefined) throw err;
    throw new SecretFileError(setting, file, why(err), err);
  }
  try {
    const problem = statProblem(await handle.stat());
    if (problem) throw new SecretFileError(setting, file, problem);
    return secretOf(setting, file, await handle.readFile());
  } catch (err) {
    if (err instanceof SecretFileError || localErrorCode(err) !== undefined) throw err;
    throw new SecretFileError(setting, file, why(err), err);
  } finally {
    await handle.close();
  }
}

/**
 * Makes every file path of `config` absolute against `dir` (the config file's folder), in place:
 * the secret files above and the probes' ca_file (the config's only other paths; bgp's binaries
 * are found on PATH). Called by loadConfig: a config read from a file means its relative paths
 * from where it lies.
 */
export function resolveSecretPaths(config: Config, dir: string): Config {
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(dir, p));
  if (config.ha) config.ha.secret_file = abs(config.ha.secret_file);
  if (config.admin?.token_file) config.admin.token_file = abs(config.admin.token_file);
  for (const s of config.services) {
    const sentinel = s.discover?.redis_sentinel;
    if (sentinel?.password_file) sentinel.password_file = abs(sentinel.password_file);
    const h = s.health;
    if (!h) continue;
    for (const db of [h.redis, h.postgres, h.mysql]) {
      if (db?.password_file) db.password_file = abs(db.password_file);
      if (db?.ca_file) db.ca_file = abs(db.ca_file);
    }
  }
  return config;
}
