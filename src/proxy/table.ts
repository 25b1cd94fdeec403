/**
 * The service table the workers run from: each service's settings from the config, its engine
 * index and its backends from the balancer (so runtime additions and removals are included).
 * Built on the control path (start, reload, runtime add/remove) and sent whole to every worker.
 */
import { parseHostPort, type Config } from '../config/schema.ts';
import type { BackendEntry, ServiceEntry } from './messages.ts';

/** What the table needs from the balancer (src/balancer/balancer.ts's Balancer has it). */
export interface BalancerView {
  describe(): Array<{ name: string; index: number; backends: Array<{ index: number; address: string }> }>;
}

export function buildServiceTable(config: Config, balancer: BalancerView): ServiceEntry[] {
  const live = new Map(balancer.describe().map((d) => [d.name, d]));
  const table: ServiceEntry[] = [];
  for (const s of config.services) {
    const d = live.get(s.name);
    if (d === undefined || d.index < 0) continue; // not in the engine: nothing could be picked for it
    const backends: BackendEntry[] = [];
    for (const b of d.backends) {
      const hp = parseHostPort(b.address);
      if (hp !== undefined) backends.push({ index: b.index, host: hp.host, port: hp.port, address: b.address });
    }
    table.push({
      index: d.index,
      name: s.name,
      listen: { host: s.listen.host, port: s.listen.port },
      hashed: s.balance === 'maglev',
      hash_key: s.hash_key,
      retries: s.retries,
      timeouts: { connect: s.timeouts.connect, idle: s.timeouts.idle, proxy_header: s.timeouts.proxy_header },
      accept_proxy: s.accept_proxy,
      send_proxy: s.send_proxy,
      queue: { max: s.queue.max, timeout: s.queue.timeout },
      backends,
    });
  }
  return table;
}
