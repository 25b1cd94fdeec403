/**
 * The floor: the least a proxy on Node's TCP handles can do per connection and per chunk — the
 * same handles and calls as src/proxy/transport-js.ts (through src/proxy/handles.ts), without the
 * engine, counters, queue, timeouts, pooling or half-close bookkeeping. Round-robin over the
 * backends, one 16 KiB buffer per direction. Only for `node bench/diag.ts --against minimal`;
 * never a product path.
 *
 *   node bench/diag/minimal-proxy.ts LISTEN=BACKEND[,BACKEND…] [LISTEN=…]
 */
import { createServer } from 'node:net';
import {
  acceptRaw, K_NREAD, K_WRITE_ASYNC, ShutdownWrap, streamState, TCP, TCP_SOCKET, TCPConnectWrap, UV_EOF, WriteWrap,
  type Req, type TcpHandle,
} from '../../src/proxy/handles.ts';

interface Pair {
  client: TcpHandle;
  server: TcpHandle;
  cbuf: Buffer;
  sbuf: Buffer;
  connected: boolean;
  pending: Buffer | null;
  ends: number;
  closed: boolean;
}
type Tagged = TcpHandle & { pair: Pair; toServer: boolean };
type Resume = Req & { from: TcpHandle };

const split = (a: string): [string, number] => [a.slice(0, a.lastIndexOf(':')), Number(a.slice(a.lastIndexOf(':') + 1))];

function close(p: Pair): void {
  if (p.closed) return;
  p.closed = true;
  p.client.close();
  p.server.close();
}

function onResumed(this: Resume): void {
  this.from.readStart();
}

/** Writes n bytes of buf to `to`; when libuv keeps part of them, `from` stops until they are out. */
function send(p: Pair, from: TcpHandle, to: TcpHandle, buf: Buffer, n: number): void {
  const req = new WriteWrap() as Resume;
  if (to.writeBuffer(req, buf.subarray(0, n)) !== 0) {
    close(p);
    return;
  }
  if (streamState[K_WRITE_ASYNC] === 0) return;
  req.from = from;
  req.oncomplete = onResumed as unknown as Req['oncomplete'];
  from.readStop();
}

function onRead(this: Tagged): undefined {
  const p = this.pair;
  const n = streamState[K_NREAD];
  if (n > 0) {
    if (!this.toServer) send(p, this, p.client, p.sbuf, n);
    else if (p.connected) send(p, this, p.server, p.cbuf, n);
    else {
      p.pending = Buffer.from(p.cbuf.subarray(0, n));
      this.readStop();
    }
  } else if (n === UV_EOF) {
    if (++p.ends === 2) {
      close(p);
      return undefined;
    }
    (this.toServer ? p.server : p.client).shutdown(new ShutdownWrap());
  } else if (n < 0) close(p);
  return undefined;
}

function onConnected(this: Req & { pair: Pair }, status: number): void {
  const p = this.pair;
  if (status < 0 || p.closed) return close(p);
  p.connected = true;
  p.server.readStart();
  if (p.pending !== null) {
    send(p, p.client, p.server, p.pending, p.pending.length);
    p.pending = null;
    p.client.readStart();
  }
}

for (const spec of process.argv.slice(2)) {
  const [listen, list] = spec.split('=');
  const backends = list.split(',').map(split);
  let next = 0;
  const server = createServer();
  acceptRaw(server, (err, handle) => {
    if (err !== 0 || handle === undefined) return;
    const upstream = new TCP(TCP_SOCKET);
    const p: Pair = {
      client: handle, server: upstream, cbuf: Buffer.allocUnsafe(16384), sbuf: Buffer.allocUnsafe(16384),
      connected: false, pending: null, ends: 0, closed: false,
    };
    for (const [h, toServer] of [[handle, true], [upstream, false]] as const) {
      const t = h as Tagged;
      t.pair = p;
      t.toServer = toServer;
      t.onread = onRead as TcpHandle['onread'];
      t.useUserBuffer(toServer ? p.cbuf : p.sbuf);
    }
    upstream.setNoDelay(true);
    handle.readStart();
    const req = new TCPConnectWrap() as Req & { pair: Pair };
    req.pair = p;
    req.oncomplete = onConnected as Req['oncomplete'];
    const [host, port] = backends[next++ % backends.length];
    if (upstream.connect(req, host, port) !== 0) close(p);
  });
  const [host, port] = split(listen);
  server.listen({ host, port }, () => console.log(JSON.stringify({ listen })));
}
process.on('SIGTERM', () => process.exit(0));
