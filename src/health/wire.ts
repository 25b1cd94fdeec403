/**
 * How health plugs into a running fulcrum (called from src/main.ts). The routes:
 *
 *   health 'transition'          ─▶ balancer.setHealth (writes the record, rebuilds the ring;
 *                                   a down + on_marked_down: shutdown_sessions is then routed to
 *                                   pool.killBackend by main.ts's 'backend-state' route)
 *   events 'connect-failed'      ─▶ health.observeConnectFailure (passive health)
 *   events 'backend-state' maint ─▶ health.setAdminState (maint is not probed; leaving it probes at once)
 *   health 'probe' / 'transition' ─▶ events 'health-probe' / 'health-transition' (metrics, status page)
 *
 * Reloads call health.update(config); stop calls health.stop().
 */
import type { EventEmitter } from 'node:events';
import type { Balancer, BackendStateEvent } from '../balancer/balancer.ts';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../observability/log.ts';
import { HealthMonitor, type ProbeEvent, type TransitionEvent } from './monitor.ts';

export interface HealthWireParts {
  balancer: Pick<Balancer, 'setHealth'>;
  /** The handle's event bus: carries 'connect-failed' and 'backend-state' in, health events out. */
  events: EventEmitter;
  logger: Logger;
}

export function wireHealth(parts: HealthWireParts, config: Config): HealthMonitor {
  const log = parts.logger.child({ component: 'health-wire' });
  const health = new HealthMonitor(config, { logger: parts.logger });

  health.on('transition', (ev: TransitionEvent) => {
    try {
      parts.balancer.setHealth(ev.service, ev.address, ev.up, `health: ${ev.cause}`);
    } catch (err) {
      // A backend removed by a reload while its probe was in flight: nothing left to mark.
      log.debug({ err, service: ev.service, backend: ev.address }, 'health transition for a backend no longer in the balancer');
    }
    parts.events.emit('health-transition', ev);
  });
  health.on('probe', (ev: ProbeEvent) => parts.events.emit('health-probe', ev));

  parts.events.on('connect-failed', (ev: { service: string; address: string }) => {
    health.observeConnectFailure(ev.service, ev.address);
  });
  parts.events.on('backend-state', (ev: BackendStateEvent) => {
    if (ev.to === 'maint') health.setAdminState(ev.service, ev.address, 'maint');
    else if (ev.from === 'maint') health.setAdminState(ev.service, ev.address, 'ready');
  });
  return health;
}
