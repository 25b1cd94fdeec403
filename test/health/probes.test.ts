/**
 * Every probe type against servers written here: good ones, and bad ones (refused, reset,
 * garbage, a half-sent reply, accept-and-silent). Each failure must carry its reason and settle
 * within the timeout, and no socket may be left open on either side.
 * Loopback: 127.3.1.x.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import net from 'node:net';
import { writeFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthSchema, type HealthConfig, type HostPort } from '../../src/config/schema.ts';
import { loadProbe } from '../../src/health/probes/index.ts';
import type { ProbeResult } from '../../src/health/probes/probe.ts';
import { decodeSend } from '../../src/health/probes/send-expect.ts';
import { parseReply } from '../../src/health/probes/resp.ts';

const HOST = '127.3.1.1';
const TIMEOUT = 300;

type Behaviour = (sock: net.Socket) => void;

/** A TCP server whose every connection gets `behaviour`; counts connections still open. */
async function server(behaviour: Behaviour) {
  const open = new Set<net.Socket>();
  const srv = net.createServer((sock) => {
    open.add(sock);
    sock.on('close', () => open.delete(sock));
    sock.on('error', () => {});
    behaviour(sock);
  });
  await new Promise<void>((r) => srv.listen(0, HOST, r));
  const target: HostPort = { host: HOST, port: (srv.address() as net.AddressInfo).port };
  return {
    target,
    open,
    close: () => new Promise<void>((r) => { for (const s of open) s.destroy(); srv.close(() => r()); }),
  };
}

const servers: Array<{ close(): Promise<void> }> = [];
async function serve(behaviour: Behaviour) {
  const s = await server(behaviour);
  servers.push(s);
  return s;
}

// Reads (and drops) whatever comes, so it sees the probe's close; never answers.
const silent: Behaviour = (s) => { s.resume(); };
const garbage: Behaviour = (s) => s.write(Buffer.from([0x00, 0xff, 0x13, 0x37, 0x47, 0x41, 0x52, 0x42, 0x0d, 0x0a]));
const garbageOnData: Behaviour = (s) => s.once('data', () => s.write('\x00\xffGARBAGE\r\n'));
const resetOnData: Behaviour = (s) => s.once('data', () => s.resetAndDestroy());
const closeOnData: Behaviour = (s) => s.once('data', () => s.end());
const reply = (text: string | Buffer, close = false): Behaviour => (s) => s.once('data', () => (close ? s.end(text) : s.write(text)));

let refusedTarget: HostPort;
let dir: string;

beforeAll(async () => {
  // An address of this file's where nothing ever listens (a port released on HOST could be
  // handed again to one of the servers below, and a probe of it would meet that server).
  refusedTarget = { host: '127.3.1.254', port: 9 };
  dir = await mkdtemp(join(tmpdir(), 'fulcrum-probe-'));
});
afterAll(async () => {
  for (const s of servers) await s.close();
  await rm(dir, { recursive: true, force: true });
});

const cfg = (h: Record<string, unknown>) => healthSchema.parse({ timeout: `${TIMEOUT}ms`, ...h });

async function probe(type: HealthConfig['type'], target: HostPort, h: Record<string, unknown> = {}): Promise<ProbeResult> {
  const run = await loadProbe(type);
  const started = performance.now();
  const r = await run(target, cfg({ type, ...h }), AbortSignal.timeout(TIMEOUT));
  const took = performance.now() - started;
  // Never past the timeout (plus scheduling slack), whatever the server does.
  expect(took).toBeLessThan(TIMEOUT + 500);
  expect(typeof r.latency_ms).toBe('number');
  return r;
}

/**
 * Runs a probe in a worker thread: a probe that throws out of a socket callback (an uncaught
 * exception, which would end fulcrum) or never yields the event loop (which would freeze its
 * control plane) is seen here as such, within a bound, instead of taking the test run with it.
 */
