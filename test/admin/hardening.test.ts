/**
 * The admin server under a hostile client: bodies it need not read, idle and dribbling
 * connections from many addresses, a Host header naming another site, and a listen address beyond
 * loopback. Real sockets from distinct 127.5.x.y source addresses.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'node:http';
import type { Socket } from 'node:net';
import { ADMIN_LIMITS } from '../../src/admin/connections.ts';
import { connectClient, waitClose, waitFor } from '../helpers/net.ts';
import { api, startStack, TOKEN, type Stack } from './stack.ts';

const HOST = '127.5.4.1';
let stack: Stack;
const held: Socket[] = [];

beforeAll(async () => {
  stack = await startStack({ host: HOST, backends: 1 });
});

afterAll(async () => {
  for (const s of held) s.destroy();
  await stack?.close();
});

/** A GET with the given Host header, over node:http (fetch does not let a caller set Host). */
function getWithHost(host: string, path = '/api/status'): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: HOST, port: stack.adminPort, path, headers: { host }, timeout: 5000 }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => { text += d.toString('utf8'); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
    });
    req.on('error', reject);
    req.end();
  });
}

/**
 * Sends `head`, then chunks of a body that never ends (at most for 10 s), from `from`, until the
 * server closes the connection. Returns what the server answered and whether it closed.
 */
async function chunkedFlood(from: string, head: string, chunkSize: number): Promise<{ reply: string; closed: boolean }> {
  const s = await connectClient(stack.adminPort, HOST, from);
  held.push(s);
  s.on('error', () => {});
  let reply = '';
  s.on('data', (d: Buffer) => { reply += d.toString('latin1'); });
  let closed = false;
  s.once('end', () => { closed = true; });
  s.once('close', () => { closed = true; });
  s.write(`${head}content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n`);
  const chunk = `${chunkSize.toString(16)}\r\n${'x'.repeat(chunkSize)}\r\n`;
  const until = Date.now() + 10_000;
  while (!closed && Date.now() < until) {
    if (!s.destroyed) s.write(chunk);
    await new Promise((r) => setTimeout(r, 5));
  }
  return { reply, closed };
}

describe('a refused request closes its connection without reading the body', () => {
  it('401 arrives and the connection closes while a chunked body is still being sent', async () => {
    const { reply, closed } = await chunkedFlood('127.5.4.2', `POST /api/reload HTTP/1.1\r\nHost: ${HOST}:${stack.adminPort}\r\n`, 0x400);
    expect(reply).toMatch(/^HTTP\/1\.1 401 /);
    expect(reply).toContain('FULCRUM_ERR_ADMIN_UNAUTHORIZED');
    expect(reply.toLowerCase()).toContain('connection: close');
    expect(closed).toBe(true);
  });

  it('a body over the limit gets its 413 without the server reading the rest', async () => {
    const path = `/api/services/web/backends/${stack.backends[0].address}/weight`;
    const { reply, closed } = await chunkedFlood('127.5.4.3', `POST ${path} HTTP/1.1\r\nHost: ${HOST}\r\nauthorization: Bearer ${TOKEN}\r\n`, 0x4000);
    expect(reply).toMatch(/^HTTP\/1\.1 413 /);
    expect(closed).toBe(true);
  });
});

