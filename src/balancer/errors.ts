/** The balancer's error conditions, one class each, with stable codes (see the README). */
import { FulcrumError } from '../errors.ts';

/** No service of that name (admin API, health events racing a reload). */
export class UnknownServiceError extends FulcrumError {
  constructor(name: string) {
    super('FULCRUM_ERR_UNKNOWN_SERVICE', `service: no service named ${JSON.stringify(name)}`);
  }
}

/** No backend of that address in that service. */
export class UnknownBackendError extends FulcrumError {
  constructor(service: string, address: string) {
    super('FULCRUM_ERR_UNKNOWN_BACKEND', `service ${JSON.stringify(service)}: no backend ${JSON.stringify(address)}`);
  }
}

/** A value given to the balancer at run time is out of range or conflicts (weight, address, state). */
export class BalancerArgumentError extends FulcrumError {
  constructor(message: string) {
    super('FULCRUM_ERR_BAD_ARGUMENT', message);
  }
}

/** The shared memory has no free service or backend slot (removed backends still draining hold theirs). */
export class CapacityError extends FulcrumError {
  constructor(message: string) {
    super('FULCRUM_ERR_CAPACITY', message);
  }
}