async function probeInWorker(type: HealthConfig['type'], target: HostPort, h: Record<string, unknown> = {}): Promise<ProbeResult | { uncaught: string } | { hung: true }> {
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    import(workerData.module).then(async ({ loadProbe }) => {
      const run = await loadProbe(workerData.type);
      const r = await run(workerData.target, workerData.settings, AbortSignal.timeout(workerData.settings.timeout));
      parentPort.postMessage(r);
    });`;
  const module = new URL('../../src/health/probes/index.ts', import.meta.url).href;
  const worker = new Worker(code, { eval: true, workerData: { module, type, target, settings: cfg({ type, ...h }) } });
  try {
    return await new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ hung: true }), TIMEOUT + 3000);
      worker.once('message', (r: ProbeResult) => { clearTimeout(timer); resolve(r); });
      worker.once('error', (err) => { clearTimeout(timer); resolve({ uncaught: err.message }); });
    });
  } finally {
    await worker.terminate();
  }
}

/** Waits until the server side has seen every probe connection closed. */
async function allClosed(s: { open: Set<net.Socket> }) {
  const deadline = Date.now() + 2000;
  while (s.open.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  expect(s.open.size).toBe(0);
}

describe('tcp probe', () => {
  it('passes when the port accepts, and closes its connection', async () => {
    const s = await serve(silent);
    const r = await probe('tcp', s.target);
    expect(r).toMatchObject({ ok: true, reason: 'connected' });
    await allClosed(s);
  });
  it('fails with "connection refused"', async () => {
    expect(await probe('tcp', refusedTarget)).toMatchObject({ ok: false, reason: 'connection refused' });
  });
});

describe('send_expect probe', () => {
  it('decodes \\r\\n, \\xNN and hex: forms', () => {
    expect(decodeSend('PING\\r\\n')).toEqual(Buffer.from('PING\r\n'));
    expect(decodeSend('a\\x00\\\\b')).toEqual(Buffer.from([0x61, 0x00, 0x5c, 0x62]));
    expect(decodeSend('hex:0d0a ff')).toEqual(Buffer.from([0x0d, 0x0a, 0xff]));
  });
  it('text: passes when the reply contains the text, even across packets', async () => {
    const s = await serve((sock) => sock.once('data', (d) => {
      expect(d.toString()).toBe('PING\r\n');
      sock.write('+PO');
      setTimeout(() => sock.write('NG\r\n'), 30);
    }));
    const r = await probe('send_expect', s.target, { send_expect: { send: 'PING\\r\\n', expect: '+PONG' } });
    expect(r).toMatchObject({ ok: true, reason: 'matched "+PONG"' });
    await allClosed(s);
  });
  it('hex: passes on a matching prefix and fails at the first wrong byte', async () => {
    const s = await serve(reply(Buffer.from([0x01, 0x02, 0x03, 0x04])));
    expect(await probe('send_expect', s.target, { send_expect: { send: 'hex:ff', expect: 'hex:010203' } })).toMatchObject({ ok: true });
    const r = await probe('send_expect', s.target, { send_expect: { send: 'hex:ff', expect: 'hex:0109' } });
    expect(r).toMatchObject({ ok: false, reason: 'bad reply: expected hex:0109, got "\\x01\\x02\\x03\\x04"' });
  });
  it('regex: matches the reply', async () => {
    const s = await serve(reply('SSH-2.0-OpenSSH_9.2\r\n'));
    expect(await probe('send_expect', s.target, { send_expect: { send: 'x', expect: 'regex:^SSH-2\\.0-' } })).toMatchObject({ ok: true });
  });
  it('a server that speaks first: empty send', async () => {
    const s = await serve((sock) => sock.write('220 mail ESMTP\r\n'));
    expect(await probe('send_expect', s.target, { send_expect: { expect: '220 ' } })).toMatchObject({ ok: true });
  });
  it('garbage fails with the reply quoted once the server closes', async () => {
    const s = await serve(reply('\x00\xffGARBAGE\r\n', true));
    const r = await probe('send_expect', s.target, { send_expect: { send: 'PING\\r\\n', expect: '+PONG' } });
    expect(r.ok).toBe(false);
    expect(r.reason).toBe('bad reply: expected "+PONG", got "\\x00\\xc3\\xbfGARBAGE\\r\\n" before the server closed');
  });
  it('a half-sent reply fails at the timeout and quotes what came', async () => {
    const s = await serve(reply('+PO'));
    const r = await probe('send_expect', s.target, { send_expect: { send: 'PING\\r\\n', expect: '+PONG' } });
    expect(r).toMatchObject({ ok: false, reason: 'timeout after 300ms (waiting for "+PONG"), partial reply "+PO"' });
    await allClosed(s);
  });
  it('accept-and-silent fails at the timeout, saying where it waited', async () => {
    const s = await serve(silent);
    const r = await probe('send_expect', s.target, { send_expect: { send: 'PING\\r\\n', expect: '+PONG' } });
    expect(r).toMatchObject({ ok: false, reason: 'timeout after 300ms (waiting for "+PONG")' });
    await allClosed(s);
  });
  it('reset and refused', async () => {
    const s = await serve(resetOnData);
    expect(await probe('send_expect', s.target, { send_expect: { send: 'PING\\r\\n', expect: '+PONG' } }))
      .toMatchObject({ ok: false, reason: 'connection reset' });
    expect(await probe('send_expect', refusedTarget, { send_expect: { send: 'x', expect: 'y' } }))
      .toMatchObject({ ok: false, reason: 'connection refused' });
  });
});

describe('http probe', () => {
  it('sends an HTTP/1.0 request with the path and passes on the expected status', async () => {
    let request = '';
    const s = await serve((sock) => sock.once('data', (d) => {
      request = d.toString();
      sock.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    }));
    const r = await probe('http', s.target, { http: { path: '/health' } });
    expect(r).toMatchObject({ ok: true, reason: 'status 200' });
    expect(request).toMatch(/^GET \/health HTTP\/1\.0\r\nHost: 127\.3\.1\.1:\d+\r\n/);
    await allClosed(s);
  });
  it('fails on another status, quoting it', async () => {
    const s = await serve(reply('HTTP/1.1 503 Service Unavailable\r\n\r\n', true));
    expect(await probe('http', s.target)).toMatchObject({ ok: false, reason: 'status 503 Service Unavailable, want 200' });
    expect(await probe('http', s.target, { http: { expect_status: 503 } })).toMatchObject({ ok: true });
  });
  it('garbage, half status line, silence, close, reset', async () => {
    const g = await serve(garbageOnData);
    expect(await probe('http', g.target)).toMatchObject({ ok: false, reason: 'bad reply: not an HTTP status line "\\x00\\xc3\\xbfGARBAGE\\r\\n"' });
    const h = await serve(reply('HTTP/1.1 20'));
    expect(await probe('http', h.target)).toMatchObject({ ok: false, reason: 'timeout after 300ms (waiting for the status line), partial reply "HTTP/1.1 20"' });
    const q = await serve(silent);
    expect(await probe('http', q.target)).toMatchObject({ ok: false, reason: 'timeout after 300ms (waiting for the status line)' });
    const c = await serve(closeOnData);
    expect(await probe('http', c.target)).toMatchObject({ ok: false, reason: 'closed by server before replying' });
    const r = await serve(resetOnData);
    expect(await probe('http', r.target)).toMatchObject({ ok: false, reason: 'connection reset' });
    for (const s of [g, h, q, c, r]) await allClosed(s);
  });
});

describe('redis probe against bad servers', () => {
  const role = { role: 'primary' };
  it('parses RESP incrementally and rejects what is not RESP', () => {
    expect(parseReply(Buffer.from('*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n'))).toEqual([['master', 0, []], 24]);
    expect(parseReply(Buffer.from('*3\r\n$6\r\nmas'))).toBeUndefined();
    expect(() => parseReply(Buffer.from('\x00\xffGARBAGE\r\n'))).toThrow('bad reply: not RESP "\\x00\\xc3\\xbfGARBAGE\\r\\n"');
    expect(() => parseReply(Buffer.from('*1\r\n'.repeat(20)))).toThrow(/not RESP/);
  });
  it('garbage, half reply, silence, refused', async () => {
    const g = await serve(garbageOnData);
    expect(await probe('redis', g.target, role)).toMatchObject({ ok: false, reason: 'bad reply: not RESP "\\x00\\xc3\\xbfGARBAGE\\r\\n"' });
    const h = await serve(reply('*3\r\n$6\r\nmas'));
    expect(await probe('redis', h.target, role)).toMatchObject({ ok: false, reason: 'timeout after 300ms (waiting for ROLE reply), partial reply "*3\\r\\n$6\\r\\nmas"' });
    const hc = await serve(reply('*3\r\n$6\r\nmas', true));
    expect(await probe('redis', hc.target, role)).toMatchObject({ ok: false, reason: 'closed by server after a partial reply "*3\\r\\n$6\\r\\nmas"' });
    const q = await serve(silent);
    expect(await probe('redis', q.target, role)).toMatchObject({ ok: false, reason: 'timeout after 300ms (waiting for ROLE reply)' });
    expect(await probe('redis', refusedTarget, role)).toMatchObject({ ok: false, reason: 'connection refused' });
    for (const s of [g, h, hc, q]) await allClosed(s);
  });
  it('a sentinel is neither primary nor replica; an unreadable password_file says so', async () => {
    const s = await serve(reply('*2\r\n$8\r\nsentinel\r\n*0\r\n'));
    expect(await probe('redis', s.target, role)).toMatchObject({ ok: false, reason: 'server is a sentinel, not a primary or replica' });
    expect(await probe('redis', s.target, { redis: { password_file: join(dir, 'missing') } }))
      .toMatchObject({ ok: false, reason: `health.redis.password_file ${join(dir, 'missing')}: cannot read (ENOENT)` });
  });
  it('a server\'s long error text is cut in the reason (it goes to logs, history and the status page)', async () => {
    const long = `-ERR ${'x'.repeat(50_000)}\r\n`;
    const s = await serve((sock) => sock.on('data', () => sock.write(long)));
    const r = await probe('redis', s.target, role);
    expect(r.ok).toBe(false);
    expect(r.reason).toMatch(/^ROLE and INFO refused: ERR xxx+…$/);
    expect(r.reason.length).toBeLessThanOrEqual(201);
  });
  it('falls back to INFO replication when ROLE is refused', async () => {
    const s = await serve((sock) => {
      let n = 0;
      sock.on('data', () => {
        n++;
        if (n === 1) sock.write("-ERR unknown command 'ROLE'\r\n");
        else {
          const info = '# Replication\r\nrole:slave\r\nmaster_host:10.0.0.1\r\n';
          sock.write(`$${info.length}\r\n${info}\r\n`);
        }
      });
    });
    expect(await probe('redis', s.target, { role: 'replica' })).toMatchObject({ ok: true, reason: 'role replica', role: 'replica' });
    expect(await probe('redis', s.target, { role: 'primary' })).toMatchObject({ ok: false, reason: 'wrong role: saw replica, want primary' });
  });
});

/**
 * A MariaDB 10.11 exchange as recorded: the handshake, auth OK, and the result of
 * SELECT @@global.read_only = 0 (its header: column count, column, EOF; its rows: '0', EOF).
 */
const MYSQL = {
  handshake: Buffer.from('640000000a352e352e352d31302e31312e31392d4d6172696144422d302b6465623132753100050000004a46623b3f686e7100fef7080200ff81150000000000001d0000006c4c7428633f4d4450444364006d7973716c5f6e61746976655f70617373776f726400', 'hex'),
  authOk: Buffer.from('0700000200000002000000', 'hex'),
  resultHeader: Buffer.from('0100000101190000020364656600000002726f00000c3f000100000008800000000005000003fe00000200', 'hex'),
  resultRows: Buffer.from('02000004013005000005fe00000200', 'hex'),
  trailer: Buffer.from('01000006ff', 'hex'),
};

describe('postgres and mysql probes against bad servers', () => {
  for (const type of ['postgres', 'mysql'] as const) {
    it(`${type}: garbage, half reply, silence, reset, refused all fail with a reason in time`, async () => {
      const g = await serve((sock) => { sock.write('\x00\xffGARBAGE\r\n'.repeat(3)); sock.on('data', () => sock.write('\xff\xff\xff\xff\x00garbage')); });
      const rg = await probe(type, g.target);
      expect(rg.ok).toBe(false);
      expect(rg.reason.length).toBeGreaterThan(5);
      const h = await serve((sock) => { sock.write(type === 'mysql' ? Buffer.from([0x4a, 0x00, 0x00, 0x00, 0x0a, 0x35]) : ''); sock.on('data', () => sock.write('R\x00\x00\x00')); });
      expect(await probe(type, h.target)).toMatchObject({ ok: false, reason: expect.stringMatching(/^timeout after 300ms/) });
      const q = await serve(silent);
      expect(await probe(type, q.target)).toMatchObject({ ok: false, reason: expect.stringMatching(/^timeout after 300ms/) });
      const r = await serve((sock) => (type === 'mysql' ? setTimeout(() => sock.resetAndDestroy(), 20) : resetOnData(sock)));
      expect(await probe(type, r.target)).toMatchObject({ ok: false, reason: 'connection reset' });
      expect(await probe(type, refusedTarget)).toMatchObject({ ok: false, reason: 'connection refused' });
      for (const s of [g, h, q, r]) await allClosed(s);
    });
  }
  for (const type of ['postgres', 'mysql'] as const) {
    it(`${type}: an endless reply is cut off at a bound, not buffered until the timeout; a huge declared length at once`, async () => {
      // Well-formed and endless: PostgreSQL notices after the startup message; MySQL rows after the
      // result's header (mysql2 keeps every row). What arrives within the timeout is what
      // loopback can carry.
      const notice = Buffer.from('N\x00\x00\x00\x0bSNOTE\x00\x00', 'latin1');
      // Rows '0' with sequence ids 4, 5, … : a multiple of 256 of them, so the chunk can repeat.
      const rows = Buffer.concat(Array.from({ length: 256 * 40 }, (_, i) => Buffer.from([2, 0, 0, (4 + i) & 0xff, 1, 0x30])));
      const chunk = type === 'mysql' ? rows : Buffer.concat(Array(5000).fill(notice));
      let sent = 0;
      const s = await serve((sock) => {
        const pump = () => { while (!sock.destroyed && sock.write(chunk)) sent += chunk.length; };
        sock.on('drain', pump);
        if (type === 'postgres') return void sock.once('data', pump);
        sock.write(MYSQL.handshake);
        let n = 0;
        sock.on('data', () => {
          if (++n === 1) sock.write(MYSQL.authOk);
          else if (n === 2) { sock.write(MYSQL.resultHeader); pump(); }
        });
      });
      expect(await probe(type, s.target)).toMatchObject({ ok: false, reason: 'reply too long (over 65536 bytes)' });
      // The 64 KiB read plus what the kernel's buffers held when the probe closed.
      expect(sent).toBeLessThan(16 * 1024 * 1024);
      await allClosed(s);
      // A message that declares a huge length is refused at its header, not awaited (pg would
      // buffer up to 1 GB of it, mysql2 chain 16 MB packets without end).
      const huge = await serve((sock) => (type === 'mysql'
        ? sock.write(Buffer.from([0xff, 0xff, 0xff, 0x00]))
        : sock.once('data', () => sock.write(Buffer.from([0x52, 0x7f, 0xff, 0xff, 0xff])))));
      expect(await probe(type, huge.target)).toMatchObject({
        ok: false,
        reason: type === 'mysql'
          ? 'bad reply: not the MySQL protocol (a packet of 16777215 bytes)'
          : 'bad reply: not the PostgreSQL protocol (message "R" of 2147483647 bytes)',
      });
      await allClosed(huge);
    });
  }

  it('postgres: replies that pg\'s parser would loop on for ever or throw from a socket callback end the probe with a reason', async () => {
    const msg = (code: string, body: number[]) => {
      const b = Buffer.alloc(5 + body.length);
      b.write(code, 0, 'latin1');
      b.writeUInt32BE(4 + body.length, 1);
      Buffer.from(body).copy(b, 5);
      return b;
    };
    const int32 = (n: number) => [(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
    // Startup answered, then `onQuery` for the query.
    const ready = Buffer.concat([msg('R', int32(0)), msg('Z', [0x49])]);
    const cases: Array<[string, Buffer, Buffer | null, RegExp]> = [
      // An ErrorResponse whose field lacks its NUL: pg-protocol's field loop never ends.
      ['E without its terminating NUL', msg('E', [0x53]), null, /^bad reply: not the PostgreSQL protocol \(message "E"/],
      ['NoticeResponse ending inside a field', Buffer.concat([msg('N', [0x53, 0x78, 0x00]), ready]), null, /^bad reply: not the PostgreSQL protocol \(message "N"/],
      // Shorter than what pg reads for its type: a RangeError out of the 'data' callback.
      ['authentication request without its method', msg('R', []), null, /^bad reply: not the PostgreSQL protocol \(message "R"/],
      ['BackendKeyData cut short', Buffer.concat([msg('R', int32(0)), msg('K', [1, 2])]), null, /^bad reply: not the PostgreSQL protocol \(message "K"/],
      ['DataRow whose field runs past its end', ready, Buffer.concat([msg('D', [0, 1, 0, 0, 0, 9, 0x74])]), /^bad reply: not the PostgreSQL protocol \(message "D"/],
      ['RowDescription cut short', ready, msg('T', [0, 2, 0x72, 0]), /^bad reply: not the PostgreSQL protocol \(message "T"/],
      ['DataRow with a negative count (new Array(-1))', ready, msg('D', [0xff, 0xff]), /^bad reply: not the PostgreSQL protocol \(message "D" without its count\)/],
      // What a real server configured for GSSAPI says: pg-protocol throws on methods it does not know.
      ['GSSAPI authentication', msg('R', int32(7)), null, /^auth failed: the server asks for GSSAPI authentication/],
    ];
    for (const [name, startup, onQuery, want] of cases) {
      const s = await serve((sock) => {
        let n = 0;
        sock.on('data', () => {
          n++;
          if (n === 1) sock.write(startup);
          else if (n === 2 && onQuery) sock.write(onQuery);
        });
      });
      const r = await probeInWorker('postgres', s.target);
      expect(r, name).toMatchObject({ ok: false, reason: expect.stringMatching(want) });
      await allClosed(s);
    }
  });

  it('mysql: a short error packet after the answer (no command waiting for it) is a failed probe, not an uncaught exception', async () => {
    // The recorded exchange (MYSQL)…
    // …then one more packet in the same segment: an error marker without its code. mysql2 reads
    // it outside its command's try/catch, so the RangeError left through the socket's callback.
    const s = await serve((sock) => {
      sock.write(MYSQL.handshake);
      let n = 0;
      sock.on('data', () => {
        n++;
        if (n === 1) sock.write(MYSQL.authOk);
        else if (n === 2) sock.write(Buffer.concat([MYSQL.resultHeader, MYSQL.resultRows, MYSQL.trailer]));
      });
    });
    const r = await probeInWorker('mysql', s.target);
    expect(r).toMatchObject({ ok: false, reason: 'bad reply: not the MySQL protocol (an error packet of 1 byte)' });
    await allClosed(s);
  });

  it('postgres: a missing password_file is reported with the setting', async () => {
    const s = await serve(silent);
    const file = join(dir, 'pw');
    await writeFile(file, 'x\n');
    expect(await probe('postgres', s.target, { postgres: { password_file: join(dir, 'nope') } }))
      .toMatchObject({ ok: false, reason: `health.postgres.password_file ${join(dir, 'nope')}: cannot read (ENOENT)` });
  });
});

/** A UDP server on HOST: `answer` says what to send back to each datagram (null: nothing). */
async function udpServer(answer: (msg: Buffer) => Buffer | null): Promise<{ target: HostPort; socket: UdpSocket; seen: Buffer[]; close(): Promise<void> }> {
  const socket = createSocket('udp4');
  const seen: Buffer[] = [];
  socket.on('message', (msg, from) => {
    seen.push(msg);
    const reply = answer(msg);
    if (reply !== null) socket.send(reply, from.port, from.address);
  });
  await new Promise<void>((resolve) => socket.bind(0, HOST, resolve));
  // A test may close it first (the ICMP case): closing twice is then a no-op.
  let closed = false;
  const close = (): Promise<void> => new Promise<void>((r) => (closed ? r() : ((closed = true), socket.close(() => r()))));
  servers.push({ close });
  return { target: { host: HOST, port: socket.address().port }, socket, seen, close };
}

const Q3_STATUS = { send: 'hex:ffffffff676574737461747573', expect: 'regex:^\\xff\\xff\\xff\\xffstatusResponse' };

describe('udp probe', () => {
  it('sends the payload and passes on a matching reply (regex, as Quake 3 getstatus)', async () => {
    const s = await udpServer(() => Buffer.concat([Buffer.from([0xff, 0xff, 0xff, 0xff]), Buffer.from('statusResponse\n\\mapname\\q3dm1')]));
    const r = await probe('udp', s.target, Q3_STATUS);
    expect(r).toMatchObject({ ok: true, reason: `matched ${Q3_STATUS.expect}` });
    expect(s.seen[0]).toEqual(Buffer.from('ffffffff676574737461747573', 'hex'));
  });
  it('passes on a hex prefix, and fails on a reply that does not match, quoting it', async () => {
    const s = await udpServer((m) => (m[0] === 1 ? Buffer.from('ok-reply') : Buffer.from('nope')));
    expect(await probe('udp', s.target, { send: 'hex:01', expect: 'hex:6f6b' })).toMatchObject({ ok: true });
    expect(await probe('udp', s.target, { send: 'hex:02', expect: 'hex:6f6b' })).toMatchObject({ ok: false, reason: 'bad reply: expected hex:6f6b, got "nope"' });
  });
  it('answers a Source A2S challenge once with the challenge appended', async () => {
    const challenge = Buffer.from([0xff, 0xff, 0xff, 0xff, 0x41, 1, 2, 3, 4]);
    const s = await udpServer((m) => (m.length > 25 && m.subarray(-4).equals(challenge.subarray(5)) ? Buffer.from([0xff, 0xff, 0xff, 0xff, 0x49, 0x11]) : challenge));
    const a2s = 'hex:ffffffff54536f7572636520456e67696e6520517565727900';
    expect(await probe('udp', s.target, { send: a2s, expect: 'hex:ffffffff49' })).toMatchObject({ ok: true });
    expect(s.seen).toHaveLength(2);
  });
  it('fails after the timeout when no reply comes', async () => {
    const s = await udpServer(() => null);
    const r = await probe('udp', s.target, Q3_STATUS);
    expect(r.ok).toBe(false);
    expect(r.reason).toMatch(/^timeout after 300ms \(waiting for regex:/);
  });
  it('fails at once on ICMP port unreachable (nothing bound there)', async () => {
    const s = await udpServer(() => null);
    const target = s.target;
    await s.close();
    const r = await probe('udp', target, Q3_STATUS);
    expect(r).toMatchObject({ ok: false, reason: 'port unreachable (ICMP)' });
    expect(r.latency_ms).toBeLessThan(TIMEOUT);
  });
});
