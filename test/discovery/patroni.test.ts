/**
 * Patroni discovery, against a small HTTP server of the test's own that serves a /cluster answer
 * shaped as Patroni 3 documents it (Patroni itself, with etcd, does not fit the suite's time: the
 * reader is tested on that answer, not on a live cluster). On 127.3.25.x: the leader and the
 * replicas read from it; the first URL that answers is used; bad answers are clear errors; a
 * switchover in the served answer is followed by fulcrum.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { patroniDiscoverySchema } from '../../src/config/schema.ts';
import { patroniSource, readCluster } from '../../src/discovery/patroni.ts';
import type { FulcrumHandle } from '../../src/main.ts';
import { runCtl } from '../../src/admin/ctl.ts';
import { withPage } from '../helpers/browser.ts';
import { startProxy } from '../proxy/harness.ts';
import { connectClient, freePort, readLine, startNamedServer, waitFor, type TestServer } from '../helpers/net.ts';

const HOST = '127.3.25.1';
const LISTEN = '127.3.25.10';

/** A /cluster answer as Patroni 3 gives it: a leader, a streaming replica, a sync standby, a stopped replica. */
function cluster(leader: string, pgPort: number, others: string[]): unknown {
  return {
    scope: 'demo',
    members: [
      { name: 'pg-a', role: 'leader', state: 'running', api_url: `http://${leader}:8008/patroni`, host: leader, port: pgPort, timeline: 4 },
      { name: 'pg-b', role: 'replica', state: 'streaming', api_url: `http://${others[0]}:8008/patroni`, host: others[0], port: pgPort, timeline: 4, lag: 0 },
      { name: 'pg-c', role: 'sync_standby', state: 'streaming', api_url: `http://${others[1]}:8008/patroni`, host: others[1], port: pgPort, timeline: 4, lag: 16 },
      { name: 'pg-d', role: 'replica', state: 'stopped', api_url: 'http://127.3.25.9:8008/patroni', host: '127.3.25.9', port: pgPort, timeline: 3, lag: 'unknown' },
    ],
  };
}

let body: string | (() => void) = '';
let status = 200;
let api: http.Server;
let apiUrl: string;

beforeAll(async () => {
  api = http.createServer((req, res) => {
    if (req.url !== '/cluster') return void res.writeHead(404).end();
    if (typeof body === 'function') return body(); // never answers
    res.writeHead(status, { 'content-type': 'application/json' }).end(body);
  });
  await new Promise<void>((r) => api.listen(0, HOST, r));
  apiUrl = `http://${HOST}:${(api.address() as AddressInfo).port}`;
});
afterAll(async () => {
  api.closeAllConnections();
  await new Promise((r) => api.close(r));
});

const settings = (x: Record<string, unknown> = {}) => patroniDiscoverySchema.parse({ urls: [apiUrl], timeout: '2s', ...x });
const addresses = (a: { backends: { address: { host: string; port: number } }[] }) => a.backends.map((b) => `${b.address.host}:${b.address.port}`);

describe('the /cluster reader', () => {
  it('the leader for role primary; running or streaming replicas (with Patroni\'s lag in the notes) for role replica', () => {
    const c = cluster('127.3.25.2', 5432, ['127.3.25.3', '127.3.25.4']);
    expect(addresses(readCluster(c, 'primary', 'test'))).toEqual(['127.3.25.2:5432']);
    const r = readCluster(c, 'replica', 'test');
    expect(addresses(r)).toEqual(['127.3.25.3:5432', '127.3.25.4:5432']);
    expect(r.notes).toEqual(['member pg-b: lag 0', 'member pg-c: lag 16']);
    // primary_as_backup: the leader joins the replicas as their backup.
    expect(readCluster(c, 'replica', 'test', true).backends.map((b) => `${b.address.host}${b.backup ? ' backup' : ''}`)).toEqual(['127.3.25.2 backup', '127.3.25.3', '127.3.25.4']);
    // Patroni < 3 says master.
    expect(addresses(readCluster({ members: [{ name: 'x', role: 'master', state: 'running', host: '10.0.0.1', port: 5432 }] }, 'primary', 'test'))).toEqual(['10.0.0.1:5432']);
  });

  it('bad answers: no members, two leaders, a host name — clear errors or notes', () => {
    expect(() => readCluster({ hello: 1 }, 'primary', 'patroni x')).toThrow('patroni x: not a Patroni /cluster answer (no members list)');
    const two = { members: [{ name: 'a', role: 'leader', state: 'running', host: '10.0.0.1', port: 5432 }, { name: 'b', role: 'leader', state: 'running', host: '10.0.0.2', port: 5432 }] };
    expect(() => readCluster(two, 'primary', 'patroni x')).toThrow('patroni x: 2 running leaders in one answer (10.0.0.1:5432, 10.0.0.2:5432): not applied');
    const named = readCluster({ members: [{ name: 'a', role: 'replica', state: 'streaming', host: 'db-a.internal', port: 5432 }] }, 'replica', 'x');
    expect(named).toEqual({ backends: [], notes: ['member a: host "db-a.internal" is not an IP address'] });
  });
});

