/**
 * The admin API's errors. Every error response is `{ "error": { "code", "message" } }` with one of
 * these stable codes (documented in the README); messages name the field and the value, as the
 * config loader's do.
 */
import { ERROR_CODES, FulcrumError, type ErrorCode } from '../errors.ts';

export const ADMIN_ERRORS = {
  /** 400: a body or parameter is malformed; the message names the field and the value. */
  BAD_REQUEST: ERROR_CODES.ADMIN_BAD_REQUEST,
  /** 401: the bearer token is missing or wrong; nothing was changed. */
  UNAUTHORIZED: ERROR_CODES.ADMIN_UNAUTHORIZED,
  /** 403: changes are disabled because admin.token_file is not set. */
  CHANGES_DISABLED: ERROR_CODES.ADMIN_CHANGES_DISABLED,
  /** 404: no such route, service or backend. */
  NOT_FOUND: ERROR_CODES.ADMIN_NOT_FOUND,
  /** 405: the route exists but not with this method. */
  METHOD_NOT_ALLOWED: ERROR_CODES.ADMIN_METHOD_NOT_ALLOWED,
  /** 409: the change conflicts with the current state (a backend that already exists, a full table). */
  CONFLICT: ERROR_CODES.ADMIN_CONFLICT,
  /** 413: the request body is larger than the limit. */
  BODY_TOO_LARGE: ERROR_CODES.ADMIN_BODY_TOO_LARGE,
  /** 421: the Host header names another server (DNS rebinding); see admin.allowed_hosts. */
  HOST_NOT_ALLOWED: ERROR_CODES.ADMIN_HOST_NOT_ALLOWED,
  /** 415: the body is not JSON. */
  UNSUPPORTED_MEDIA_TYPE: ERROR_CODES.ADMIN_UNSUPPORTED_MEDIA_TYPE,
  /** 422: a reload was refused because the config file is invalid; `problems` lists each one. */
  CONFIG_INVALID: ERROR_CODES.CONFIG_INVALID,
  /** 422: a reload was refused because the config file could not be read. */
  CONFIG_UNREADABLE: ERROR_CODES.CONFIG_UNREADABLE,
  /** 501: the running instance has no such facility (reload without a config file). */
  NOT_AVAILABLE: ERROR_CODES.ADMIN_NOT_AVAILABLE,
  /** 502: `fulcrum upgrade`: the new process did not start serving; the message says why (the old one keeps serving). */
  UPGRADE_FAILED: ERROR_CODES.UPGRADE,
  /** 500: a bug; the message says what failed. */
  INTERNAL: ERROR_CODES.ADMIN_INTERNAL,
} as const;

/** An error that becomes an HTTP response with this status and code. */
export class AdminHttpError extends FulcrumError {
  readonly status: number;
  readonly details: Record<string, unknown> | undefined;
  constructor(status: number, code: ErrorCode, message: string, details?: Record<string, unknown>) {
    super(code, message);
    this.name = 'AdminHttpError';
    this.status = status;
    this.details = details;
  }
}

export const badRequest = (field: string, message: string, value: unknown): AdminHttpError =>
  new AdminHttpError(400, ADMIN_ERRORS.BAD_REQUEST, `${field}: ${message}, got ${formatValue(value)}`, { field });

export const notFound = (message: string): AdminHttpError => new AdminHttpError(404, ADMIN_ERRORS.NOT_FOUND, message);

export function formatValue(v: unknown): string {
  if (v === undefined) return 'nothing';
  let s: string;
  try {
    s = JSON.stringify(v);
  } catch {
    // Nested too deep for JSON.stringify (a body of 30000 "[" fits in the limit): String() would
    // recurse as deep and throw too, turning the 400 into a 500.
    s = Array.isArray(v) ? '[…]' : typeof v === 'object' && v !== null ? '{…}' : String(v);
  }
  return s.length > 80 ? s.slice(0, 77) + '...' : s;
}
