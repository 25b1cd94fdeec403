/**
 * UDP services through a real fulcrum (two workers), on both data paths (the js-path project runs
 * this file again): flows, integrity and affinity at 1,000 sockets, idle expiry, flows moving off
 * a backend that goes away, PROXY v2 on every datagram, bad input, a flood of new source ports past
 * max_connections, a silent backend, a backend answering ICMP port unreachable.
 * Addresses: 127.17.0.0/16 (backends on 127.17.1.x, clients on 127.17.2.x, fulcrum on 127.17.0.1).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.ts';
import type { FulcrumHandle } from '../../src/main.ts';
import {
  BC_BYTES_IN, BC_BYTES_OUT, BC_CONNECT_FAILURES, BC_CONNECTIONS, BC_DGRAMS_IN, BC_DGRAMS_OUT, BC_DROP_OVERSIZED, BC_DROP_UNREACHABLE,
  SC_ACCEPTED, SC_BYTES_IN, SC_BYTES_OUT, SC_DGRAMS_IN, SC_DGRAMS_OUT, SC_DROP_LIMIT, SC_DROP_NO_BACKEND, SC_DROP_OVERSIZED,
  SC_DROP_UNREACHABLE,
} from '../../src/shm/layout.ts';
import { freePort, waitFor } from '../helpers/net.ts';
import { splitProxyV2, startUdpBackend, UdpClient, type UdpBackend } from '../helpers/udp.ts';
import { activeCounts, backendCounter, reasons, serviceCounter, startProxy } from './harness.ts';

const HOST = '127.17.0.1';
const BACK = '127.17.1.1';
const CLIENTS = '127.17.2.1';

let proxy: FulcrumHandle;
const ports: Record<string, number> = {};
let echo: UdpBackend[] = [];
let moving: UdpBackend[] = [];
let tagged: UdpBackend;
let silent: UdpBackend;
let small: UdpBackend;
let flood: UdpBackend;
let live: UdpBackend;
let dns: UdpBackend;
let passive: UdpBackend[] = [];
let deadPort = 0;
const clients: UdpClient[] = [];

const open = async (): Promise<UdpClient> => {
  const c = await UdpClient.open(CLIENTS);
  clients.push(c);
  return c;
};

beforeAll(async () => {
  echo = await Promise.all(['a', 'b', 'c'].map((n) => startUdpBackend(n, BACK)));
  moving = await Promise.all(['m1', 'm2'].map((n) => startUdpBackend(n, BACK)));
  tagged = await startUdpBackend('tagged', BACK);
  silent = await startUdpBackend('silent', BACK);
  silent.silent = true;
  small = await startUdpBackend('small', BACK);
  flood = await startUdpBackend('flood', BACK);
  live = await startUdpBackend('live', BACK);
  dns = await startUdpBackend('dns', BACK);
  passive = await Promise.all(['pa', 'pb'].map((n) => startUdpBackend(n, BACK)));
  // A port with nothing bound: the kernel answers ICMP port unreachable.
  const dead = await startUdpBackend('dead', BACK);
  deadPort = dead.port;
  await dead.close();
  ports.v6 = await freePort('::1');
  for (const n of ['echo', 'moving', 'tagged', 'idle', 'small', 'flood', 'icmp', 'dns', 'passive']) ports[n] = await freePort(HOST);
  proxy = await startProxy(`
workers: 2
logging: { level: silent, connections: false }
services:
  - name: echo
    protocol: udp
    listen: ${HOST}:${ports.echo}
    balance: maglev
    hash_key: source_ip_port
    backends:
${echo.map((b) => `      - address: ${b.address}`).join('\n')}
  - name: moving
    protocol: udp
    listen: ${HOST}:${ports.moving}
    balance: maglev
    hash_key: source_ip_port
    backends:
${moving.map((b) => `      - address: ${b.address}`).join('\n')}
  - name: tagged
    protocol: udp
    listen: ${HOST}:${ports.tagged}
    send_proxy: v2
    backends:
      - address: ${tagged.address}
  - name: tagged6
    protocol: udp
    listen: '[::1]:${ports.v6}'
    send_proxy: v2
    backends:
      - address: ${tagged.address}
  - name: idle
    protocol: udp
    listen: ${HOST}:${ports.idle}
    timeouts: { idle: 300ms }
    backends:
      - address: ${silent.address}
  - name: small
    protocol: udp
    listen: ${HOST}:${ports.small}
    udp: { max_datagram: 100, responses: 0 }
    backends:
      - address: ${small.address}
  - name: flood
    protocol: udp
    listen: ${HOST}:${ports.flood}
    max_connections: 50
    backends:
      - address: ${flood.address}
  - name: icmp
    protocol: udp
    listen: ${HOST}:${ports.icmp}
    balance: roundrobin
    backends:
      - address: ${BACK}:${deadPort}
      - address: ${live.address}
  - name: dns
    protocol: udp
    listen: ${HOST}:${ports.dns}
    udp: { responses: 1 }
    backends:
      - address: ${dns.address}
  - name: passive
    protocol: udp
    listen: ${HOST}:${ports.passive}
    balance: roundrobin
    health: { type: udp, send: ping, expect: "|ping", interval: 1h, timeout: 1s, fall: 3, observe_failures: 1 }
    backends:
${passive.map((b) => `      - address: ${b.address}`).join('\n')}
`);
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await proxy?.stop('test over');
  await Promise.all([...echo, ...moving, tagged, silent, small, flood, live, dns, ...passive].map((b) => b.close()));
});

describe('UDP services', () => {
  it('run on the data path of the project: the relay\'s datagram path (relay/udp.c), or node:dgram with FULCRUM_RELAY=off', () => {
    expect(proxy.pool.dataPath).toBe(process.env.FULCRUM_RELAY === 'off' ? 'javascript' : 'relay');
  });

  it('1,000 client sockets × 100 datagrams: every reply matches, and with maglev each source keeps its backend', async () => {
    const SOCKETS = 1000;
    const DATAGRAMS = 100;
    const BATCH = 100; // sockets in flight at once: bounded, so no receive buffer overflows on a loaded machine
    const owner = new Map<number, string>();
    const counts: Record<string, number> = { a: 0, b: 0, c: 0 };
    let resent = 0;
    for (let first = 0; first < SOCKETS; first += BATCH) {
      const batch = await Promise.all(Array.from({ length: BATCH }, () => open()));
      await Promise.all(batch.map(async (c, i) => {
        const id = first + i;
        for (let seq = 0; seq < DATAGRAMS; seq++) {
          const payload = `${id}:${seq}`;
          let reply: string | null = null;
          // Loopback UDP may still drop under load: a lost datagram is sent again (counted, bounded).
          for (let attempt = 0; attempt < 5 && reply === null; attempt++) {
            if (attempt > 0) resent++;
            c.send(payload, ports.echo, HOST);
            for (;;) {
              const m = await c.next(1000);
              if (m === null) break;
              const text = m.toString();
              if (text.endsWith(`|${payload}`)) {
                reply = text;
                break;
              }
              // A late answer to an earlier, resent datagram: its own sequence number, never another's.
              expect(text).toMatch(new RegExp(`^[abc]\\|${id}:\\d+$`));
            }
          }
          expect(reply, `socket ${id} datagram ${seq}`).not.toBeNull();
          const name = reply!.split('|')[0];
          if (seq === 0) {
            owner.set(id, name);
            counts[name]++;
          } else expect(name, `socket ${id} datagram ${seq}`).toBe(owner.get(id));
        }
      }));
      // The sockets stay open (closed in afterAll): a port the kernel gave again would be an old flow.
    }
    expect(resent).toBeLessThan(SOCKETS * DATAGRAMS * 0.01);
    // 1,000 keys over 3 equal backends: each owns a fair share.
    for (const n of ['a', 'b', 'c']) expect(counts[n], JSON.stringify(counts)).toBeGreaterThan(250);
    expect(serviceCounter(proxy, 'echo', SC_ACCEPTED)).toBe(SOCKETS);
    expect(serviceCounter(proxy, 'echo', SC_DGRAMS_IN)).toBe(SOCKETS * DATAGRAMS + resent);
    expect(serviceCounter(proxy, 'echo', SC_DGRAMS_OUT)).toBeGreaterThanOrEqual(SOCKETS * DATAGRAMS);
    // Per backend: each one's flows and datagrams, which add up to the service's.
    const per = (c: number): number[] => echo.map((b) => backendCounter(proxy, 'echo', b.address, c));
    const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);
    expect(per(BC_CONNECTIONS)).toEqual(echo.map((b) => counts[b.name]));
    for (const [i, b] of echo.entries()) expect(per(BC_DGRAMS_IN)[i], b.name).toBeGreaterThanOrEqual(counts[b.name] * DATAGRAMS);
    expect(sum(per(BC_DGRAMS_IN))).toBe(serviceCounter(proxy, 'echo', SC_DGRAMS_IN));
    expect(sum(per(BC_DGRAMS_OUT))).toBe(serviceCounter(proxy, 'echo', SC_DGRAMS_OUT));
    // Bytes are added up once a second (and when a flow ends), per backend as per service.
    await waitFor(() => sum(per(BC_BYTES_IN)) === serviceCounter(proxy, 'echo', SC_BYTES_IN) && sum(per(BC_BYTES_IN)) > 0, 3000, 'bytes in, per backend');
    await waitFor(() => sum(per(BC_BYTES_OUT)) === serviceCounter(proxy, 'echo', SC_BYTES_OUT) && sum(per(BC_BYTES_OUT)) > 0, 3000, 'bytes out, per backend');
  }, 240_000);

  it('a new client\'s burst: every datagram sent before its flow was admitted reaches the backend, in order', async () => {
    // 40 datagrams at once from a new source: they arrive together (the relay reads them in one
    // batch), and all but the first wait while the core admits and picks for the flow.
    const c = await open();
    for (let i = 0; i < 40; i++) c.send(`burst${i}`, ports.echo, HOST);
    const got: string[] = [];
    for (let i = 0; i < 40; i++) {
      const m = await c.next(2000);
      if (m === null) break;
      got.push(m.toString().split('|')[1]);
    }
    expect(got).toEqual(Array.from({ length: 40 }, (_, i) => `burst${i}`));
  });

  it('moves a flow off a backend set to maint (or down) on its next datagram; drain keeps it', async () => {
    const c = await open();
    const first = await c.ask('hello', ports.moving, HOST);
    const name = first!.split('|')[0];
    const other = moving.find((b) => b.name !== name)!;
    const mine = moving.find((b) => b.name === name)!;
    proxy.balancer.setAdminState('moving', mine.address, 'drain', 'test');
    expect(await c.ask('still', ports.moving, HOST)).toBe(`${name}|still`);
    proxy.balancer.setAdminState('moving', mine.address, 'maint', 'test');
    expect(await c.ask('moved', ports.moving, HOST)).toBe(`${other.name}|moved`);
    expect(reasons(proxy, 'moving').backend_down).toBe(1);
    proxy.balancer.setAdminState('moving', mine.address, 'ready', 'test');
    proxy.balancer.setHealth('moving', other.address, false, 'test');
    expect(await c.ask('back', ports.moving, HOST)).toBe(`${name}|back`);
    proxy.balancer.setHealth('moving', other.address, true, 'test');
  });

  it('send_proxy v2: the backend sees each client\'s real address and port in a DGRAM header on every datagram', async () => {
    const a = await open();
    const b = await open();
    for (const c of [a, b]) {
      for (let i = 0; i < 3; i++) expect(await c.ask(`x${i}`, ports.tagged, HOST)).toBe(`tagged|x${i}`);
    }
    const seen = [...tagged.headers.values()];
    expect(seen).toHaveLength(2);
    const sources = seen.map((h) => `${h.src}:${h.srcPort}`).sort();
    expect(sources).toEqual([`${CLIENTS}:${a.port}`, `${CLIENTS}:${b.port}`].sort());
    for (const h of seen) expect(h).toMatchObject({ command: 0x21, family: 0x12, dst: HOST, dstPort: ports.tagged });
    expect(tagged.received).toBe(6);
    // The replies came without a header, from the address and port the clients sent to.
    expect(splitProxyV2(Buffer.from('tagged|x0')).header).toBeNull();
  });

  it('send_proxy v2 on an IPv6 listener: family 0x22 (UDP over IPv6), the client\'s IPv6 address and port', async () => {
    const c = await UdpClient.open('::1');
    clients.push(c);
    expect(await c.ask('six', ports.v6, '::1')).toBe('tagged|six');
    const h = [...tagged.headers.values()].find((x) => x.family === 0x22);
    expect(h).toMatchObject({ command: 0x21, src: '00000000000000000000000000000001', srcPort: c.port, dst: '00000000000000000000000000000001', dstPort: ports.v6 });
  });

  it('a backend that never replies: the flow expires after idle, nothing else is held', async () => {
    const c = await open();
    c.send('anyone?', ports.idle, HOST);
    await waitFor(() => silent.received === 1, 2000, 'the datagram at the silent backend');
    expect(activeCounts(proxy, 'idle', [silent.address]).active).toBe(1);
    const waited = await waitFor(() => activeCounts(proxy, 'idle', [silent.address]).active === 0, 3000, 'the flow to expire');
    expect(waited).toBeLessThan(2000);
    expect(reasons(proxy, 'idle').idle_timeout).toBe(1);
    expect(activeCounts(proxy, 'idle', [silent.address]).backends).toEqual([0]);
  });

  it('bad input: zero-length datagrams pass, a truncated one passes as it is, oversized ones are dropped and counted', async () => {
    const c = await open();
    c.send(Buffer.alloc(0), ports.small, HOST);
    expect((await c.next())?.toString()).toBe('small|');
    // A Quake 3 query cut short: fulcrum does not parse payloads, it passes as it came.
    const cut = Buffer.from('ffffffff676574737461', 'hex');
    c.send(cut, ports.small, HOST);
    expect(await c.next()).toEqual(Buffer.concat([Buffer.from('small|'), cut]));
    c.send(Buffer.alloc(101, 0x41), ports.small, HOST);
    c.send(Buffer.alloc(60_000, 0x41), ports.small, HOST);
    // The backend prefixes "small|": 94 bytes come back as 100, the limit; 95 would come back as 101.
    expect(await c.ask('A'.repeat(94), ports.small, HOST)).toBe(`small|${'A'.repeat(94)}`);
    expect(await c.ask('A'.repeat(95), ports.small, HOST, 300)).toBeNull();
    await waitFor(() => serviceCounter(proxy, 'small', SC_DROP_OVERSIZED) === 3, 2000, 'the oversized reply counted');
    // Of those, the backend's one reply too long is its own (the two from the client are not).
    expect(backendCounter(proxy, 'small', small.address, BC_DROP_OVERSIZED)).toBe(1);
    expect(small.received).toBe(4);
  });

  it('a flood of new source ports past max_connections: dropped and counted, the flows inside keep working', async () => {
    const inside = await open();
    expect(await inside.ask('first', ports.flood, HOST)).toBe('flood|first');
    const floods = await Promise.all(Array.from({ length: 200 }, () => open()));
    for (const f of floods) f.send('flood', ports.flood, HOST);
    await waitFor(() => serviceCounter(proxy, 'flood', SC_ACCEPTED) === 201, 5000, 'every new source seen');
    expect(activeCounts(proxy, 'flood', [flood.address]).active).toBe(50);
    expect(serviceCounter(proxy, 'flood', SC_DROP_LIMIT)).toBe(151);
    expect(reasons(proxy, 'flood').queue_full).toBe(151);
    // The inside flow's first datagram and one from each of the 49 flows that fitted.
    await waitFor(() => flood.received === 50, 2000, 'the admitted flows\' datagrams at the backend');
    expect(await inside.ask('second', ports.flood, HOST)).toBe('flood|second');
    // Nothing else harmed: another service answers as before.
    const other = await open();
    expect(await other.ask('ok?', ports.small, HOST)).toBe('small|ok?');
    expect(serviceCounter(proxy, 'flood', SC_DROP_NO_BACKEND)).toBe(0);
  });

  it('ICMP port unreachable from a backend: a passive-health failure, and the flow moves on, its datagram sent again', async () => {
    // Round robin over [dead, live]: of ten new flows (a socket each), some pick the dead port first.
    for (let i = 0; i < 10; i++) {
      const c = await open();
      expect(await c.ask(`p${i}`, ports.icmp, HOST)).toBe(`live|p${i}`);
    }
    expect(backendCounter(proxy, 'icmp', `${BACK}:${deadPort}`, BC_CONNECT_FAILURES)).toBeGreaterThanOrEqual(1);
    expect(serviceCounter(proxy, 'icmp', SC_DROP_UNREACHABLE)).toBe(backendCounter(proxy, 'icmp', `${BACK}:${deadPort}`, BC_CONNECT_FAILURES));
    expect(backendCounter(proxy, 'icmp', `${BACK}:${deadPort}`, BC_DROP_UNREACHABLE)).toBe(serviceCounter(proxy, 'icmp', SC_DROP_UNREACHABLE));
    expect(backendCounter(proxy, 'icmp', live.address, BC_DROP_UNREACHABLE)).toBe(0);
    expect(backendCounter(proxy, 'icmp', live.address, BC_DGRAMS_IN)).toBe(10);
    expect(live.received).toBe(10);
  });

  it('udp.responses: 1 ends a flow at its first reply (DNS-like); the next datagram is a new flow', async () => {
    const c = await open();
    expect(await c.ask('q1', ports.dns, HOST)).toBe('dns|q1');
    await waitFor(() => activeCounts(proxy, 'dns', [dns.address]).active === 0, 2000, 'the flow to end');
    expect(reasons(proxy, 'dns').server_closed).toBe(1);
    expect(await c.ask('q2', ports.dns, HOST)).toBe('dns|q2');
    expect(serviceCounter(proxy, 'dns', SC_ACCEPTED)).toBe(2);
  });

  it('passive health: a backend whose port closed after its probe passed is marked down by the first ICMP unreachable', async () => {
    const state = (b: UdpBackend): string | undefined =>
      proxy.balancer.describe().find((x) => x.name === 'passive')?.backends.find((x) => x.address === b.address)?.state;
    // The first probe round passed (both answer); the next is an hour away.
    await waitFor(() => passive.every((b) => b.received >= 1), 5000, 'the first probes');
    expect(passive.map(state)).toEqual(['up', 'up']);
    await passive[0].close();
    for (let i = 0; i < 4; i++) {
      const c = await open();
      expect(await c.ask(`q${i}`, ports.passive, HOST)).toBe(`pb|q${i}`);
    }
    await waitFor(() => state(passive[0]) === 'down', 2000, 'pa marked down by passive health');
    expect(state(passive[1])).toBe('up');
  });

  it('a backend removed by a reload: its flows move on their next datagram (TCP sessions would drain)', async () => {
    const port = await freePort(HOST);
    const yaml = (bs: UdpBackend[]) => `
workers: 1
logging: { level: silent, connections: false }
services:
  - name: removal
    protocol: udp
    listen: ${HOST}:${port}
    balance: maglev
    hash_key: source_ip_port
    backends:
${bs.map((b) => `      - address: ${b.address}`).join('\n')}
`;
    const h = await startProxy(yaml(moving));
    try {
      const c = await open();
      const name = (await c.ask('one', port, HOST))!.split('|')[0];
      const stay = moving.find((b) => b.name !== name)!;
      expect(await h.reload(parseConfig(yaml([stay]), '<test>'))).toEqual([]);
      expect(await c.ask('two', port, HOST)).toBe(`${stay.name}|two`);
      expect(reasons(h, 'removal').backend_down).toBe(1);
    } finally {
      await h.stop('test over');
    }
  });
});