describe('the Patroni source over HTTP', () => {
  it('asks the first URL that answers; garbage, an error status and silence are clear errors', async () => {
    const signal = new AbortController().signal;
    body = JSON.stringify(cluster('127.3.25.2', 5432, ['127.3.25.3', '127.3.25.4']));
    status = 200;
    const dead = `http://${HOST}:${await freePort(HOST)}`;
    expect(addresses(await patroniSource(settings({ urls: [dead, apiUrl] })).ask(signal))).toEqual(['127.3.25.2:5432']);
    await expect(patroniSource(settings({ urls: [dead] })).ask(signal)).rejects.toMatchObject({ message: expect.stringMatching(new RegExp(`^patroni: no URL answered \\(${dead.replace(/\./g, '\\.')}: ECONNREFUSED`)) });
    body = '<html>not json';
    await expect(patroniSource(settings()).ask(signal)).rejects.toMatchObject({ code: 'FULCRUM_ERR_DISCOVERY', message: `patroni: no URL answered (${apiUrl}: not JSON)` });
    status = 503;
    await expect(patroniSource(settings()).ask(signal)).rejects.toMatchObject({ message: `patroni: no URL answered (${apiUrl}: status 503)` });
    status = 200;
    body = () => {};
    await expect(patroniSource(settings({ timeout: '300ms' })).ask(signal)).rejects.toMatchObject({ message: `patroni: no URL answered (${apiUrl}: no answer within 300ms)` });
    api.closeAllConnections();
  });
});

describe('fulcrum follows a switchover in /cluster', () => {
  let fulcrum: FulcrumHandle;
  let port: number;
  const servers: TestServer[] = [];
  let pgPort: number;

  beforeAll(async () => {
    pgPort = await freePort('127.3.25.2');
    for (const [i, h] of ['127.3.25.2', '127.3.25.3', '127.3.25.4'].entries()) servers.push(await startNamedServer(`pg-${'abc'[i]}`, h, pgPort));
    body = JSON.stringify(cluster('127.3.25.2', pgPort, ['127.3.25.3', '127.3.25.4']));
    status = 200;
    port = await freePort(LISTEN);
    fulcrum = await startProxy(`
workers: 1
logging: { level: warn }
admin: { listen: ${LISTEN}:${await freePort(LISTEN)} }
services:
  - name: pg-write
    listen: ${LISTEN}:${port}
    discover:
      patroni: { urls: [${apiUrl}], role: primary, interval: 200ms }
    backends: []
`);
  });
  afterAll(async () => {
    await fulcrum?.stop('test done');
    for (const s of servers) await s.close();
  });

  async function who(): Promise<string> {
    const s: Socket = await connectClient(port, LISTEN);
    try {
      return await readLine(s, 2000);
    } finally {
      s.destroy();
    }
  }

  it('writes go to the leader; after the switchover, to the new leader', async () => {
    await waitFor(async () => (await who().catch(() => '')) === 'pg-a', 5000, 'the leader pg-a');
    body = JSON.stringify(cluster('127.3.25.3', pgPort, ['127.3.25.2', '127.3.25.4']));
    await waitFor(async () => (await who().catch(() => '')) === 'pg-b', 2000, 'the new leader pg-b');
    for (let i = 0; i < 5; i++) expect(await who()).toBe('pg-b');
    expect(fulcrum.discovery.describe()[0]).toMatchObject({ source: 'patroni', query: `primary from GET /cluster on ${apiUrl}`, last_answer: '1 backend' });
  });

  it('/api/status and fulcrum status say where the backends come from, when the source last answered and what it said', async () => {
    const admin = `http://${LISTEN}:${fulcrum.config.admin!.listen.port}`;
    const status = await (await fetch(`${admin}/api/status`)).json() as { discovery: Array<Record<string, unknown>> };
    expect(status.discovery).toEqual([expect.objectContaining({
      service: 'pg-write', source: 'patroni', query: `primary from GET /cluster on ${apiUrl}`, last_answer: '1 backend', backends: 1, errors: 0, holding_since: null,
    })]);
    expect(Date.now() - (status.discovery[0].last_answer_at as number)).toBeLessThan(2000);
    // The status page, under the service's name.
    await withPage(`${admin}/`, async (page) => {
      const line = page.locator('section[data-service="pg-write"] [data-field="discovery"]');
      await line.filter({ hasText: 'last answer' }).waitFor({ timeout: 5000 });
      expect(await line.textContent()).toMatch(new RegExp(`^from patroni primary from GET /cluster on ${apiUrl.replace(/\./g, '\\.')} · last answer .+: 1 backend$`));
    });

    body = '<html>';
    await waitFor(() => fulcrum.discovery.describe()[0].last_error !== null, 2000, 'a failed query');
    const out: string[] = [];
    expect(await runCtl(['status', '--admin', admin], { out: (l) => out.push(l), err: (l) => out.push(l) })).toBe(0);
    const text = out.join('\n');
    expect(text).toContain(`discovery    pg-write: patroni primary from GET /cluster on ${apiUrl}, 1 backend`);
    expect(text).toMatch(/last answer \d{4}-\d\d-\d\dT[\d:.]+Z \(\d+ s ago\): 1 backend/);
    expect(text).toContain(`last error`);
    expect(text).toContain(`patroni: no URL answered (${apiUrl}: not JSON)`);
    expect(text).toContain('keeping the last set since');
  });
});
