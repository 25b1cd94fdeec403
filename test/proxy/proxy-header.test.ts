/**
 * PROXY protocol through the real proxy: send_proxy tells backends who the client is;
 * accept_proxy takes the client from a header (fulcrum behind another L4 balancer), keys Maglev
 * on it, and closes clients whose header is bad or late. Addresses: 127.2.10.0/24.
 */
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FulcrumHandle } from '../../src/main.ts';
import { encodeProxyV2, parseProxyHeader, type ProxyAddresses } from '../../src/proxy/proxy-protocol.ts';
import { SC_BYTES_IN } from '../../src/shm/layout.ts';
import { connectClient, freePort, sleep, startServer, waitClose, waitFor, type TestServer } from '../helpers/net.ts';
import { reasons, serviceCounter, startProxy } from './harness.ts';

const HOST = '127.2.10.1';
/**
 * A backend that reads the PROXY header fulcrum sends, answers with one JSON line naming its
 * own name and what the header said, then echoes the payload.
 */
async function headerBackend(name: string): Promise<TestServer> {
  return startServer((sock: Socket) => {
    let buf = Buffer.alloc(0);
    let told = false;
    sock.on('error', () => undefined);
    sock.on('end', () => sock.end()); // close its side when the client does, so no session lingers
    sock.on('data', (d: Buffer) => {
      if (told) return void sock.write(d);
      buf = Buffer.concat([buf, d]);
      const r = parseProxyHeader(buf);
      if (r.status === 'incomplete') return;
      const header: ProxyAddresses | string = r.status === 'ok' ? r.header : r.reason;
      told = true;
      sock.write(JSON.stringify({ name, header }) + '\n');
      if (r.status === 'ok' && buf.length > r.consumed) sock.write(buf.subarray(r.consumed));
    });
  }, HOST);
}

let b1: TestServer;
let b2: TestServer;
let b3: TestServer;
let proxy: FulcrumHandle;
const ports = { v1: 0, v2: 0, accept: 0, v6: 0 };

beforeAll(async () => {
  b1 = await headerBackend('b1');
  b2 = await headerBackend('b2');
  b3 = await headerBackend('b3');
  ports.v1 = await freePort(HOST);
  ports.v2 = await freePort(HOST);
  ports.accept = await freePort(HOST);
  ports.v6 = await freePort('::1');
  proxy = await startProxy(`
workers: 2
logging: { level: silent, connections: false }
services:
  - name: v1
    listen: ${HOST}:${ports.v1}
    send_proxy: v1
    backends: [{ address: ${b1.address} }]
  - name: v2
    listen: ${HOST}:${ports.v2}
    send_proxy: v2
    backends: [{ address: ${b1.address} }]
  - name: v6
    listen: '[::1]:${ports.v6}'
    send_proxy: v2
    backends: [{ address: ${b2.address} }]
  - name: accept
    listen: ${HOST}:${ports.accept}
    accept_proxy: true
    send_proxy: v2
    balance: maglev
    timeouts: { proxy_header: 300ms }
    backends: [{ address: ${b1.address} }, { address: ${b2.address} }, { address: ${b3.address} }]
`);
});

afterAll(async () => {
  await proxy?.stop('test over');
  for (const b of [b1, b2, b3]) await b?.close();
});

