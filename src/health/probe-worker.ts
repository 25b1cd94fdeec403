/**
 * The probe thread (probe-thread.ts says why it is one): runs the probes the monitor asks for,
 * concurrently, each with its own AbortController, and posts each result. Nothing here catches
 * what a driver throws out of a socket callback: the thread ends, and the main thread starts another.
 */
import { parentPort } from 'node:worker_threads';
import type { FromProbeThread, ToProbeThread } from './probe-thread.ts';
import { loadProbe } from './probes/index.ts';
import type { ProbeResult } from './probes/probe.ts';

const port = parentPort!;
const controllers = new Map<number, AbortController>();

port.on('message', (m: ToProbeThread) => {
  if (m.type === 'abort') {
    controllers.get(m.id)?.abort();
    return;
  }
  const controller = new AbortController();
  controllers.set(m.id, controller);
  const started = performance.now();
  Promise.resolve(m.probe)
    .then((type) => loadProbe(type)) // an unknown type is this probe's failure, not the thread's end
    .then((probe) => probe(m.target, m.settings, controller.signal))
    .catch((err: unknown): ProbeResult => ({ ok: false, reason: `probe error: ${(err as Error)?.message ?? err}`, latency_ms: performance.now() - started }))
    .then((result) => {
      controllers.delete(m.id);
      port.postMessage({ type: 'result', id: m.id, result } satisfies FromProbeThread);
    });
});
port.postMessage({ type: 'ready' } satisfies FromProbeThread);
