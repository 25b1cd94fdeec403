/**
 * A PostgreSQL switchover the client never sees (queue.when_down): a `role: primary` service in
 * front of a primary and a streaming standby (PostgreSQL 15, real clusters on 127.3.14.x); a
 * client opens a connection every 10 ms while the primary is stopped and the standby promoted.
 * Between the old primary going down and the new one being seen, new connections wait instead of
 * being refused: 0 refused, and every connection opened once the old primary was down reaches the
 * new primary (`pg_is_in_recovery()` false, its port) through fulcrum.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FulcrumHandle } from '../../src/main.ts';
import { SC_QUEUED_NO_BACKEND } from '../../src/shm/layout.ts';
import { reasons, serviceCounter, startProxy } from '../proxy/harness.ts';
import { monitorClient, pgPair, primaryServiceYaml, whoAnswersAt, type PgCluster, type PgPair } from '../helpers/postgres.ts';
import { freePort } from '../helpers/net.ts';
import { waitUntilOnly } from './switchover.ts';

const HOST = '127.3.14.1';
const LISTEN = '127.3.14.10';
const PASSWORD = 'mon-Pa55';
const INTERVAL = 150;
/** The client opens a connection this often … */
const EVERY_MS = 10;
/** … for this long after the promote, and never more than MAX_ATTEMPTS in all. */
const AFTER_PROMOTE_MS = 1500;
const MAX_ATTEMPTS = 600;

let pair: PgPair | undefined;
let pg1: PgCluster;
let pg2: PgCluster;
let fulcrum: FulcrumHandle;
let listenPort: number;

beforeAll(async () => {
  pair = await pgPair(HOST, PASSWORD);
  ({ primary: pg1, standby: pg2 } = pair);
  listenPort = await freePort(LISTEN);
  // max_connections keeps the burst that waited for the new primary under the server's own
  // max_connections (40, the probes included): the rest wait for a slot.
  fulcrum = await startProxy(primaryServiceYaml(`${LISTEN}:${listenPort}`, pair, INTERVAL, 2, `
    max_connections: 20
    queue: { max: 1000, timeout: 10s, when_down: 5s }
    retries: 1`));
}, 120_000);

afterAll(async () => {
  await fulcrum?.stop('test done');
  await pair?.stop();
});

interface Attempt {
  /** Date.now() when the connection was opened. */
  at: number;
  port?: number;
  inRecovery?: boolean;
  /** The error's SQLSTATE (a server's answer), or its message (the connection failed). */
  error?: string;
}

/** One client connection through fulcrum: which server answered and whether it is in recovery. */
async function attempt(): Promise<Attempt> {
  const a: Attempt = { at: Date.now() };
  const c = monitorClient(LISTEN, listenPort, PASSWORD, 15_000);
  try {
    await c.connect();
    const row = (await c.query('SELECT pg_is_in_recovery() AS r, inet_server_port() AS p')).rows[0];
    a.port = Number(row.p);
    a.inRecovery = row.r;
  } catch (err) {
    const e = err as { code?: string; message: string };
    a.error = e.code ?? e.message;
  } finally {
    await c.end().catch(() => {});
  }
  return a;
}

describe('queue.when_down: a PostgreSQL switchover under a client connecting every 10 ms', () => {
  it('refuses none, and every connection from the old primary\'s stop on reaches the new primary', async () => {
    await waitUntilOnly(() => whoAnswersAt(LISTEN, listenPort, PASSWORD), pg1.port, 5000);

    const attempts: Promise<Attempt>[] = [];
    let stopAt = Infinity;
    const opener = (async () => {
      while (Date.now() < stopAt && attempts.length < MAX_ATTEMPTS) {
        attempts.push(attempt());
        await new Promise((r) => setTimeout(r, EVERY_MS));
      }
    })();

    await new Promise((r) => setTimeout(r, 200)); // connections to the old primary first
    const tStop = Date.now();
    await pg1.stop('fast');
    const tStopped = Date.now();
    await pg2.promote();
    const tPromoted = Date.now();
    stopAt = tPromoted + AFTER_PROMOTE_MS;
    await opener;
    const results = await Promise.all(attempts);

    const before = results.filter((a) => a.at < tStop);
    const during = results.filter((a) => a.at >= tStop && a.at < tStopped);
    const after = results.filter((a) => a.at >= tStopped);
    const summary = `${results.length} connections: ${before.length} before the stop, ${during.length} while pg1 stopped, ` +
      `${after.length} after (stop took ${tStopped - tStop}ms, promote ${tPromoted - tStopped}ms)`;
    expect(after.length, summary).toBeGreaterThanOrEqual(50);

    // Not one refused by fulcrum, at any time: nothing closed for want of a backend, no failed
    // connect shown to a client, no wait that ran out.
    expect(reasons(fulcrum, 'pg'), summary).toMatchObject({ no_backend: 0, connect_failed: 0, queue_timeout: 0, queue_full: 0 });
    // The gap was there, and connections waited through it.
    expect(serviceCounter(fulcrum, 'pg', SC_QUEUED_NO_BACKEND), summary).toBeGreaterThan(0);

    // Opened before the old primary was down: a primary answered (the old one, or the new one
    // after a wait), or — in flight as it stopped — the old one ended them itself ("shutting
    // down", or closing a session it had not finished authenticating), as a client connected to
    // it directly would see; fulcrum refused none (the counters above).
    for (const a of [...before, ...during]) {
      if (a.error === undefined) expect(a.inRecovery === false && (a.port === pg1.port || a.port === pg2.port), summary).toBe(true);
    }
    // From the old primary's stop on: every connection reached the new primary.
    const wrong = after.filter((a) => a.error !== undefined || a.port !== pg2.port || a.inRecovery !== false);
    expect(wrong.slice(0, 5), summary).toEqual([]);
  });
});
