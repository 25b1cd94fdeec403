/**
 * Errors of the failover part, each with a stable code (listed in the README's high availability
 * section; ha.secret_file's come from config/secrets.ts). Messages name the setting or the command, and the value.
 */
import { FulcrumError } from '../errors.ts';

/** ha.bind / ha.peer must be IPv4 literals: the heartbeat carries the sender's address. */
export class HaAddressError extends FulcrumError {
  constructor(setting: string, value: string) {
    super('FULCRUM_ERR_HA_ADDRESS', `${setting}: must be an IPv4 address with a port, got ${JSON.stringify(value)}`);
  }
}

/** The heartbeat socket could not bind to ha.bind. */
export class HaBindError extends FulcrumError {
  constructor(address: string, cause: unknown) {
    super('FULCRUM_ERR_HA_BIND', `ha.bind: cannot bind the heartbeat socket to ${address}: ${(cause as Error)?.message ?? cause}`, { cause });
  }
}

/** A command that moves the VIP failed; the message holds the command line and its stderr. */
export class VipCommandError extends FulcrumError {
  readonly command: string;
  readonly stderr: string;
  constructor(code: 'FULCRUM_ERR_VIP_ADD' | 'FULCRUM_ERR_VIP_REMOVE' | 'FULCRUM_ERR_GARP', command: string, stderr: string, cause?: unknown) {
    super(code, `${command}: ${commandFailure(stderr, cause)}`, { cause });
    this.command = command;
    this.stderr = stderr;
  }
}

/** What went wrong, in one line: the command's stderr, else its exit code or signal, else the spawn error (a missing binary). */
function commandFailure(stderr: string, cause: unknown): string {
  const e = cause as (Error & { code?: unknown; signal?: unknown }) | undefined;
  if (stderr.trim()) return stderr.trim();
  if (typeof e?.code === 'number') return `exited with code ${e.code}`;
  if (typeof e?.signal === 'string') return `killed by ${e.signal}`;
  return e?.message?.trim() || 'failed';
}
