/**
 * Which config file a command means, the one rule for `fulcrum run`, `check` and `ctl`/`status`:
 * `--config FILE`, else the FULCRUM_CONFIG environment variable, else /etc/fulcrum/fulcrum.yaml.
 * Dependency-free, so src/cli.ts can print the default in its help without loading anything.
 */
import { existsSync } from 'node:fs';

export const DEFAULT_CONFIG = '/etc/fulcrum/fulcrum.yaml';
export const CONFIG_ENV = 'FULCRUM_CONFIG';

export interface ConfigChoice {
  file: string;
  /** Where the name came from, for messages. */
  from: '--config' | typeof CONFIG_ENV | 'default';
}

/**
 * The config file named by the flag or the environment, else the default when it exists;
 * undefined when none is named and the default does not exist. A named file is returned whether
 * or not it exists (reading it says what is wrong with it).
 */
export function chooseConfig(flag: unknown, env: NodeJS.ProcessEnv = process.env): ConfigChoice | undefined {
  if (typeof flag === 'string' && flag !== '') return { file: flag, from: '--config' };
  const fromEnv = env[CONFIG_ENV];
  if (fromEnv) return { file: fromEnv, from: CONFIG_ENV };
  return existsSync(DEFAULT_CONFIG) ? { file: DEFAULT_CONFIG, from: 'default' } : undefined;
}

/** What to say when chooseConfig found nothing. */
export const NO_CONFIG = `--config FILE is required (${CONFIG_ENV} is not set and ${DEFAULT_CONFIG} does not exist)`;
