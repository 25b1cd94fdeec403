/**
 * Errors of the BGP part, each with a stable code (README "Error codes" and "Scale-out with BGP").
 * Messages name the setting or the command, and the value.
 */
import { FulcrumError } from '../errors.ts';

/** The speaker cannot run: a binary it needs is missing, or gobgpd did not come up. */
export class BgpSpeakerError extends FulcrumError {
  constructor(message: string, cause?: unknown) {
    super('FULCRUM_ERR_BGP_SPEAKER', message, { cause });
  }
}

/** Announcing or withdrawing a VIP failed; the message holds the command line and its stderr. */
export class BgpRouteError extends FulcrumError {
  readonly command: string;
  constructor(command: string, stderr: string, cause?: unknown) {
    super('FULCRUM_ERR_BGP_ROUTE', `${command}: ${stderr.trim() || (cause as Error)?.message || 'failed'}`, { cause });
    this.command = command;
  }
}
