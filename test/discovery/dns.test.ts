/**
 * DNS discovery against a real dnsmasq (Debian's package) on 127.3.23.53, backends on 127.3.23.x:
 * - type A: an address added to the zone (hosts file rewritten, SIGHUP) takes connections within
 *   interval + 1 s; one removed is drained — its live session keeps running, new ones go elsewhere;
 * - a resolver that stops answering (SIGSTOP): the last set is kept for `hold`, the failure is
 *   logged once and counted; past hold the discovered backends go and the service falls to its
 *   listed (backup) backend; answering again, they come back;
 * - SRV: ports from the records, weights onto backend weights, a higher priority as backup;
 * - bad input: a name that does not exist, a server that answers garbage, more records than a
 *   service holds — clear errors or a cut said out loud, the running set untouched.
 */
import dgram from 'node:dgram';
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dnsDiscoverySchema } from '../../src/config/schema.ts';
import { queryDns } from '../../src/discovery/dns.ts';
import type { SourceStatus } from '../../src/discovery/index.ts';
import type { FulcrumHandle } from '../../src/main.ts';
import { MAX_MEMBERS } from '../../src/shm/layout.ts';
import { startProxy } from '../proxy/harness.ts';
import { startDnsmasq, type Dnsmasq } from '../helpers/dnsmasq.ts';
import { connectClient, freePort, readLine, startNamedServer, staysFalse, waitFor, type TestServer } from '../helpers/net.ts';

const LISTEN = '127.3.23.10';
const DNS = '127.3.23.53';
const INTERVAL = 300;
const HOLD = 2000;
const hosts = ['127.3.23.1', '127.3.23.2', '127.3.23.3'];

let dns: Dnsmasq;
let backendPort: number;
const servers: TestServer[] = [];
let backup: TestServer;

beforeAll(async () => {
  backendPort = await freePort(hosts[0]);
  for (const [i, h] of hosts.entries()) servers.push(await startNamedServer(`b${i + 1}`, h, backendPort));
  backup = await startNamedServer('backup', '127.3.23.9', backendPort);
  dns = await startDnsmasq(DNS, {
    hosts: [`${hosts[0]} db.test`],
    srv: ['_pg._tcp.db.test,t1.test,5432,0,10', '_pg._tcp.db.test,t2.test,5433,0,3000', '_pg._tcp.db.test,t3.test,5434,1,1'],
  });
});
afterAll(async () => {
  await dns?.stop();
  for (const s of [...servers, backup]) await s?.close();
});

const dnsSettings = (x: Record<string, unknown>) => dnsDiscoverySchema.parse({ resolvers: [dns.address], timeout: '300ms', ...x });

describe('discover.dns against dnsmasq', () => {
  let fulcrum: FulcrumHandle;
  let port: number;

  beforeAll(async () => {
    port = await freePort(LISTEN);
    fulcrum = await startProxy(`
workers: 1
logging: { level: warn }
services:
  - name: db
    listen: ${LISTEN}:${port}
    balance: roundrobin
    health: { type: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 1 }
    discover:
      dns: { name: db.test, type: A, port: ${backendPort}, resolvers: [${dns.address}], interval: ${INTERVAL}ms, hold: ${HOLD}ms, timeout: 200ms }
    backends:
      - { address: 127.3.23.9:${backendPort}, backup: true }
`);
  });
  afterAll(async () => {
    await fulcrum?.stop('test done');
  });

  const live = (): string[] => fulcrum.balancer.describe().find((s) => s.name === 'db')!.backends.filter((b) => !b.removed && !b.backup).map((b) => b.address).sort();
  const status = (): SourceStatus => fulcrum.discovery.describe().find((s) => s.service === 'db')!;
  async function whoAnswers(): Promise<{ name: string; socket: Socket }> {
    const socket = await connectClient(port, LISTEN);
    return { name: await readLine(socket, 2000), socket };
  }
  async function names(n: number): Promise<Set<string>> {
    const seen = new Set<string>();
    for (let i = 0; i < n; i++) {
      const { name, socket } = await whoAnswers();
      seen.add(name);
      socket.destroy();
    }
    return seen;
  }

  it('follows additions within interval + 1 s and removals without cutting live sessions', async () => {
    await waitFor(() => live().join() === `${hosts[0]}:${backendPort}`, 5000, 'the first answer applied');
    // A backend that joins a running service with checks takes connections after its first probe
    // (until then the listed backup serves): wait for that, then only b1 answers.
    await waitFor(async () => { const seen = await names(4); return seen.size === 1 && seen.has('b1'); }, 3000, 'b1 serving after its first probe');
    expect(status()).toMatchObject({ source: 'dns', query: `A db.test via ${dns.address}`, last_answer: '1 backend', errors: 0, holding_since: null });

    // Addition.
    await dns.setHosts([`${hosts[0]} db.test`, `${hosts[1]} db.test`]);
    const added = performance.now();
    await waitFor(() => live().length === 2, INTERVAL + 1000, 'b2 applied within interval + 1 s');
    expect(performance.now() - added).toBeLessThanOrEqual(INTERVAL + 1000);
    await waitFor(async () => (await names(4)).has('b2'), 2000, 'b2 taking connections');

    // Removal: a session on b1 stays up while b1 leaves.
    let held: { name: string; socket: Socket } | undefined;
    for (let i = 0; i < 10 && held?.name !== 'b1'; i++) {
      held?.socket.destroy();
      held = await whoAnswers();
    }
    expect(held!.name).toBe('b1');
    await dns.setHosts([`${hosts[1]} db.test`]);
    await waitFor(() => live().join() === `${hosts[1]}:${backendPort}`, INTERVAL + 1000, 'b1 removed');
    expect(await names(6)).toEqual(new Set(['b2']));
    // The held session still echoes: drained, not cut.
    held!.socket.write('still here\n');
    expect(await readLine(held!.socket, 2000)).toBe('still here');
    const b1 = fulcrum.balancer.describe().find((s) => s.name === 'db')!.backends.find((b) => b.address === `${hosts[0]}:${backendPort}`);
    expect(b1?.removed).toBe(true);
    held!.socket.destroy();
    await waitFor(() => !fulcrum.balancer.describe().find((s) => s.name === 'db')!.backends.some((b) => b.address === `${hosts[0]}:${backendPort}`), 3000, 'b1 gone once its session ended');
  });

  it('a resolver that stops answering: the last set is kept for hold (logged once, counted), then the listed backup serves', async () => {
    await dns.setHosts([`${hosts[1]} db.test`, `${hosts[2]} db.test`]);
    await waitFor(() => live().length === 2, INTERVAL + 1000, 'b2 and b3');
    dns.pause();
    try {
      await waitFor(() => status().last_error !== null, 3000, 'the first failed query');
      const failedAt = performance.now();
      expect(status().last_error).toBe(`dns A db.test: no answer from the resolvers (timeout) (ETIMEOUT)`);
      expect(status().holding_since).not.toBeNull();
      // Kept until hold has passed since the last good answer (at most one interval before the first failure).
      await staysFalse(() => live().length !== 2, HOLD - INTERVAL - 300 - (performance.now() - failedAt), 'the set kept during hold');
      expect(await names(4)).toEqual(new Set(['b2', 'b3']));
      await waitFor(() => live().length === 0, HOLD + 2000, 'the discovered set removed past hold');
      expect(status().errors).toBeGreaterThanOrEqual(2);
      await waitFor(async () => (await names(2)).has('backup'), 2000, 'the backup serving');
      expect(await names(3)).toEqual(new Set(['backup']));
    } finally {
      dns.resume();
    }
    await waitFor(() => live().length === 2, INTERVAL + 2000, 'the set back once the resolver answers');
    expect(status()).toMatchObject({ last_error: null, holding_since: null, last_answer: '2 backends' });
  });

  it('a file reload keeps the discovered backends', async () => {
    const before = live();
    await fulcrum.reload(fulcrum.config);
    expect(live()).toEqual(before);
  });
});

