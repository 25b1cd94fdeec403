import { makeEnv, config, backends } from '../test/balancer/env.ts';
const e = makeEnv();
e.balancer.apply(config(
  { name: 'l8', balance: 'leastconn', backends: backends(8, (i) => ({ weight: 1 + (i % 3) })) },
  { name: 'l1024', balance: 'leastconn', backends: backends(1024, (i) => ({ weight: 1 + (i % 3), address: `10.1.${i >> 8}.${i & 255}:1` })) },
  { name: 'm1024', balance: 'maglev', backends: backends(1024, (i) => ({ weight: 1 + (i % 3), address: `10.2.${i >> 8}.${i & 255}:1` })) },
));
for (let round = 0; round < 3; round++) {
  for (const s of [0, 1, 2]) {
    let best = Infinity;
    for (let rep = 0; rep < 20; rep++) {
      const t = process.hrtime.bigint();
      for (let i = 0; i < 20000; i++) { const b = e.worker.acquire(s, i * 2654435761); e.worker.release(s, b); }
      best = Math.min(best, Number(process.hrtime.bigint() - t) / 20000);
    }
    console.log(['l8', 'l1024', 'm1024'][s], best.toFixed(0), 'ns (best of 20)');
  }
}
e.balancer.close();