describe('connections: limits and timeouts', () => {
  it(`holds at most ${ADMIN_LIMITS.perClient} connections from one client address; another address still gets in`, async () => {
    const mine: Socket[] = [];
    for (let i = 0; i < ADMIN_LIMITS.perClient; i++) mine.push(await connectClient(stack.adminPort, HOST, '127.5.4.4'));
    held.push(...mine);
    const extra = await connectClient(stack.adminPort, HOST, '127.5.4.4');
    held.push(extra);
    await waitClose(extra, 2000);
    for (const s of mine) expect(s.closed || s.readableEnded).toBe(false);
    const other = await connectClient(stack.adminPort, HOST, '127.5.4.5');
    held.push(other);
    other.write(`GET /api/status HTTP/1.1\r\nHost: ${HOST}\r\nconnection: close\r\n\r\n`);
    const text = await new Promise<string>((resolve) => {
      let t = '';
      other.on('data', (d: Buffer) => { t += d.toString('latin1'); });
      other.once('end', () => resolve(t));
    });
    expect(text).toMatch(/^HTTP\/1\.1 200 /);
    for (const s of mine) s.destroy();
  });

  it('closes a connection whose headers dribble in past the header timeout', async () => {
    const s = await connectClient(stack.adminPort, HOST, '127.5.4.6');
    held.push(s);
    s.on('error', () => {});
    const started = Date.now();
    let closed = false;
    s.once('close', () => { closed = true; });
    s.write('GET /api/status HTTP/1.1\r\n');
    // One header byte every 200 ms, bounded at 4 × the timeout.
    for (let i = 0; !closed && Date.now() - started < 4 * ADMIN_LIMITS.headersMs; i++) {
      if (!s.destroyed) s.write('x');
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(closed).toBe(true);
    expect(Date.now() - started).toBeLessThan(ADMIN_LIMITS.headersMs + 2000);
  });

  it('64 silent connections and 64 header dribblers from other addresses do not lock an operator out', async () => {
    const flood: Socket[] = [];
    const dribbling = { on: true };
    try {
      // Each from an address of its own: no per-client limit helps here.
      for (let i = 0; i < 64; i++) {
        const s = await connectClient(stack.adminPort, HOST, `127.5.5.${i + 1}`);
        s.on('error', () => {});
        flood.push(s);
      }
      const dribblers: Socket[] = [];
      for (let i = 0; i < 64; i++) {
        const s = await connectClient(stack.adminPort, HOST, `127.5.6.${i + 1}`);
        s.on('error', () => {});
        s.write('GET / HTTP/1.1\r\n');
        dribblers.push(s);
        flood.push(s);
      }
      void (async () => {
        for (let n = 0; dribbling.on && n < 200; n++) {
          for (const s of dribblers) if (!s.destroyed) s.write('a');
          await new Promise((r) => setTimeout(r, 50));
        }
      })();
      // The operator, from yet another address: answered at once, five times in a row.
      for (let i = 0; i < 5; i++) {
        const t0 = performance.now();
        const r = await api(stack.admin, 'GET', '/api/status', undefined, null);
        expect(r.status).toBe(200);
        expect(performance.now() - t0).toBeLessThan(1000);
      }
    } finally {
      dribbling.on = false;
      for (const s of flood) s.destroy();
    }
    const counts = (await api(stack.admin, 'GET', '/api/status', undefined, null)).body.admin_connections;
    expect(counts.evicted).toBeGreaterThan(0);
    expect(counts.refused).toBeGreaterThan(0); // the per-client test's extra connection
  });
});

describe('the Host header (DNS rebinding)', () => {
  it('answers its listen address and localhost, and refuses another name with 421', async () => {
    expect((await getWithHost(`${HOST}:${stack.adminPort}`)).status).toBe(200);
    expect((await getWithHost(`localhost:${stack.adminPort}`)).status).toBe(200);
    expect((await getWithHost('127.0.0.1')).status).toBe(200);
    const evil = await getWithHost(`rebind.attacker.example:${stack.adminPort}`);
    expect(evil.status).toBe(421);
    expect(evil.body.error.code).toBe('FULCRUM_ERR_ADMIN_HOST_NOT_ALLOWED');
    expect(evil.body.error.message).toContain('"rebind.attacker.example:');
    // Another IP literal is not this server either when it listens on one address.
    expect((await getWithHost('10.9.8.7')).status).toBe(421);
  });

  it('admits the names of admin.allowed_hosts', async () => {
    const named = await startStack({ host: '127.5.4.9', backends: 1, admin: (listen) => `    listen: ${listen}\n    allowed_hosts: [fulcrum.internal]\n` });
    try {
      const base = named.admin;
      const r = await new Promise<number>((resolve, reject) => {
        const u = new URL(base);
        request({ host: u.hostname, port: u.port, path: '/api/status', headers: { host: 'FULCRUM.internal:9900' } }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        }).on('error', reject).end();
      });
      expect(r).toBe(200);
    } finally {
      await named.close();
    }
  });
});

describe('listening beyond loopback', () => {
  it('warns at start when reads need no token, and not when they do', async () => {
    const open = await startStack({ host: '127.5.4.7', backends: 1, admin: (listen) => `    listen: 0.0.0.0:${listen.split(':')[1]}\n` });
    const locked = await startStack({ host: '127.5.4.8', backends: 1, admin: (listen, tokenFile) => `    listen: 0.0.0.0:${listen.split(':')[1]}\n    token_file: ${tokenFile}\n    auth_reads: true\n` });
    try {
      await waitFor(() => open.logs.some((l) => l.msg === 'admin server listening'), 5000, 'the admin server listening');
      const warning = (s: Stack) => s.logs.find((l) => /listens beyond loopback/.test(l.msg));
      expect(warning(open)).toMatchObject({ level: 40, listen: expect.stringMatching(/^0\.0\.0\.0:/) });
      expect(warning(open)?.msg).toContain('admin.auth_reads: true');
      expect(warning(locked)).toBeUndefined();
      expect(warning(stack)).toBeUndefined();
    } finally {
      await open.close();
      await locked.close();
    }
  });
});
