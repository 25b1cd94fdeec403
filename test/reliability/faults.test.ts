/**
 * Faults under load: steady traffic through a running fulcrum (2 workers, TCP health checks,
 * the admin API) while, one after another, a backend is killed and restarted, the process runs
 * out of file descriptors, the admin port is flooded with bodies nobody authorised, clients reset
 * mid-stream, and a worker crashes. What must hold throughout (issue 16's standing test):
 * - 0 corrupted bytes: every echoed chunk is compared with what was sent;
 * - 0 hung sessions: every round trip answers or fails within 5 s, and once the traffic stops the
 *   service's active count returns to 0;
 * - no healthy backend marked down: the only health transitions are the killed backend's;
 * - full recovery: after each fault, and at the end, new connections succeed.
 * A client whose session dies with its backend or its worker is a failure the client sees and
 * retries (as a real client would): counted, not hidden, and not a corruption.
 * (No failover here: the pair's heartbeat under load is test/failover's, in network namespaces.)
 */
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TransitionEvent } from '../../src/events.ts';
import { api, startStack, type Stack } from '../admin/stack.ts';
import { connectClient, readLine, startNamedServer, waitFor } from '../helpers/net.ts';
import { activeCounts } from '../proxy/harness.ts';

const HOST = '127.5.90.1';
const CLIENTS = 12;
let stack: Stack;
const transitions: TransitionEvent[] = [];
/** Probes the health monitor could not make here (out of descriptors): skipped, not failed. */
let skippedProbes = 0;

interface Tally {
  sessions: number;
  roundTrips: number;
  corrupt: number;
  hung: number;
  failed: number;
  /** Connects refused by this process's own descriptor limit (the exhaustion phase). */
  local: number;
}
const tally: Tally = { sessions: 0, roundTrips: 0, corrupt: 0, hung: 0, failed: 0, local: 0 };
let running = true;
/** While set, clients open no new sessions (the descriptor table stays as full as the test made it). */
let paused = false;

/** One round trip of `data` on `s`: 'ok', 'corrupt', 'closed' or 'hung' (no answer within 5 s). */
function roundTrip(s: Socket, data: Buffer): Promise<'ok' | 'corrupt' | 'closed' | 'hung'> {
  return new Promise((resolve) => {
    let got = Buffer.alloc(0);
    const done = (r: 'ok' | 'corrupt' | 'closed' | 'hung'): void => {
      clearTimeout(timer);
      s.off('data', onData);
      s.off('close', onClose);
      s.off('end', onClose);
      resolve(r);
    };
    const onData = (d: Buffer): void => {
      got = Buffer.concat([got, d]);
      if (!data.subarray(0, got.length).equals(got.subarray(0, data.length))) return done('corrupt');
      if (got.length >= data.length) done(got.length === data.length ? 'ok' : 'corrupt');
    };
    const onClose = (): void => done('closed');
    const timer = setTimeout(() => done('hung'), 5000);
    s.on('data', onData);
    // The client is half-open capable (connectClient): the other side's FIN is an 'end' alone.
    s.once('close', onClose);
    s.once('end', onClose);
    s.write(data);
  });
}

/** A client: sessions of 20 round trips of 1–4 KiB, one after another, until the test ends. */
async function client(i: number): Promise<void> {
  const from = `127.5.91.${i + 1}`;
  while (running) {
    if (paused) {
      await new Promise((r) => setTimeout(r, 20));
      continue;
    }
    let s: Socket;
    try {
      s = await connectClient(stack.servicePort, HOST, from);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EMFILE') tally.local++;
      else tally.failed++;
      await new Promise((r) => setTimeout(r, 20));
      continue;
    }
    s.on('error', () => {});
    tally.sessions++;
    try {
      await readLine(s, 5000); // the backend's greeting
      for (let k = 0; k < 20 && running; k++) {
        const r = await roundTrip(s, randomBytes(1024 + ((i * 31 + k * 17) % 3072)));
        if (r === 'ok') tally.roundTrips++;
        else {
          tally[r === 'closed' ? 'failed' : r]++;
          if (r === 'hung' && process.env.FAULTS_VERBOSE) process.stderr.write(`faults: hung at ${new Date().toISOString()} client ${i} round ${k}\n`);
          break;
        }
      }
    } catch {
      tally.failed++;
    } finally {
      s.destroy();
    }
  }
}

/** A fresh connection through fulcrum answers (the greeting of some backend). */
async function serves(): Promise<boolean> {
  try {
    const s = await connectClient(stack.servicePort, HOST, '127.5.92.1');
    try {
      return /^b\d$/.test(await readLine(s, 3000));
    } finally {
      s.destroy();
    }
  } catch {
    return false;
  }
}

const progress = async (what: string, min = 50): Promise<void> => {
  const start = tally.roundTrips;
  await waitFor(() => tally.roundTrips >= start + min, 20_000, `traffic flowing ${what}`);
  if (process.env.FAULTS_VERBOSE) process.stderr.write(`faults: ${what}: ${JSON.stringify(tally)}\n`);
};

let traffic: Promise<void[]>;

