/**
 * `node bench/bgp/run.ts [--runs 10] [--events kill,stop,drain] [--out bench/out/bgp.md]`
 *
 * Scale-out events in the same network namespaces as the tests (test/bgp/lab.ts): three nodes
 * running the real `bin/fulcrum run` with `speaker: gobgp` (liveness 1 s, hold 3 s, drain 1 s),
 * an FRR router (timers 1 3, ECMP over L4 hash). A client opens one connection every 10 ms
 * through the VIP for the whole run (at most 64 in flight), 250 ms timeout each for kill -9 and
 * SIGSTOP, 4.5 s for the drain (a client held back by the quiesce retransmits its SYN after the
 * 1 s initial RTO: it is slow, not lost). For each event, --runs times on the nodes in turn:
 *   - route: from the signal until the router's kernel route lost the node's next hop (polled every 5 ms);
 *   - clients ok: from the signal until the client's last failed attempt started (0 when none failed),
 *     i.e. from then on every new connection succeeded;
 *   - slowest: the longest an attempt of the event's window took to succeed (a held-back client's wait);
 *   - lost: client attempts that failed in the event's window.
 * The node is then brought back (restart, or SIGCONT) and all three next hops awaited. Root only.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { netnsAvailable, ROOT, sleep } from '../../test/helpers/netns.ts';
import { BgpLab } from '../../test/bgp/lab.ts';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '10' },
    events: { type: 'string', default: 'kill,stop,drain' },
    out: { type: 'string', default: join(ROOT, 'bench/out/bgp.md') },
  },
});
const RUNS = Math.max(1, Math.min(50, Number(values.runs)));
if (!netnsAvailable()) {
  process.stderr.write('bench/bgp needs root and iproute2 (network namespaces), frr and gobgpd\n');
  process.exit(1);
}

type Kind = 'kill -9' | 'SIGSTOP' | 'SIGTERM (drain)';
interface Sample { kind: Kind; node: number; route: number; clientsOk: number; slowest: number; lost: number }
const EVENTS: Record<string, Kind> = { kill: 'kill -9', stop: 'SIGSTOP', drain: 'SIGTERM (drain)' };
const kinds = values.events!.split(',').map((e) => {
  if (!(e in EVENTS)) throw new Error(`--events: expected kill, stop or drain, got ${JSON.stringify(e)}`);
  return EVENTS[e];
});

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const lab = await BgpLab.create('bgpb');
const samples: Sample[] = [];
try {
  await Promise.all(lab.nodes.map((n) => lab.start(n)));
  await lab.waitNextHops([1, 2, 3], 20_000);
  let i = 0;
  for (const kind of kinds) {
    // Wall-clock epoch ms on both sides: the client prints Date.now() per attempt.
    const loop = lab.clientLoop(10, RUNS * 25_000, kind === 'SIGTERM (drain)' ? 4500 : 250);
    await sleep(1000);
    for (let r = 0; r < RUNS; r++, i++) {
      const node = (i % 3) + 1;
      const others = lab.nodes.filter((n) => n !== node);
      const t0wall = Date.now();
      const t0 = performance.now();
      lab.kill(node, kind === 'kill -9' ? 'SIGKILL' : kind === 'SIGSTOP' ? 'SIGSTOP' : 'SIGTERM');
      await lab.waitNextHops(others, 10_000);
      const route = performance.now() - t0;
      // The event's window: until 2 s after the route changed (flows settle), before the node
      // returns; its attempts are all over 4.5 s later (the drain's timeout).
      await sleep(2000);
      const windowEnd = Date.now();
      await sleep(kind === 'SIGTERM (drain)' ? 4600 : 300);
      const window = loop.results.filter((x) => x.t >= t0wall && x.t < windowEnd);
      const failed = window.filter((x) => !x.ok);
      const clientsOk = failed.length ? Math.max(0, Math.max(...failed.map((x) => x.t)) - t0wall) : 0;
      const slowest = Math.max(0, ...window.filter((x) => x.ok).map((x) => x.done - x.t));
      samples.push({ kind, node, route, clientsOk, slowest, lost: failed.length });
      process.stdout.write(`${kind} lb${node}: route ${route.toFixed(0)} ms, clients ok after ${clientsOk} ms, slowest ok ${slowest} ms, lost ${failed.length}\n`);
      if (kind === 'SIGSTOP') {
        lab.kill(node, 'SIGCONT');
      } else {
        await lab.running.get(node)!.exited;
        lab.running.delete(node);
        await lab.start(node);
      }
      await lab.waitNextHops([1, 2, 3], 30_000);
      await sleep(1000);
    }
    loop.stop();
    await loop.done;
  }
} finally {
  await lab.destroy();
}

const rows = kinds.map((kind) => {
  const s = samples.filter((x) => x.kind === kind);
  const f = (xs: number[]) => `${median(xs).toFixed(0)} / ${Math.max(...xs).toFixed(0)}`;
  return `| ${kind} | ${s.length} | ${f(s.map((x) => x.route))} | ${f(s.map((x) => x.clientsOk))} | ${f(s.map((x) => x.slowest))} | ${f(s.map((x) => x.lost))} |`;
});
const report = `### Scale-out by BGP: node events

\`node bench/bgp/run.ts --runs ${RUNS} --events ${values.events}\` — ${new Date().toISOString()}, ${cpus().length} × ${cpus()[0]?.model.trim() ?? 'cpu'}, Node ${process.version}.
Three nodes (\`speaker: gobgp\`, liveness 1 s, hold 3 s, drain 1 s) behind FRR 8.4 (timers 1 3, ECMP, L4 hash);
one client connection every 10 ms through the VIP for the whole run (timeout 250 ms; 4.5 s for the drain).

| event | runs | route withdrawn, ms (median / max) | clients all ok after, ms (median / max) | slowest success, ms (median / max) | connections lost (median / max) |
|---|---|---|---|---|---|
${rows.join('\n')}

- *route withdrawn*: from the signal until the router's kernel route lost the node's next hop.
- *clients all ok after*: from the signal until the last failed client attempt started (0: none failed).
- *slowest success*: the longest a successful attempt of the window took (the drain: a client held back by the quiesce, served after its SYN retransmit).
- *connections lost*: failed client attempts in the event's window (signal + route change + 2 s).
`;
mkdirSync(dirname(values.out!), { recursive: true });
writeFileSync(values.out!, report);
process.stdout.write(report);
