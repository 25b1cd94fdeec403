/** Discovery's error condition, with its stable code (see the README). */
import { FulcrumError } from '../errors.ts';

/**
 * A discovery source could not give a usable answer (no answer, a malformed one, a name that does
 * not resolve, more records than the layout holds): the running set is kept (`hold`).
 * `empty`: the source answered that there is nothing (NXDOMAIN, NODATA) rather than failing.
 */
export class DiscoveryError extends FulcrumError {
  readonly empty: boolean;
  constructor(message: string, options: { cause?: unknown; empty?: boolean } = {}) {
    super('FULCRUM_ERR_DISCOVERY', message, { cause: options.cause });
    this.empty = options.empty ?? false;
  }
}
