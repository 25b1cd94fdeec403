/**
 * UDP helpers for tests: named echo backends that can parse a PROXY v2 header, clients that
 * exchange datagrams with a deadline. Real sockets on 127.0.0.0/8; `close()` cleans up.
 */
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';

/** What a backend saw in front of a datagram: the client a PROXY v2 header named. */
export interface SeenHeader {
  command: number;
  family: number;
  src: string;
  srcPort: number;
  dst: string;
  dstPort: number;
}

export interface UdpBackend {
  name: string;
  socket: Socket;
  host: string;
  port: number;
  address: string;
  /** Datagrams received. */
  received: number;
  /** Headers seen, by the sending (proxy) socket's "ip:port". */
  headers: Map<string, SeenHeader>;
  /** Answers or not: a silent backend takes datagrams and says nothing. */
  silent: boolean;
  close(): Promise<void>;
}

const V2_SIG = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');

/**
 * A PROXY v2 header at the start of `msg`, parsed here independently of src/ (a backend written
 * from the spec, section 2.2), and the payload after it.
 */
export function splitProxyV2(msg: Buffer): { header: SeenHeader | null; payload: Buffer } {
  if (msg.length < 16 || !msg.subarray(0, 12).equals(V2_SIG)) return { header: null, payload: msg };
  const len = msg.readUInt16BE(14);
  const family = msg[13];
  const body = msg.subarray(16, 16 + len);
  let header: SeenHeader;
  if (family >> 4 === 1) {
    header = { command: msg[12], family, src: [...body.subarray(0, 4)].join('.'), dst: [...body.subarray(4, 8)].join('.'), srcPort: body.readUInt16BE(8), dstPort: body.readUInt16BE(10) };
  } else {
    header = { command: msg[12], family, src: body.subarray(0, 16).toString('hex'), dst: body.subarray(16, 32).toString('hex'), srcPort: body.readUInt16BE(32), dstPort: body.readUInt16BE(34) };
  }
  return { header, payload: msg.subarray(16 + len) };
}

/**
 * A backend that answers each datagram with `name|payload` (the payload after any PROXY v2
 * header), so a client knows who answered what.
 */
export async function startUdpBackend(name: string, host: string, port = 0): Promise<UdpBackend> {
  const socket = createSocket('udp4');
  let closed = false;
  const b: UdpBackend = {
    name, socket, host, port: 0, address: '', received: 0, headers: new Map(), silent: false,
    close: () => new Promise<void>((r) => (closed ? r() : ((closed = true), socket.close(() => r())))),
  };
  socket.on('message', (msg: Buffer, from: RemoteInfo) => {
    b.received++;
    const { header, payload } = splitProxyV2(msg);
    if (header !== null) b.headers.set(`${from.address}:${from.port}`, header);
    if (!b.silent) socket.send([Buffer.from(`${name}|`), payload], from.port, from.address);
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(port, host, () => resolve());
  });
  b.port = socket.address().port;
  b.address = `${host}:${b.port}`;
  return b;
}

/** A client socket bound on `host` that sends and waits for the next datagram. */
export class UdpClient {
  readonly socket: Socket;
  private queue: Buffer[] = [];
  private waiter: ((m: Buffer) => void) | null = null;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('message', (m) => {
      const w = this.waiter;
      if (w !== null) {
        this.waiter = null;
        w(m);
      } else this.queue.push(m);
    });
  }

  static async open(host: string): Promise<UdpClient> {
    const socket = createSocket(host.includes(':') ? 'udp6' : 'udp4');
    await new Promise<void>((r) => socket.bind(0, host, () => r()));
    return new UdpClient(socket);
  }

  get port(): number {
    return this.socket.address().port;
  }

  send(data: Buffer | string, port: number, host: string): void {
    this.socket.send(typeof data === 'string' ? Buffer.from(data) : data, port, host);
  }

  /** The next datagram, or null after `ms`. */
  next(ms = 2000): Promise<Buffer | null> {
    const q = this.queue.shift();
    if (q !== undefined) return Promise.resolve(q);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        resolve(null);
      }, ms);
      this.waiter = (m) => {
        clearTimeout(timer);
        resolve(m);
      };
    });
  }

  /** Sends, then the reply's text (null when none came within `ms`). */
  async ask(data: string, port: number, host: string, ms = 2000): Promise<string | null> {
    this.send(data, port, host);
    const m = await this.next(ms);
    return m === null ? null : m.toString();
  }

  close(): Promise<void> {
    return new Promise((r) => this.socket.close(() => r()));
  }
}
