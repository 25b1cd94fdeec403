/**
 * Socket helpers shared by tests: echo and named backends, clients bound to a chosen loopback
 * address, digests, free ports, polling. Real sockets only; every helper cleans up after itself
 * when its `close()` is called (use afterAll/finally).
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';

export interface TestServer {
  server: Server;
  host: string;
  port: number;
  /** "host:port" */
  address: string;
  /** Sockets currently open on this server. */
  readonly sockets: Set<Socket>;
  /** Connections accepted so far. */
  accepted: number;
  close(): Promise<void>;
}

async function serve(host: string, port: number, onSocket: (s: Socket) => void): Promise<TestServer> {
  const sockets = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true });
  const ts: TestServer = {
    server,
    host,
    port: 0,
    address: '',
    sockets,
    accepted: 0,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  server.on('connection', (s) => {
    ts.accepted++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    onSocket(s);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port }, () => resolve());
  });
  ts.port = (server.address() as AddressInfo).port;
  ts.address = `${host}:${ts.port}`;
  return ts;
}

/** Echoes every byte back; ends its side when the client ends (half-close honoured). */
export function startEchoServer(host = '127.0.0.1', port = 0): Promise<TestServer> {
  return serve(host, port, (s) => {
    s.pipe(s);
  });
}

/** Writes `name\n` on connect, then echoes; the connection stays open until the client closes. */
export function startNamedServer(name: string, host = '127.0.0.1', port = 0): Promise<TestServer> {
  return serve(host, port, (s) => {
    s.write(`${name}\n`);
    s.pipe(s);
  });
}

/** Runs `onSocket` for each connection (for custom backends). */
export function startServer(onSocket: (s: Socket) => void, host = '127.0.0.1', port = 0): Promise<TestServer> {
  return serve(host, port, onSocket);
}

/** Ports this test process has handed out already: never given twice. */
const handedOut = new Set<number>();

/**
 * A port that was free a moment ago on `host` (for configs, which need a port up front). The
 * kernel may offer a port it just took back; a port handed out before in this process (used as a
 * listener, or meant to stay dead) is never returned again, so two roles cannot share one port.
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (;;) {
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port: 0 }, () => resolve());
    });
    const { port } = server.address() as AddressInfo;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    if (handedOut.has(port)) continue;
    handedOut.add(port);
    return port;
  }
}

/** Connects, optionally from `localAddress` (any 127.x.y.z works on Linux loopback). */
export function connectClient(port: number, host = '127.0.0.1', localAddress?: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host, port, localAddress, allowHalfOpen: true });
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/** Reads up to the first newline (the named server's greeting). Rejects on close or after `ms`. */
export function readLine(s: Socket, ms = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => done(new Error(`no line within ${ms}ms (got ${JSON.stringify(buf)})`)), ms);
    const onData = (d: Buffer): void => {
      buf += d.toString('utf8');
      const i = buf.indexOf('\n');
      if (i >= 0) done(null, buf.slice(0, i));
    };
    const onClose = (): void => done(new Error(`closed before a line (got ${JSON.stringify(buf)})`));
    function done(err: Error | null, line?: string): void {
      clearTimeout(timer);
      s.off('data', onData);
      s.off('close', onClose);
      s.off('end', onClose);
      if (err) reject(err);
      else resolve(line as string);
    }
    s.on('data', onData);
    s.once('close', onClose);
    s.once('end', onClose);
  });
}

/** Resolves when the other side closes the connection ('end' or 'close'), or rejects after `ms`. */
export function waitClose(s: Socket, ms = 5000): Promise<void> {
  if (s.closed || s.readableEnded) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`socket still open after ${ms}ms`)), ms);
    const done = (): void => {
      clearTimeout(timer);
      resolve();
    };
    s.once('end', done);
    s.once('close', done);
    s.on('error', () => {});
    s.resume();
  });
}

/** Collects everything the socket sends until it ends. */
export function readAll(s: Socket, ms = 30_000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => reject(new Error(`no end within ${ms}ms (got ${chunks.reduce((n, c) => n + c.length, 0)} bytes)`)), ms);
    s.on('data', (d: Buffer) => chunks.push(d));
    s.once('end', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
    s.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/**
 * Whether any socket listens on IPv4 `host:port`, as the kernel says (/proc/net/tcp, state 0A):
 * for waiting until a listener has really closed, without connecting (a probe connection could
 * be accepted and counted).
 */
export function listening(host: string, port: number): boolean {
  // /proc/net/tcp writes the address as the 32-bit word in host (little-endian) order, in hex.
  const addr = host.split('.').map((o) => Number(o).toString(16).padStart(2, '0').toUpperCase()).reverse().join('');
  const local = `${addr}:${port.toString(16).padStart(4, '0').toUpperCase()}`;
  return readFileSync('/proc/net/tcp', 'utf8').split('\n').some((line) => {
    const f = line.trim().split(/\s+/);
    return f[1] === local && f[3] === '0A';
  });
}

export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
export const randomData = (n: number): Buffer => randomBytes(n);

/**
 * Polls `pred` every `every` ms (20 by default) until true; throws with `what` after `ms`.
 * Resolves with the milliseconds it waited (for tests that bound how long a real system took).
 * What tests wait with, instead of sleeping a fixed time and then asserting.
 */
export async function waitFor(pred: () => boolean | Promise<boolean>, ms = 5000, what = 'condition', every = 20): Promise<number> {
  const start = performance.now();
  while (!(await pred())) {
    if (performance.now() - start > ms) throw new Error(`timed out after ${ms}ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
  return performance.now() - start;
}

/**
 * A bounded observation of something that must not happen: polls `pred` every 10 ms for `ms` and
 * throws (naming `what`) the moment it is true. For real systems whose clock a test does not hold
 * (the workers' data plane, processes in namespaces); code that takes a Clock is checked on a
 * TestClock instead. Make `ms` generous next to how soon the wrong thing would show.
 */
export async function staysFalse(pred: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const start = performance.now();
  for (;;) {
    if (await pred()) throw new Error(`${what} after ${Math.round(performance.now() - start)}ms (must not happen within ${ms}ms)`);
    if (performance.now() - start >= ms) return;
    await new Promise((r) => setTimeout(r, 10));
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