beforeAll(async () => {
  stack = await startStack({
    host: HOST,
    backends: 3,
    serviceExtra: '    health: { type: tcp, interval: 300ms, timeout: 300ms, rise: 1, fall: 3 }\n',
  });
  stack.handle.events.on('health-transition', (t) => transitions.push(t));
  stack.handle.events.on('health-probe', (p) => { if (p.skipped !== undefined) skippedProbes++; });
  await waitFor(() => stack.handle.health.describe().every((b) => !b.pending), 5000, 'first probes');
  transitions.length = 0;
  traffic = Promise.all(Array.from({ length: CLIENTS }, (_, i) => client(i)));
  await progress('at start');
});

afterAll(async () => {
  running = false;
  await traffic;
  await stack?.close();
});

describe('faults under load', () => {
  it('a backend killed and restarted: only it goes down and up', async () => {
    const victim = stack.backends[0];
    const port = victim.port;
    await victim.close();
    await waitFor(() => transitions.some((t) => t.address === victim.address && !t.up), 5000, 'the killed backend marked down');
    await progress('with a backend down');
    stack.backends[0] = await startNamedServer('b0', HOST, port);
    await waitFor(() => transitions.some((t) => t.address === victim.address && t.up), 5000, 'the restarted backend marked up');
    await progress('after the restart');
    expect(transitions.every((t) => t.address === victim.address)).toBe(true);
  });

  it('the process out of file descriptors: no backend marked down, and it serves again after', async () => {
    const before = transitions.length;
    const held: Socket[] = [];
    let exhausted = false;
    try {
      // Idle connections through fulcrum (each takes up to three descriptors here: the client's
      // and fulcrum's two) until this process can open no more, bounded in count. The traffic
      // opens no new sessions meanwhile, so the table stays full and the probes meet the limit
      // (those under way keep their round trips: they need no new descriptor).
      paused = true;
      for (let i = 0; i < 8000 && !exhausted; i++) {
        try {
          const c = await connectClient(stack.servicePort, HOST, `127.5.93.${1 + (i % 200)}`);
          c.on('error', () => {});
          held.push(c);
        } catch (err) {
          exhausted = (err as NodeJS.ErrnoException).code === 'EMFILE';
          if (!exhausted) throw err;
        }
      }
      expect(exhausted).toBe(true);
      if (process.env.FAULTS_VERBOSE) process.stderr.write(`faults: exhausted at ${new Date().toISOString()} with ${held.length} held\n`);
      // Several probe intervals (fall is 3 × 300 ms) at the limit: probes that cannot open a
      // socket are skipped, not counted against the backends.
      const stalledAt = Date.now();
      const skippedBefore = skippedProbes;
      await waitFor(() => Date.now() - stalledAt > 2000 && skippedProbes > skippedBefore, 10_000, 'probes skipped at the limit');
      expect(transitions.slice(before)).toEqual([]);
    } finally {
      for (const s of held) s.destroy();
      paused = false;
    }
    await waitFor(serves, 10_000, 'serving after the descriptors came back');
    await progress('after the exhaustion');
    expect(transitions.slice(before)).toEqual([]);
  });

  it('the admin port flooded with unauthorised bodies: an operator is still served', async () => {
    const flood: Socket[] = [];
    for (let i = 0; i < 64; i++) {
      const s = connect({ host: HOST, port: stack.adminPort, localAddress: `127.5.94.${1 + (i % 32)}` });
      s.on('error', () => {});
      s.write(`POST /api/services/web/backends HTTP/1.1\r\nHost: ${HOST}:${stack.adminPort}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n`);
      const timer = setInterval(() => { if (!s.destroyed) s.write('400\r\n' + 'x'.repeat(1024) + '\r\n'); }, 5);
      s.once('close', () => clearInterval(timer));
      flood.push(s);
    }
    try {
      for (let i = 0; i < 5; i++) expect((await api(stack.admin, 'GET', '/api/status')).status).toBe(200);
      await progress('during the admin flood');
    } finally {
      for (const s of flood) s.destroy();
    }
  });

  it('clients that reset mid-stream leave no session behind and harm no other', async () => {
    for (let i = 0; i < 50; i++) {
      const s = await connectClient(stack.servicePort, HOST, `127.5.95.${1 + (i % 50)}`);
      s.on('error', () => {});
      s.write(randomBytes(8192)); // mid-stream: the echo is on its way back
      s.resetAndDestroy();
    }
    await progress('after the resets');
  });

  it('a worker that crashes: restarted, and the traffic goes on', async () => {
    const sessions = tally.sessions;
    if (process.env.FAULTS_VERBOSE) process.stderr.write(`faults: crash at ${new Date().toISOString()}\n`);
    await stack.handle.pool.crashWorker(0);
    await waitFor(() => tally.sessions > sessions + 20, 20_000, 'new sessions after the crash');
    await progress('after the crash');
    await waitFor(serves, 5000, 'serving after the crash');
  });

  it('in all: 0 corrupted bytes, 0 hung sessions, only the killed backend changed state, full recovery', async () => {
    running = false;
    await traffic;
    const addresses = stack.backends.map((b) => b.address);
    await waitFor(() => activeCounts(stack.handle, 'web', addresses).active === 0, 10_000, 'every session ended');
    expect(tally).toMatchObject({ corrupt: 0, hung: 0 });
    expect(tally.roundTrips).toBeGreaterThan(500);
    expect(transitions.every((t) => t.address === addresses[0])).toBe(true);
    expect(stack.handle.health.describe().every((b) => b.state === 'up')).toBe(true);
    expect(await serves()).toBe(true);
  });
});
