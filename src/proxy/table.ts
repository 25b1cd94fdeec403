/**
 * The service table the workers run from: each service's settings from the config, its engine
 * index and its backends (live and draining, with where to connect) from the balancer, so runtime
 * additions and removals are included. Built on the control path (start, reload, runtime
 * add/remove) and sent whole to every worker.
 */
import type { Config, HostPort } from '../config/schema.ts';
import type { ServiceEntry } from './messages.ts';

/** What the table needs from the balancer (src/balancer/balancer.ts's Balancer has it). */
export interface BalancerView {
  serviceIndex(name: string): number;
  targets(name: string): Array<{ index: number; address: string; target: HostPort; removed?: boolean }>;
}

/** Milliseconds as the kernel's whole seconds (rounded up: a keepalive never comes early). */
const seconds = (ms: number): number => Math.ceil(ms / 1000);

export function buildServiceTable(config: Config, balancer: BalancerView): ServiceEntry[] {
  const table: ServiceEntry[] = [];
  for (const s of config.services) {
    const index = balancer.serviceIndex(s.name);
    if (index < 0) continue; // not in the engine: nothing could be picked for it
    table.push({
      index,
      name: s.name,
      protocol: s.protocol,
      listen: { host: s.listen.host, port: s.listen.port },
      hashed: s.balance === 'maglev',
      hash_key: s.hash_key,
      retries: s.retries,
      timeouts: { connect: s.timeouts.connect, idle: s.timeouts.idle, proxy_header: s.timeouts.proxy_header },
      accept_proxy: s.accept_proxy,
      send_proxy: s.send_proxy,
      tcp_keepalive: s.tcp_keepalive ? { idle: seconds(s.tcp_keepalive.idle), interval: seconds(s.tcp_keepalive.interval), count: s.tcp_keepalive.count } : null,
      propagate_reset: s.propagate_reset,
      queue: { max: s.protocol === 'udp' ? 0 : s.queue.max, timeout: s.queue.timeout, when_down: s.protocol === 'udp' ? 0 : s.queue.when_down },
      udp: { responses: s.udp.responses, max_datagram: s.udp.max_datagram },
      backends: balancer.targets(s.name).map((b) => ({ index: b.index, host: b.target.host, port: b.target.port, address: b.address, removed: b.removed === true })),
    });
  }
  return table;
}