/** Reads lines from `s`, keeping what arrives after a newline for the next call (unlike readLine). */
function lineReader(s: Socket): () => Promise<string> {
  let buf = '';
  const waiting: Array<(line: string) => void> = [];
  s.setEncoding('utf8');
  s.on('data', (d: string) => {
    buf += d;
    let i: number;
    while (waiting.length > 0 && (i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      waiting.shift()!(line);
    }
  });
  return () => new Promise<string>((resolve, reject) => {
    const i = buf.indexOf('\n');
    if (i >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      return resolve(line);
    }
    const timer = setTimeout(() => reject(new Error(`no line within 5s (got ${JSON.stringify(buf)})`)), 5000);
    waiting.push((line) => {
      clearTimeout(timer);
      resolve(line);
    });
  });
}

async function firstLine(next: () => Promise<string>): Promise<{ name: string; header: ProxyAddresses }> {
  return JSON.parse(await next());
}

describe('send_proxy', () => {
  it.each(['v1', 'v2'] as const)('%s: the backend learns the client address and port, then gets the payload', async (v) => {
    const s = await connectClient(ports[v], HOST, '127.2.10.77');
    const next = lineReader(s);
    s.write('hello\n');
    const { header } = await firstLine(next);
    expect(header).toEqual({ family: 'tcp4', srcAddress: '127.2.10.77', srcPort: s.localPort, dstAddress: HOST, dstPort: ports[v] });
    expect(await next()).toBe('hello');
    s.destroy();
  });

  it('over IPv6: the client and the address it reached as IPv6 addresses', async () => {
    const s = await connectClient(ports.v6, '::1');
    const next = lineReader(s);
    s.write('six\n');
    const { header } = await firstLine(next);
    expect(header).toEqual({ family: 'tcp6', srcAddress: '::1', srcPort: s.localPort, dstAddress: '::1', dstPort: ports.v6 });
    expect(await next()).toBe('six');
    s.destroy();
  });
});

describe('accept_proxy', () => {
  it('forwards the client named by the header, split over several writes, and the bytes after it', async () => {
    const s = await connectClient(ports.accept, HOST);
    const next = lineReader(s);
    const header = 'PROXY TCP4 198.51.100.7 192.0.2.1 40000 6380\r\n';
    // The pauses space the writes so that they arrive as separate reads (the input, not a wait for a result).
    s.write(header.slice(0, 7));
    await sleep(30);
    s.write(header.slice(7, 30));
    await sleep(30);
    s.write(header.slice(30) + 'ping\n');
    const { header: seen } = await firstLine(next);
    expect(seen).toEqual({ family: 'tcp4', srcAddress: '198.51.100.7', srcPort: 40000, dstAddress: '192.0.2.1', dstPort: 6380 });
    expect(await next()).toBe('ping');
    s.destroy();
  });

  it('v2 with TLVs, one byte per write, the payload in the same packet as its last byte; v2 LOCAL keeps the socket\'s addresses', async () => {
    const s = await connectClient(ports.accept, HOST, '127.2.10.78');
    s.setNoDelay(true);
    const next = lineReader(s);
    const v2 = encodeProxyV2('203.0.113.50', 40001, '192.0.2.1', 6380);
    // Two TLVs after the addresses (ALPN "h2", an authority): the length covers them; they are skipped.
    const tlvs = Buffer.from([0x01, 0x00, 0x02, 0x68, 0x32, 0x02, 0x00, 0x03, 0x61, 0x2e, 0x62]);
    const header = Buffer.concat([v2, tlvs]);
    header.writeUInt16BE(v2.length - 16 + tlvs.length, 14);
    for (let i = 0; i < header.length - 1; i++) {
      s.write(header.subarray(i, i + 1));
      if (i % 8 === 0) await sleep(2);
    }
    s.write(Buffer.concat([header.subarray(-1), Buffer.from('after v2\n')]));
    const { header: seen } = await firstLine(next);
    expect(seen).toEqual({ family: 'tcp4', srcAddress: '203.0.113.50', srcPort: 40001, dstAddress: '192.0.2.1', dstPort: 6380 });
    expect(await next()).toBe('after v2');
    s.destroy();

    const l = await connectClient(ports.accept, HOST, '127.2.10.79');
    const nextL = lineReader(l);
    const local = encodeProxyV2('203.0.113.51', 1, '192.0.2.1', 2);
    local[12] = 0x20; // LOCAL: the sender's own health check; its addresses are not a client's
    l.write(Buffer.concat([local, Buffer.from('local\n')]));
    const { header: own } = await firstLine(nextL);
    expect(own).toEqual({ family: 'tcp4', srcAddress: '127.2.10.79', srcPort: l.localPort, dstAddress: HOST, dstPort: ports.accept });
    expect(await nextL()).toBe('local');
    l.destroy();
  });

  it('keys Maglev on the client the header names, not on the socket that carried it', async () => {
    const sources = Array.from({ length: 12 }, (_, i) => `203.0.113.${i + 1}`);
    const first = new Map<string, string>();
    for (let round = 0; round < 3; round++) {
      for (const [i, src] of sources.entries()) {
        // A different real source address every time: only the header's stays the same.
        const s = await connectClient(ports.accept, HOST, `127.2.10.${100 + ((round * 12 + i) % 100)}`);
        s.write(`PROXY TCP4 ${src} 192.0.2.1 ${1000 + round} 6380\r\n`);
        const { name } = await firstLine(lineReader(s));
        s.destroy();
        if (round === 0) first.set(src, name);
        else expect(name).toBe(first.get(src));
      }
    }
    expect(new Set(first.values()).size).toBeGreaterThan(1);
  });

  it('closes a client whose first bytes are not a PROXY header, without touching a backend', async () => {
    const before = { bad: reasons(proxy, 'accept').bad_proxy_header, accepted: b1.accepted + b2.accepted + b3.accepted };
    const s = await connectClient(ports.accept, HOST);
    s.write('GET / HTTP/1.0\r\n\r\n');
    const t0 = Date.now();
    await waitClose(s, 2000);
    expect(Date.now() - t0).toBeLessThan(250);
    await waitFor(() => reasons(proxy, 'accept').bad_proxy_header === before.bad + 1, 2000, 'bad_proxy_header counted');
    expect(b1.accepted + b2.accepted + b3.accepted).toBe(before.accepted);
  });

  it('a header the parser cannot take (an IPv6 zone) closes that client only: no worker dies, other sessions flow', async () => {
    const exits: number[] = [];
    const onExit = (e: { workerId: number }): void => void exits.push(e.workerId);
    proxy.pool.on('worker-exit', onExit);
    // Sessions from many source ports, so both workers hold some.
    const open = await Promise.all(Array.from({ length: 6 }, async (_, i) => {
      const s = await connectClient(ports.accept, HOST);
      const next = lineReader(s);
      s.write(`PROXY TCP4 198.51.100.${20 + i} 192.0.2.1 40000 6380\r\n`);
      await firstLine(next);
      return { s, next };
    }));
    try {
      const before = reasons(proxy, 'accept').bad_proxy_header;
      for (let i = 0; i < 4; i++) {
        const bad = await connectClient(ports.accept, HOST);
        bad.write('PROXY TCP6 fe80::1%eth0 ::1 40000 6380\r\nping\n');
        await waitClose(bad, 2000);
      }
      await waitFor(() => reasons(proxy, 'accept').bad_proxy_header === before + 4, 2000, 'bad_proxy_header counted');
      for (const [i, { s, next }] of open.entries()) {
        s.write(`still ${i}\n`);
        expect(await next()).toBe(`still ${i}`);
      }
      expect(exits).toEqual([]);
    } finally {
      proxy.pool.off('worker-exit', onExit);
      for (const { s } of open) s.destroy();
    }
  });

  it('closes a client that sends no complete header within timeouts.proxy_header', async () => {
    const before = reasons(proxy, 'accept').bad_proxy_header;
    const s = await connectClient(ports.accept, HOST);
    s.write('PROXY TCP4 198.51.100.7');
    const t0 = Date.now();
    await waitClose(s, 3000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    await waitFor(() => reasons(proxy, 'accept').bad_proxy_header === before + 1, 2000, 'bad_proxy_header counted');
  });

  it('a client that leaves mid-header (FIN or reset) is closed at once, as client_closed, not held to the header timeout', async () => {
    const before = reasons(proxy, 'accept');
    const fin = await connectClient(ports.accept, HOST);
    const rst = await connectClient(ports.accept, HOST);
    rst.on('error', () => undefined);
    const t0 = Date.now();
    fin.end('PROXY TCP4 198.51.1');
    const closed = waitClose(fin, 2000);
    rst.write(encodeProxyV2('203.0.113.9', 1, '192.0.2.1', 2).subarray(0, 20));
    await sleep(20); // so the partial header is read before the reset (the input's timing, not a wait for a result)
    rst.resetAndDestroy();
    await closed;
    expect(Date.now() - t0).toBeLessThan(250); // timeouts.proxy_header is 300ms
    await waitFor(() => reasons(proxy, 'accept').client_closed === before.client_closed + 2, 250, 'both counted as client_closed');
    expect(reasons(proxy, 'accept').bad_proxy_header).toBe(before.bad_proxy_header);
  });

  it('does not count the header as client bytes', async () => {
    const before = serviceCounter(proxy, 'accept', SC_BYTES_IN);
    const s = await connectClient(ports.accept, HOST);
    const next = lineReader(s);
    s.write('PROXY TCP4 198.51.100.9 192.0.2.1 40000 6380\r\n0123456789\n');
    await firstLine(next);
    expect(await next()).toBe('0123456789');
    s.destroy();
    await waitFor(() => serviceCounter(proxy, 'accept', SC_BYTES_IN) > before, 2000, 'bytes counted');
    expect(serviceCounter(proxy, 'accept', SC_BYTES_IN) - before).toBe(11);
  });
});
