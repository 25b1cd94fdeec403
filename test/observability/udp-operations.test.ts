/**
 * Operations on a UDP service, through a whole fulcrum with its admin server: a reload adds the
 * service on the port number of the TCP one (another protocol), its flows and datagrams show in
 * /metrics and /api/services, a reload changes its backends, the runtime API drains one.
 * Addresses: 127.5.17.x.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectClient, readLine, waitFor } from '../helpers/net.ts';
import { startUdpBackend, UdpClient, type UdpBackend } from '../helpers/udp.ts';
import { runCtl } from '../../src/admin/ctl.ts';
import { api, startStack, type Stack } from '../admin/stack.ts';

const HOST = '127.5.17.1';
let stack: Stack;
let game: UdpBackend[] = [];
const clients: UdpClient[] = [];
let baseConfig = '';

const udpService = (backends: UdpBackend[]): string => `  - name: arena
    protocol: udp
    listen: ${HOST}:${stack.servicePort}
    balance: maglev
    hash_key: source_ip_port
    max_connections: 3
    udp: { max_datagram: 64 }
    backends:
${backends.map((b) => `      - { address: ${b.address} }`).join('\n')}
`;

async function metrics(): Promise<string> {
  const r = await api(stack.admin, 'GET', '/metrics', undefined, null);
  expect(r.status).toBe(200);
  return r.body as string;
}

const sample = (text: string, series: string): number | undefined => {
  const line = text.split('\n').find((l) => l.startsWith(series + ' '));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
};

beforeAll(async () => {
  stack = await startStack({ host: HOST, backends: 1 });
  game = await Promise.all(['g0', 'g1'].map((n) => startUdpBackend(n, HOST)));
  baseConfig = readFileSync(stack.configFile, 'utf8');
  await stack.writeConfig(baseConfig + udpService([game[0]]));
  const r = await api(stack.admin, 'POST', '/api/reload');
  expect(r.status, JSON.stringify(r.body)).toBe(200);
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await stack?.close();
  await Promise.all(game.map((b) => b.close()));
});

describe('a UDP service in operations', () => {
  it('is added by a reload on the TCP service\'s port number, and both answer', async () => {
    const c = await UdpClient.open(HOST);
    clients.push(c);
    expect(await c.ask('hi', stack.servicePort, HOST)).toBe('g0|hi');
    const tcp = await connectClient(stack.servicePort, HOST);
    expect(await readLine(tcp)).toBe('b0');
    tcp.destroy();
  });

  it('shows flows, datagrams and drops by reason in /metrics and /api/services', async () => {
    const more = await Promise.all(Array.from({ length: 3 }, () => UdpClient.open(HOST)));
    clients.push(...more);
    // Two more flows fit (max_connections 3 with the first); the third is dropped (limit).
    expect(await more[0].ask('a', stack.servicePort, HOST)).toBe('g0|a');
    expect(await more[1].ask('b', stack.servicePort, HOST)).toBe('g0|b');
    expect(await more[2].ask('c', stack.servicePort, HOST, 300)).toBeNull();
    expect(await more[0].ask('x'.repeat(65), stack.servicePort, HOST, 300)).toBeNull();
    const text = await metrics();
    expect(sample(text, 'fulcrum_service_active_connections{service="arena"}')).toBe(3);
    expect(sample(text, 'fulcrum_service_connections_total{service="arena"}')).toBe(4);
    expect(sample(text, 'fulcrum_service_datagrams_in_total{service="arena"}')).toBe(3);
    expect(sample(text, 'fulcrum_service_datagrams_out_total{service="arena"}')).toBe(3);
    expect(sample(text, 'fulcrum_service_datagram_drops_total{service="arena",reason="limit"}')).toBe(1);
    expect(sample(text, 'fulcrum_service_datagram_drops_total{service="arena",reason="oversized"}')).toBe(1);
    expect(sample(text, 'fulcrum_service_datagram_drops_total{service="arena",reason="no_backend"}')).toBe(0);
    // Per backend: its flows (sessions), datagrams each way, drops it caused (none here: the oversized datagram was the client's).
    const g0 = `service="arena",backend="${game[0].address}"`;
    expect(sample(text, `fulcrum_backend_active_connections{${g0}}`)).toBe(3);
    expect(sample(text, `fulcrum_backend_connections_total{${g0}}`)).toBe(3);
    expect(sample(text, `fulcrum_backend_datagrams_in_total{${g0}}`)).toBe(3);
    expect(sample(text, `fulcrum_backend_datagrams_out_total{${g0}}`)).toBe(3);
    expect(sample(text, `fulcrum_backend_datagram_drops_total{${g0},reason="oversized"}`)).toBe(0);
    expect(sample(text, `fulcrum_backend_datagram_drops_total{${g0},reason="unreachable"}`)).toBe(0);
    // A TCP service has no datagram series.
    expect(text).not.toContain('fulcrum_service_datagrams_in_total{service="web"}');
    expect(text).not.toMatch(/fulcrum_backend_datagrams_in_total\{service="web"/);
    const r = await api(stack.admin, 'GET', '/api/services', undefined, null);
    const arena = r.body.services.find((s: any) => s.name === 'arena');
    expect(arena).toMatchObject({ protocol: 'udp', listen: `${HOST}:${stack.servicePort}`, active: 3 });
    expect(arena.counters).toMatchObject({ datagrams_in: 3, datagrams_out: 3, drops: { limit: 1, oversized: 1, no_backend: 0, unreachable: 0 } });
    expect(arena.backends[0].counters).toMatchObject({ connections: 3, datagrams_in: 3, datagrams_out: 3, drops: { oversized: 0, unreachable: 0 } });
    expect(r.body.services.find((s: any) => s.name === 'web').protocol).toBe('tcp');
    // fulcrum ctl list: flows, datagrams and drops for the UDP service.
    const out: string[] = [];
    expect(await runCtl(['list', '--admin', stack.admin], { out: (l) => out.push(l), err: (l) => out.push(l) })).toBe(0);
    expect(out).toContain(`arena  udp  ${HOST}:${stack.servicePort}  maglev   flows 3/3  created 4  datagrams in 3 out 3  dropped limit 1, oversized 1`);
    // …and per backend: flows now and created, failures, (bytes: added up once a second), datagrams each way.
    const row = out.find((l) => l.trim().startsWith(game[0].address))!.trim().split(/\s+/);
    expect([...row.slice(0, 6), ...row.slice(8)]).toEqual([game[0].address, 'up', '1', '3', '3', '0', '3', '3']);
  });

  it('a reload adds a backend to it; the runtime API drains one, and its flows stay', async () => {
    await stack.writeConfig(baseConfig + udpService(game));
    expect((await api(stack.admin, 'POST', '/api/reload')).status).toBe(200);
    const r = await api(stack.admin, 'POST', `/api/services/arena/backends/${encodeURIComponent(game[0].address)}/state`, { state: 'drain' });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    // The flows on g0 keep it (drain keeps existing flows)…
    expect(await clients[0].ask('again', stack.servicePort, HOST)).toBe('g0|again');
    // …and a new flow goes to g1. The three flows on g0 fill max_connections 3: a reload lifts it.
    const fresh = await UdpClient.open(HOST);
    clients.push(fresh);
    expect(await fresh.ask('full', stack.servicePort, HOST, 300)).toBeNull();
    await stack.writeConfig(baseConfig + udpService(game).replace('max_connections: 3', 'max_connections: 0'));
    expect((await api(stack.admin, 'POST', '/api/reload')).status).toBe(200);
    await waitFor(async () => (await fresh.ask('new', stack.servicePort, HOST, 300)) === 'g1|new', 5000, 'a new flow on g1');
  });
});
