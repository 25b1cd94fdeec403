/**
 * One client, one Maglev key, however it arrived: directly on an IPv4 listener, over IPv4 on a
 * dual-stack listener ("[::]", where the kernel reports it as ::ffff:a.b.c.d), or named by a PROXY
 * v1 or v2 header as TCP4 or as an IPv4-mapped TCP6 address. Each of these must reach the same
 * backend (config/address.ts: a mapped client is keyed as its IPv4 address). Runs on both data
 * paths (the relay formats the dual-stack client's bytes; the JavaScript path takes Node's text).
 * Addresses: 127.2.12.0/24.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FulcrumHandle } from '../../src/main.ts';
import { encodeProxyV2 } from '../../src/proxy/proxy-protocol.ts';
import { connectClient, freePort, readLine, startNamedServer, type TestServer } from '../helpers/net.ts';
import { startProxy } from './harness.ts';

const HOST = '127.2.12.1';
const CLIENTS = Array.from({ length: 12 }, (_, i) => `127.2.12.${20 + i}`);
let backends: TestServer[] = [];
let proxy: FulcrumHandle;
const ports = { plain: 0, dual: 0, accept: 0 };

beforeAll(async () => {
  backends = await Promise.all(['a', 'b', 'c', 'd', 'e'].map((n) => startNamedServer(n, HOST)));
  ports.plain = await freePort(HOST);
  ports.dual = await freePort('::');
  ports.accept = await freePort(HOST);
  // Three services over the same backends: Maglev tables built from the same members are
  // identical (that is what lets two instances agree), so one key means one backend in all three.
  const list = backends.map((b) => `      - address: ${b.address}`).join('\n');
  proxy = await startProxy(`
workers: 2
logging: { level: silent, connections: false }
services:
  - name: plain
    listen: ${HOST}:${ports.plain}
    balance: maglev
    backends:
${list}
  - name: dual
    listen: '[::]:${ports.dual}'
    balance: maglev
    backends:
${list}
  - name: accept
    listen: ${HOST}:${ports.accept}
    accept_proxy: true
    balance: maglev
    backends:
${list}
`);
});

afterAll(async () => {
  await proxy?.stop('test over');
  await Promise.all(backends.map((b) => b.close()));
});

/** The backend that greets a client connecting from `from` to `port` (after `header`, if any). */
async function served(port: number, from: string, header?: Buffer): Promise<string> {
  const s = await connectClient(port, HOST, from);
  try {
    if (header) s.write(header);
    return await readLine(s);
  } finally {
    s.destroy();
  }
}

const v1 = (line: string): Buffer => Buffer.from(line + '\r\n', 'latin1');

describe('a client has one Maglev key whichever way it arrived', () => {
  it('directly (IPv4 listener, dual-stack listener) and named by PROXY v1 and v2 headers (TCP4 and mapped TCP6)', async () => {
    const seen = new Map<string, string>();
    for (const c of CLIENTS) {
      const ways: Record<string, Promise<string>> = {
        'IPv4 listener': served(ports.plain, c),
        'dual-stack listener': served(ports.dual, c),
        'v1 TCP4': served(ports.accept, HOST, v1(`PROXY TCP4 ${c} ${HOST} 40000 ${ports.accept}`)),
        'v1 TCP6 mapped': served(ports.accept, HOST, v1(`PROXY TCP6 ::ffff:${c} ::ffff:${HOST} 40000 ${ports.accept}`)),
        'v1 TCP6 mapped, long form': served(ports.accept, HOST, v1(`PROXY TCP6 0:0:0:0:0:FFFF:${c} ::ffff:${HOST} 40000 ${ports.accept}`)),
        'v2 TCP4': served(ports.accept, HOST, encodeProxyV2(c, 40000, HOST, ports.accept)),
        'v2 TCP6 mapped': served(ports.accept, HOST, v2Mapped(c, HOST, 40000, ports.accept)),
      };
      const names = Object.fromEntries(await Promise.all(Object.entries(ways).map(async ([k, p]) => [k, await p])));
      const want = names['IPv4 listener'];
      for (const [way, name] of Object.entries(names)) expect(name, `client ${c} ${way}: ${JSON.stringify(names)}`).toBe(want);
      seen.set(c, want);
    }
    // The clients spread over the backends: a key that ignored the address would pass the above.
    expect(new Set(seen.values()).size, JSON.stringify([...seen])).toBeGreaterThanOrEqual(3);
  });
});

/** A v2 header with family TCP6 whose addresses are IPv4-mapped (what a dual-stack sender writes). */
function v2Mapped(src: string, dst: string, srcPort: number, dstPort: number): Buffer {
  const out = Buffer.alloc(16 + 36);
  encodeProxyV2(src, srcPort, dst, dstPort).copy(out, 0, 0, 13);
  out[13] = 0x21;
  out.writeUInt16BE(36, 14);
  const mapped = (a: string, at: number) => {
    out[at + 10] = 0xff;
    out[at + 11] = 0xff;
    a.split('.').forEach((o, i) => (out[at + 12 + i] = Number(o)));
  };
  mapped(src, 16);
  mapped(dst, 32);
  out.writeUInt16BE(srcPort, 48);
  out.writeUInt16BE(dstPort, 50);
  return out;
}