describe('queryDns against dnsmasq', () => {
  it('SRV: ports from the records, weights scaled onto 1–256, a higher priority as backup', async () => {
    await dns.setHosts([`${hosts[0]} t1.test`, `${hosts[1]} t2.test`, `${hosts[2]} t3.test`]);
    const answer = await queryDns(dnsSettings({ name: '_pg._tcp.db.test', type: 'SRV' }));
    expect(answer.backends.map((b) => ({ a: `${b.address.host}:${b.address.port}`, w: b.weight, backup: b.backup }))).toEqual([
      { a: `${hosts[0]}:5432`, w: 1, backup: false }, // 10 × 256 / 3000 rounds to 1
      { a: `${hosts[1]}:5433`, w: 256, backup: false },
      { a: `${hosts[2]}:5434`, w: 1, backup: true },
    ]);
    // A target that does not resolve is left out and named.
    await dns.setHosts([`${hosts[1]} t2.test`]);
    const partial = await queryDns(dnsSettings({ name: '_pg._tcp.db.test', type: 'SRV' }));
    expect(partial.backends.map((b) => b.address.port)).toEqual([5433]);
    expect(partial.notes).toEqual(['target t1.test: the name does not exist (NXDOMAIN) (ENOTFOUND)', 'target t3.test: the name does not exist (NXDOMAIN) (ENOTFOUND)']);
  });

  it('a name that does not exist is an empty answer with a clear error', async () => {
    await expect(queryDns(dnsSettings({ name: 'nope.test', type: 'A', port: 80 }))).rejects.toMatchObject({
      code: 'FULCRUM_ERR_DISCOVERY', empty: true, message: 'dns A nope.test: the name does not exist (NXDOMAIN) (ENOTFOUND)',
    });
  });

  it('a server that answers garbage: a malformed answer, said as such', async () => {
    const garbage = dgram.createSocket('udp4');
    garbage.on('message', (_msg, rinfo) => garbage.send(Buffer.from('this is not DNS at all'), rinfo.port, rinfo.address));
    await new Promise<void>((r) => garbage.bind(0, DNS, r));
    try {
      const at = `${DNS}:${garbage.address().port}`;
      await expect(queryDns(dnsSettings({ name: 'db.test', type: 'A', port: 80, resolvers: [at] }))).rejects.toMatchObject({
        code: 'FULCRUM_ERR_DISCOVERY', empty: false, message: expect.stringMatching(/^dns A db\.test: (a malformed answer \(not DNS\) \(EBADRESP\)|no answer from the resolvers \(timeout\) \(ETIMEOUT\))$/),
      });
    } finally {
      garbage.close();
    }
  });

  it(`more records than a service holds: all returned here; compose cuts them to ${MAX_MEMBERS} (index.test.ts)`, async () => {
    const many = Array.from({ length: 3000 }, (_, i) => `127.4.${Math.floor(i / 250)}.${(i % 250) + 1} many.test`);
    await dns.setHosts(many);
    const answer = await queryDns(dnsSettings({ name: 'many.test', type: 'A', port: 80, timeout: '2s' }));
    expect(answer.backends.length).toBe(3000);
  });
});
