/**
 * Every error fulcrum reports to an operator has a stable code (documented in the README) and a
 * message that names the setting and the value. One class per condition, as undici and fastify do.
 *
 * ERROR_CODES is the one list of codes: FulcrumError takes nothing else, the admin API's codes are
 * taken from it, relay.c's one code is in it, and test/errors.test.ts checks that the README
 * documents each one and that every code spelled in src/ is on the list.
 */
export const ERROR_CODES = {
  CONFIG_INVALID: 'FULCRUM_ERR_CONFIG_INVALID',
  CONFIG_UNREADABLE: 'FULCRUM_ERR_CONFIG_UNREADABLE',
  LISTEN: 'FULCRUM_ERR_LISTEN',
  WORKER: 'FULCRUM_ERR_WORKER',
  WORKER_START: 'FULCRUM_ERR_WORKER_START',
  RELAY: 'FULCRUM_ERR_RELAY',
  LAYOUT_MISMATCH: 'FULCRUM_ERR_LAYOUT_MISMATCH',
  ENGINE_MISMATCH: 'FULCRUM_ERR_ENGINE_MISMATCH',
  UNKNOWN_SERVICE: 'FULCRUM_ERR_UNKNOWN_SERVICE',
  UNKNOWN_BACKEND: 'FULCRUM_ERR_UNKNOWN_BACKEND',
  BAD_ARGUMENT: 'FULCRUM_ERR_BAD_ARGUMENT',
  CAPACITY: 'FULCRUM_ERR_CAPACITY',
  PROBE_SECRET: 'FULCRUM_ERR_PROBE_SECRET',
  ADMIN_TOKEN: 'FULCRUM_ERR_ADMIN_TOKEN',
  ADMIN_BAD_REQUEST: 'FULCRUM_ERR_ADMIN_BAD_REQUEST',
  ADMIN_UNAUTHORIZED: 'FULCRUM_ERR_ADMIN_UNAUTHORIZED',
  ADMIN_CHANGES_DISABLED: 'FULCRUM_ERR_ADMIN_CHANGES_DISABLED',
  ADMIN_NOT_FOUND: 'FULCRUM_ERR_ADMIN_NOT_FOUND',
  ADMIN_METHOD_NOT_ALLOWED: 'FULCRUM_ERR_ADMIN_METHOD_NOT_ALLOWED',
  ADMIN_CONFLICT: 'FULCRUM_ERR_ADMIN_CONFLICT',
  ADMIN_BODY_TOO_LARGE: 'FULCRUM_ERR_ADMIN_BODY_TOO_LARGE',
  ADMIN_HOST_NOT_ALLOWED: 'FULCRUM_ERR_ADMIN_HOST_NOT_ALLOWED',
  ADMIN_UNSUPPORTED_MEDIA_TYPE: 'FULCRUM_ERR_ADMIN_UNSUPPORTED_MEDIA_TYPE',
  ADMIN_NOT_AVAILABLE: 'FULCRUM_ERR_ADMIN_NOT_AVAILABLE',
  ADMIN_INTERNAL: 'FULCRUM_ERR_ADMIN_INTERNAL',
  HA_SECRET: 'FULCRUM_ERR_HA_SECRET',
  HA_ADDRESS: 'FULCRUM_ERR_HA_ADDRESS',
  HA_BIND: 'FULCRUM_ERR_HA_BIND',
  VIP_ADD: 'FULCRUM_ERR_VIP_ADD',
  VIP_REMOVE: 'FULCRUM_ERR_VIP_REMOVE',
  GARP: 'FULCRUM_ERR_GARP',
  BGP_SPEAKER: 'FULCRUM_ERR_BGP_SPEAKER',
  BGP_ROUTE: 'FULCRUM_ERR_BGP_ROUTE',
  DISCOVERY: 'FULCRUM_ERR_DISCOVERY',
  CAPABILITY: 'FULCRUM_ERR_CAPABILITY',
  UPGRADE: 'FULCRUM_ERR_UPGRADE',
} as const;
export type ErrorCode = (typeof ERROR_CODES)[keyof typeof ERROR_CODES];

export class FulcrumError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
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
