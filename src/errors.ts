/**
 * Every error fulcrum reports to an operator has a stable code (documented in the README) and a
 * message that names the setting and the value. One class per condition, as undici and fastify do.
 */
export class FulcrumError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'FulcrumError';
  }
}

/** One problem in a config file: where it is, and what is wrong with the value found there. */
export interface ConfigProblem {
  path: string;
  message: string;
}

/** A config that failed validation: every problem, not just the first. */
export class ConfigInvalidError extends FulcrumError {
  readonly problems: ConfigProblem[];
  readonly file: string;
  constructor(file: string, problems: ConfigProblem[]) {
    super('FULCRUM_ERR_CONFIG_INVALID', `${file}: ${problems.length} problem${problems.length === 1 ? '' : 's'}:\n` +
      problems.map((p) => `  ${p.path ? p.path + ': ' : ''}${p.message}`).join('\n'));
    this.problems = problems;
    this.file = file;
  }
}

/** The config file could not be read or is not YAML at all. */
export class ConfigUnreadableError extends FulcrumError {
  readonly file: string;
  readonly why: string;
  constructor(file: string, why: string, cause?: unknown) {
    super('FULCRUM_ERR_CONFIG_UNREADABLE', `${file}: ${why}`, { cause });
    this.file = file;
    this.why = why;
  }
}

/** A feature needs a newer Node.js than the one running. */
export class NodeTooOldError extends FulcrumError {
  constructor(feature: string, needed: string) {
    super('FULCRUM_ERR_NODE_TOO_OLD', `${feature} needs Node.js ${needed} or later; this is ${process.version}`);
  }
}

/** The WebAssembly engine failed its start-up check against the shared-memory layout. */
export class EngineMismatchError extends FulcrumError {
  constructor(message: string) {
    super('FULCRUM_ERR_ENGINE_MISMATCH', message);
  }
}

/** A listener could not bind. */
export class ListenError extends FulcrumError {
  constructor(what: string, address: string, cause: unknown) {
    super('FULCRUM_ERR_LISTEN', `${what}: cannot listen on ${address}: ${(cause as Error)?.message ?? cause}`, { cause });
  }
}
