/**
 * The data path of one worker: a session per client connection, from accept to close.
 *
 *   accept ─▶ acquire ─┬─ backend ──▶ connect ─┬─ ok ──▶ splice both ways ─▶ close ─▶ release
 *                      ├─ full ────▶ queue ──┘ └─ fail ─▶ reacquire (≤ retries) ─┘
 *                      └─ none ────▶ close (no_backend)
 *
 * Performance notes (this file decides the proxy's cost per CPU-second):
 * - No closure is created per connection or per chunk: every socket event goes to one of the
 *   module-level handlers below, which find their session through `socket[kSession]`.
 * - Session objects (and their read buffers, while small) are pooled and reused.
 * - Both sockets read into the session's own buffers (`onread`; accepted sockets through the
 *   symbols found by onreadSymbols), so no Buffer is allocated per chunk. Each buffer starts at
 *   READ_BUFFER_MIN and grows ×4 when a read fills it (nextReadBuffer): idle connections stay
 *   small, streams reach full size after three reads.
 * - Backend → client: when the kernel did not take a chunk at once (`writableLength > 0`) the
 *   backend read is paused until the client has flushed it, so the buffer is never overwritten
 *   while a write still points into it.
 * - Client → backend: a chunk the backend does not take at once pauses the client until the
 *   backend's 'drain' (or, below the high-water mark, the client reads on into a new buffer).
 * - Backpressure is therefore exact both ways, and half-close is forwarded both ways
 *   (allowHalfOpen on both sockets; 'end' on one side ends the other's write side).
 */
import { connect, Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Engine } from '../balancer/engine.ts';
import { hashKey } from '../balancer/hash.ts';
import {
  BC_BYTES_IN, BC_BYTES_OUT, BC_CONNECT_FAILURES, BC_CONNECT_TIME_MS, BC_CONNECTIONS, BC_KILLED,
  BC_RETRIES, backendCounterIndex, PICK_BAD_SERVICE, PICK_NO_BACKEND, SC_ACCEPTED, SC_BYTES_IN, SC_BYTES_OUT,
  SC_CONNECT_TIME_MS, SC_QUEUE_TIME_MS, SC_QUEUE_TIMEOUTS, SC_QUEUED, SC_RETRIES, SC_TERM_BASE, serviceAddr,
  serviceCounterIndex, S_QUEUED, S_RELEASE_SEQ, TERM_BACKEND_DOWN, TERM_CLIENT_CLOSED, TERM_CONNECT_FAILED,
  TERM_IDLE_TIMEOUT, TERM_NO_BACKEND, TERM_QUEUE_FULL, TERM_QUEUE_TIMEOUT, TERM_REASONS, TERM_SERVER_CLOSED, TERM_SHUTDOWN,
  tallyAddr, T_SERVICE_QUEUED, TERM_BAD_PROXY_HEADER,
  MAX_TRIED,
} from '../shm/layout.ts';
import type { ConnectionLogLine } from '../observability/log.ts';
import type { BackendEntry, ServiceEntry, WorkerToMain } from './messages.ts';
import { encodeProxyV1, encodeProxyV2, parseProxyHeader } from './proxy-protocol.ts';

/** Largest read buffer of a socket; HAProxy's default tune.bufsize is the same. */
export const READ_BUFFER_SIZE = 16 * 1024;
/**
 * Each socket's (client's and backend's) first read buffer; it grows ×4 (up to READ_BUFFER_SIZE)
 * each time a read fills it, so idle and request/response connections keep a small one (memory
 * per idle connection: a 16 KiB backend buffer cost ≈ 3.5 KB of RSS, 1 KiB buffers rather than
 * 256 B ≈ 1.5 KB for the two) and streaming ones reach full size after three reads (256 B, 1 KiB,
 * 4 KiB, 16 KiB).
 */
const READ_BUFFER_MIN = 256;
/** Client bytes held while a session waits for its backend; the client is paused beyond this. */
const PENDING_LIMIT = 64 * 1024;
/** Queued connections re-try at least this often, so backends coming up (no release) are seen. */
const QUEUE_POLL_MS = 200;
/** Pools are capped so a burst does not pin memory for ever. */
const SESSION_POOL_MAX = 4096;

// Session states.
const ST_FREE = 0;
const ST_QUEUED = 1;
const ST_CONNECTING = 2;
const ST_CONNECTED = 3;
/** accept_proxy: waiting for the client's PROXY header, before admission. */
const ST_HEADER = 4;

const kSession = Symbol('fulcrum.session');

/*
 * Node offers `onread` (read into a caller's buffer, no allocation per chunk) only as an option of
 * `net.connect`, not for accepted sockets. net.Socket implements it with three symbol-keyed
 * fields and `handle.useUserBuffer`; a probe socket made with `onread` tells us those symbols, so
 * accepted sockets can be switched to the same path in `onConnection` (Node's own pause/resume
 * honour it). If a future Node names them differently, accepted sockets keep 'data' events.
 * (bench: the 'data' path allocated a 64 KiB ArrayBuffer per read — GC was 16 % of bulk.)
 */
const onreadSymbols = ((): { buffer: symbol; cb: symbol; gen: symbol } | null => {
  const probe = new Socket({ onread: { buffer: Buffer.alloc(1), callback: () => true } });
  const find = (name: string) => Object.getOwnPropertySymbols(probe).find((x) => x.description === name);
  const buffer = find('kBuffer');
  const cb = find('kBufferCb');
  const gen = find('kBufferGen');
  probe.destroy();
  return buffer && cb && gen ? { buffer, cb, gen } : null;
})();
const kRuntime = Symbol('fulcrum.service');
type TaggedSocket = Socket & { [kSession]: Session | null };

/** One closed connection: the connection log line (field names fixed in observability/log.ts). */
export type CloseRecord = ConnectionLogLine;

/** What the data path needs from its worker; set once by `initDataPath`. */
export interface DataPathContext {
  engine: Engine;
  memory: WebAssembly.Memory;
  workerId: number;
  post(msg: WorkerToMain): void;
  /** Called once per closed connection when set (the connection log). */
  onClose: ((rec: CloseRecord) => void) | null;
  /** Called when the last session ends during a shutdown. */
  onIdle: (() => void) | null;
}

let ctx: DataPathContext;
let f64: Float64Array;
let i32: Int32Array;
/** Backend id → where to connect. Rebuilt on every service table update. */
let backends: (BackendEntry | undefined)[] = [];
/** Every session with a client socket (queued, connecting or connected). */
export const sessions = new Set<Session>();
let shuttingDown = false;

export function initDataPath(c: DataPathContext): void {
  ctx = c;
  f64 = new Float64Array(c.memory.buffer);
  i32 = new Int32Array(c.memory.buffer);
  setInterval(accountAllBytes, 1000).unref();
}

export function setBackends(list: ServiceEntry[]): void {
  const next: (BackendEntry | undefined)[] = [];
  for (const s of list) for (const b of s.backends) next[b.index] = b;
  backends = next;
}

/** Per-service state of one worker: its config, its listener, its wait queue. */
export class ServiceRuntime {
  entry: ServiceEntry;
  index: number;
  /** Index of this worker's first counter for the service. */
  scBase: number;
  /** i32 index of the service's S_QUEUED and S_RELEASE_SEQ. */
  queuedIdx: number;
  seqIdx: number;
  /** i32 index of this worker's tally of its own queued connections (given back if it dies). */
  tallyQueuedIdx: number;
  queue: Session[] = [];
  /** A waitAsync on S_RELEASE_SEQ is pending. */
  waiting = false;
  readonly onWake: () => void;

  constructor(entry: ServiceEntry, workerId: number) {
    this.entry = entry;
    this.index = entry.index;
    this.scBase = serviceCounterIndex(workerId, entry.index, 0);
    this.queuedIdx = (serviceAddr(entry.index) + S_QUEUED) >> 2;
    this.seqIdx = (serviceAddr(entry.index) + S_RELEASE_SEQ) >> 2;
    this.tallyQueuedIdx = (tallyAddr(workerId) + T_SERVICE_QUEUED + entry.index * 4) >> 2;
    this.onWake = () => {
      this.waiting = false;
      pumpQueue(this);
    };
  }
}

/** Everything about one client connection. Pooled: `reset()` makes it new again. */
export class Session {
  client: TaggedSocket | null = null;
  server: TaggedSocket | null = null;
  svc: ServiceRuntime | null = null;
  bk: BackendEntry | undefined = undefined;
  state = ST_FREE;
  hash = 0;
  /** Backend whose B_ACTIVE this session holds (-1: none). */
  backend = -1;
  /** Whether this session holds a service slot (S_ACTIVE): acquire succeeded, release not yet called. */
  holdsSlot = false;
  /** Base index of this worker's counters for `backend`. */
  bcBase = -1;
  retries = 0;
  /**
   * Backends whose connect failed for this session, in order (`retries` of them are set). Made on
   * the first retry (rare), then kept with the pooled session: an idle one does not pay ≈ 200 B.
   */
  tried: Int32Array | null = null;
  reason = -1;
  clientEnded = false;
  serverEnded = false;
  clientClosed = false;
  serverClosed = false;
  tAccept = 0;
  tQueued = 0;
  queueMs = 0;
  tConnect = 0;
  /** -1 until a backend connection is up. */
  connectMs = -1;
  countedIn = 0;
  countedOut = 0;
  clientAddr = '';
  /** The client as its PROXY header named it ('' = the socket's own peer), and the address it reached. */
  srcAddr = '';
  srcPort = 0;
  dstAddr = '';
  dstPort = 0;
  /** Why the session ended, where the reason needs it (a bad PROXY header). */
  detail = '';
  /** Bytes of the client's PROXY header: read from the socket, but not client payload. */
  headerBytes = 0;
  pending: Buffer[] | null = null;
  pendingBytes = 0;
  /**
   * The backend socket's read buffer (`onread`); replaced by a larger one when a read fills it.
   * Without the onread symbols it cannot be replaced (no buffer generator), so it starts full size.
   */
  sbuf: Buffer = Buffer.allocUnsafeSlow(onreadSymbols !== null ? READ_BUFFER_MIN : READ_BUFFER_SIZE);
  /** The client socket's read buffer (see onreadSymbols), reused like `sbuf`; replaced when a write keeps it or a read fills it. */
  cbuf: Buffer | null = onreadSymbols !== null ? Buffer.allocUnsafeSlow(READ_BUFFER_MIN) : null;
  /** Reused for every connect of this session (no options object per connect). */
  readonly connectOptions = {
    host: '',
    port: 0,
    allowHalfOpen: true,
    noDelay: true,
    onread: { buffer: this.sbuf, callback: onBackendRead },
  };

  /**
   * The callback of the flush marker write (see onBackendRead): made on the session's first
   * backpressure episode, then kept with the pooled session (idle sessions do not pay for it).
   */
  onFlushed: ((err?: Error | null) => void) | null = null;

  reset(): void {
    this.client = null;
    this.server = null;
    this.svc = null;
    this.bk = undefined;
    this.state = ST_FREE;
    this.hash = 0;
    this.backend = -1;
    this.holdsSlot = false;
    this.bcBase = -1;
    this.retries = 0;
    this.reason = -1;
    this.clientEnded = false;
    this.serverEnded = false;
    this.clientClosed = false;
    this.serverClosed = false;
    this.tAccept = this.tQueued = this.queueMs = this.tConnect = 0;
    this.connectMs = -1;
    this.countedIn = this.countedOut = 0;
    this.clientAddr = '';
    this.srcAddr = this.dstAddr = this.detail = '';
    this.srcPort = this.dstPort = this.headerBytes = 0;
    this.pending = null;
    this.pendingBytes = 0;
    // The pool keeps small read buffers only: one grown by a stream would pin 16 KiB per pooled
    // session. (Once per session that streamed; the sockets are closed, nothing points into them.)
    if (this.cbuf !== null && this.cbuf.length > READ_BUFFER_MIN) this.cbuf = Buffer.allocUnsafeSlow(READ_BUFFER_MIN);
    if (onreadSymbols !== null && this.sbuf.length > READ_BUFFER_MIN) this.sbuf = Buffer.allocUnsafeSlow(READ_BUFFER_MIN);
  }
}

const pool: Session[] = [];

// ── accept ───────────────────────────────────────────────────────────────────

/** Tags a listener with its service; its 'connection' event goes to `onConnection`. */
export function attachListener(server: import('node:net').Server, rt: ServiceRuntime): void {
  (server as unknown as { [kRuntime]: ServiceRuntime })[kRuntime] = rt;
  server.on('connection', onConnection);
}

export function updateRuntime(server: import('node:net').Server, rt: ServiceRuntime): void {
  (server as unknown as { [kRuntime]: ServiceRuntime })[kRuntime] = rt;
}

/** HOT: the listener's 'connection' event, once per accepted connection. */
function onConnection(this: { [kRuntime]: ServiceRuntime }, socket: Socket): void {
  const rt = this[kRuntime];
  const client = socket as TaggedSocket;
  const e = rt.entry;
  f64[rt.scBase + SC_ACCEPTED] += 1;
  const s = pool.pop() ?? new Session();
  s.client = client;
  s.svc = rt;
  s.tAccept = performance.now();
  client[kSession] = s;
  const handle = (client as unknown as { _handle: { useUserBuffer?(b: Buffer): void } | null })._handle;
  if (onreadSymbols !== null && s.cbuf !== null && handle !== null && typeof handle.useUserBuffer === 'function') {
    const c = client as unknown as Record<symbol, unknown>;
    c[onreadSymbols.buffer] = s.cbuf;
    c[onreadSymbols.cb] = onClientRead;
    c[onreadSymbols.gen] = readBufGen;
    handle.useUserBuffer(s.cbuf);
    client.resume(); // flowing, so 'end' is emitted at EOF (no 'data' listener does it now)
  } else {
    client.on('data', onClientData);
  }
  client.on('end', onClientEnd);
  client.on('error', onClientError);
  client.on('close', onClientClose);
  client.on('timeout', onClientTimeout);
  sessions.add(s);
  if (shuttingDown) {
    closeClient(s, TERM_SHUTDOWN);
    return;
  }
  if (e.accept_proxy) {
    // The client's first bytes are a PROXY header naming the real client: admission and the
    // Maglev key wait for it (readProxyHeader), bounded by timeouts.proxy_header.
    s.state = ST_HEADER;
    client.setTimeout(e.timeouts.proxy_header);
    return;
  }
  admit(s, rt);
}

/** Hashes the client's key, then takes a backend or queues. Once per connection (after its PROXY header, if any). */
function admit(s: Session, rt: ServiceRuntime): void {
  const e = rt.entry;
  if (e.hashed || ctx.onClose !== null) {
    const client = s.client!;
    const proxied = s.srcAddr !== '';
    const ip = proxied ? s.srcAddr : client.remoteAddress ?? '';
    s.clientAddr = e.hash_key === 'source_ip_port' || ctx.onClose !== null ? ip + ':' + (proxied ? s.srcPort : client.remotePort) : ip;
    if (e.hashed) s.hash = hashKey(e.hash_key === 'source_ip_port' ? s.clientAddr : ip) >>> 0;
  }
  // FIFO: a newcomer never overtakes connections already waiting in this worker.
  if (rt.queue.length > 0) {
    enqueue(s, rt);
    return;
  }
  const r = ctx.engine.acquire(rt.index, s.hash);
  if (r >= 0) {
    s.holdsSlot = true;
    connectTo(s, r);
  } else if (r === PICK_NO_BACKEND || r === PICK_BAD_SERVICE) {
    closeClient(s, TERM_NO_BACKEND);
  } else {
    enqueue(s, rt);
  }
}

// ── queue ────────────────────────────────────────────────────────────────────

/** Once per connection that finds the service or its backends full. */
function enqueue(s: Session, rt: ServiceRuntime): void {
  const max = rt.entry.queue.max;
  // The bound is global (all workers): S_QUEUED counts every waiting connection.
  if (Atomics.add(i32, rt.queuedIdx, 1) >= max) {
    Atomics.sub(i32, rt.queuedIdx, 1);
    // Queue full (queue.max reached across all workers): closed at once.
    closeClient(s, TERM_QUEUE_FULL);
    return;
  }
  i32[rt.tallyQueuedIdx] += 1;
  f64[rt.scBase + SC_QUEUED] += 1;
  s.state = ST_QUEUED;
  s.tQueued = performance.now();
  rt.queue.push(s);
  s.client!.setTimeout(rt.entry.queue.timeout);
  if (!rt.waiting) pumpQueue(rt);
}

function leaveQueue(s: Session): void {
  const rt = s.svc!;
  const at = rt.queue.indexOf(s);
  if (at >= 0) rt.queue.splice(at, 1);
  Atomics.sub(i32, rt.queuedIdx, 1);
  i32[rt.tallyQueuedIdx] -= 1;
  s.queueMs = performance.now() - s.tQueued;
  f64[rt.scBase + SC_QUEUE_TIME_MS] += s.queueMs;
  s.state = ST_FREE;
  if (s.client !== null && !s.clientClosed) s.client.setTimeout(0);
}

/**
 * Gives queued connections the slots released since the last look. Called when a connection is
 * queued, and on every wake of the service's S_RELEASE_SEQ (a release in any worker) or poll.
 */
function pumpQueue(rt: ServiceRuntime): void {
  const q = rt.queue;
  while (q.length > 0) {
    // Read the sequence before trying: a release after this read makes the wait return at once.
    const seq = Atomics.load(i32, rt.seqIdx);
    const s = q[0];
    const r = ctx.engine.acquire(rt.index, s.hash);
    if (r >= 0) {
      leaveQueue(s);
      s.holdsSlot = true;
      connectTo(s, r);
      continue;
    }
    if (r === PICK_NO_BACKEND || r === PICK_BAD_SERVICE) {
      leaveQueue(s);
      closeClient(s, TERM_NO_BACKEND);
      continue;
    }
    rt.waiting = true;
    const w = Atomics.waitAsync(i32, rt.seqIdx, seq, QUEUE_POLL_MS);
    if (w.async) w.value.then(rt.onWake);
    else queueMicrotask(rt.onWake);
    return;
  }
}

// ── connect ──────────────────────────────────────────────────────────────────

/** Once per connect attempt (the first, and each retry). */
function connectTo(s: Session, backend: number): void {
  const rt = s.svc!;
  s.backend = backend;
  s.bcBase = backendCounterIndex(ctx.workerId, backend, 0);
  s.state = ST_CONNECTING;
  const bk = backends[backend];
  s.bk = bk;
  if (bk === undefined) {
    // The table has not caught up with the engine (a reload in flight): treat as a failed connect.
    connectFailed(s, null, 'EUNKNOWNBACKEND');
    return;
  }
  s.tConnect = performance.now();
  const o = s.connectOptions;
  o.host = bk.host;
  o.port = bk.port;
  o.onread.buffer = s.sbuf;
  const server = connect(o) as TaggedSocket;
  server[kSession] = s;
  s.server = server;
  s.serverClosed = false;
  s.serverEnded = false;
  server.setTimeout(rt.entry.timeouts.connect);
  server.on('connect', onServerConnect);
  server.on('end', onServerEnd);
  server.on('error', onServerError);
  server.on('close', onServerClose);
  server.on('drain', onServerDrain);
  server.on('timeout', onServerTimeout);
}

/** Once per established backend connection. */
function onServerConnect(this: TaggedSocket): void {
  const s = this[kSession];
  if (s === null) return;
  const rt = s.svc!;
  s.state = ST_CONNECTED;
  s.connectMs = performance.now() - s.tConnect;
  f64[rt.scBase + SC_CONNECT_TIME_MS] += s.connectMs;
  f64[s.bcBase + BC_CONNECTIONS] += 1;
  f64[s.bcBase + BC_CONNECT_TIME_MS] += s.connectMs;
  this.setTimeout(0);
  if (onreadSymbols !== null) {
    // From now on the backend's read buffer can be replaced (grown) like the client's. Not before:
    // while connecting, Node may swap the handle (autoSelectFamily tries the next address) and
    // would then ask the generator for the first buffer, which it only gives right after a read.
    (this as unknown as Record<symbol, unknown>)[onreadSymbols.gen] = readBufGen;
  }
  const client = s.client!;
  client.setTimeout(rt.entry.timeouts.idle);
  if (rt.entry.send_proxy !== 'none') this.write(proxyHeaderFor(s, client, rt.entry.send_proxy));
  const pending = s.pending;
  if (pending !== null) {
    let full = false;
    for (let i = 0; i < pending.length; i++) full = this.write(pending[i]) === false;
    s.pending = null;
    s.pendingBytes = 0;
    if (full) client.pause();
    else client.resume();
  }
  if (s.clientEnded) this.end();
}

/** A connect attempt failed (error or timeout): count it, tell the control plane, try again. */
function connectFailed(s: Session, sock: TaggedSocket | null, code: string): void {
  const rt = s.svc!;
  const failed = s.backend;
  if (sock !== null) {
    sock[kSession] = null;
    sock.destroy();
  }
  s.server = null;
  s.serverClosed = true;
  s.state = ST_FREE;
  f64[s.bcBase + BC_CONNECT_FAILURES] += 1;
  const bk = s.bk;
  ctx.post({ type: 'connect-failed', service: rt.entry.name, backend: failed, address: bk?.address ?? '', error: code });
  if (s.clientClosed) {
    // The client left while we were connecting: give everything back.
    releaseSession(s);
    maybeFinalize(s);
    return;
  }
  if (s.retries < rt.entry.retries && !shuttingDown) {
    // The engine's tried list is per worker, and another connection's acquire clears it while
    // this one was connecting: restore this session's own list before asking again.
    const engine = ctx.engine;
    engine.resetTried();
    const tried = s.tried ??= new Int32Array(MAX_TRIED);
    for (let i = 0; i < s.retries; i++) engine.excludeBackend(tried[i]);
    const r = engine.reacquire(rt.index, s.hash, failed);
    if (r >= 0) {
      tried[s.retries] = failed;
      s.retries++;
      f64[rt.scBase + SC_RETRIES] += 1;
      f64[s.bcBase + BC_RETRIES] += 1;
      connectTo(s, r);
      return;
    }
    // reacquire released `failed`; the service slot is still held. Nothing left to try (every
    // candidate failed, or the rest are full): the client saw its connects fail.
    s.backend = -1;
    releaseSession(s);
    closeClient(s, TERM_CONNECT_FAILED);
    return;
  }
  releaseSession(s);
  closeClient(s, shuttingDown ? TERM_SHUTDOWN : TERM_CONNECT_FAILED);
}

function onServerTimeout(this: TaggedSocket): void {
  const s = this[kSession];
  if (s === null) return;
  if (s.state === ST_CONNECTING) connectFailed(s, this, 'ETIMEDOUT');
  else if (s.state === ST_CONNECTED) killSession(s, TERM_IDLE_TIMEOUT);
}

function onServerError(this: TaggedSocket, err: NodeJS.ErrnoException): void {
  const s = this[kSession];
  if (s === null) return;
  if (s.state === ST_CONNECTING) {
    connectFailed(s, this, err.code ?? 'ERROR');
    return;
  }
  if (s.reason < 0) s.reason = TERM_SERVER_CLOSED;
  // 'close' follows.
}

// ── splice ───────────────────────────────────────────────────────────────────

/** HOT: once per chunk read from a client. */
function onClientData(this: TaggedSocket, chunk: Buffer): void {
  const s = this[kSession];
  if (s === null) return;
  if (s.state === ST_CONNECTED) {
    if (s.server!.write(chunk) === false) this.pause();
    return;
  }
  // Still queued or connecting: hold the bytes (bounded) until the backend is there.
  if (s.pending === null) s.pending = [];
  s.pending.push(chunk);
  s.pendingBytes += chunk.length;
  if (s.pendingBytes >= PENDING_LIMIT) this.pause();
  if (s.state === ST_HEADER) readProxyHeader(s, this);
}

/**
 * accept_proxy: once per client chunk until its PROXY header is whole (almost always the first
 * chunk). A bad header closes the client (reason bad_proxy_header, the parser's words in the
 * log's `detail`); a good one names the client for the Maglev key, the log and send_proxy, and
 * the bytes after it wait for the backend like any early client bytes.
 */
function readProxyHeader(s: Session, client: TaggedSocket): void {
  const pending = s.pending!;
  const buf = pending.length === 1 ? pending[0] : Buffer.concat(pending);
  const r = parseProxyHeader(buf);
  if (r.status === 'incomplete') {
    s.pending = [buf];
    return;
  }
  if (r.status === 'error') {
    s.detail = r.reason;
    closeClient(s, TERM_BAD_PROXY_HEADER);
    return;
  }
  const h = r.header;
  if (h.family === 'tcp4' || h.family === 'tcp6') {
    s.srcAddr = h.srcAddress;
    s.srcPort = h.srcPort;
    s.dstAddr = h.dstAddress;
    s.dstPort = h.dstPort;
  }
  // The header is not the client's payload: bytes_in starts after it.
  s.countedIn = s.headerBytes = r.consumed;
  const rest = buf.subarray(r.consumed);
  s.pending = rest.length > 0 ? [rest] : null;
  s.pendingBytes = rest.length;
  s.state = ST_FREE;
  client.setTimeout(0);
  admit(s, s.svc!);
}

/** The PROXY header for the backend: the client as its own header named it, else the socket's peer. Once per backend connection. */
function proxyHeaderFor(s: Session, client: Socket, version: 'v1' | 'v2'): Buffer {
  const proxied = s.srcAddr !== '';
  const src = proxied ? s.srcAddr : client.remoteAddress ?? '';
  const srcPort = proxied ? s.srcPort : client.remotePort ?? 0;
  const dst = proxied ? s.dstAddr : client.localAddress ?? '';
  const dstPort = proxied ? s.dstPort : client.localPort ?? 0;
  return version === 'v2' ? encodeProxyV2(src, srcPort, dst, dstPort) : encodeProxyV1(src, srcPort, dst, dstPort);
}

/** The buffer a socket reads into next, when its read callback replaced it (else unchanged). */
let swapBuf: Buffer | null = null;

/**
 * Rare (a read filled the buffer, or a client write kept it): called from a socket's read
 * callback (onClientRead, onBackendRead), it makes the buffer that socket reads into next;
 * Node takes it from readBufGen right after the callback returns. The caller stores it in the
 * session (`cbuf`, `sbuf`).
 */
function nextReadBuffer(size: number): Buffer {
  const b = Buffer.allocUnsafeSlow(Math.min(size, READ_BUFFER_SIZE));
  swapBuf = b;
  return b;
}

/** Called by Node right after each onClientRead and onBackendRead (onread's buffer generator). */
function readBufGen(): Buffer | undefined {
  const b = swapBuf;
  swapBuf = null;
  return b ?? undefined;
}

/**
 * HOT: once per chunk read from a client, into the session's `cbuf` (`onread`; see onreadSymbols).
 * Returning false stops reading until the backend's 'drain' (`onServerDrain`).
 */
function onClientRead(this: TaggedSocket, n: number, buf: Uint8Array): boolean {
  const s = this[kSession];
  if (s === null) return false;
  if (s.state === ST_CONNECTED) {
    const server = s.server!;
    const ok = server.write((buf as Buffer).subarray(0, n));
    if (server.writableLength === 0) { // the kernel took it all: the buffer is free again
      if (n === buf.length && n < READ_BUFFER_SIZE) s.cbuf = nextReadBuffer(n * 4);
      return true;
    }
    if (!ok) return false; // stop reading until the backend's 'drain' (onServerDrain)
    // Kept in part, below the high-water mark, so no 'drain' will come: the backend socket still
    // points into the buffer, so this socket reads on into a new one (readBufGen).
    s.cbuf = nextReadBuffer(n === buf.length ? n * 4 : buf.length);
    return true;
  }
  // Still queued or connecting: keep a copy (the buffer is reused by the next read).
  onClientData.call(this, Buffer.from((buf as Buffer).subarray(0, n)));
  return s.pendingBytes < PENDING_LIMIT;
}

/**
 * HOT: once per chunk read from a backend, into the session's `sbuf` (`onread`).
 * When the client cannot take the chunk at once, reading stops until it is flushed (`onFlushed`).
 */
function onBackendRead(this: TaggedSocket, n: number, buf: Uint8Array): boolean {
  const s = this[kSession];
  if (s === null) return false;
  const client = s.client!;
  if (client.destroyed) return false;
  client.write((buf as Buffer).subarray(0, n));
  // A full read: the next goes into a buffer ×4 the size (readBufGen). The old one stays with the
  // write that may still point into it. (Never true without onreadSymbols: sbuf is full size.)
  if (n === buf.length && n < READ_BUFFER_SIZE) s.sbuf = nextReadBuffer(n * 4);
  if (client.writableLength === 0) return true;
  // Not taken whole by the kernel: the client socket still points into our buffer. Stop reading
  // until it is flushed. ('drain' would not come: the chunk is below the high-water mark.) An
  // empty write queued behind it calls back once everything before it has been written.
  client.write(EMPTY, s.onFlushed ??= (err?: Error | null): void => onFlushed(s, err));
  // pause() (not just `return false`): it also marks the stream paused, so resume() restarts reading.
  this.pause();
  return false;
}

/** Once per backpressure episode, client → backend. */
function onServerDrain(this: TaggedSocket): void {
  const s = this[kSession];
  if (s !== null && s.state === ST_CONNECTED && !s.clientClosed) s.client!.resume();
}

const EMPTY = Buffer.alloc(0);

/** Once per backpressure episode, backend → client: the client took our buffer's bytes. */
function onFlushed(s: Session, err: Error | null | undefined): void {
  // An error means the client socket was destroyed: the session is ending anyway.
  if (!err && s.state === ST_CONNECTED && s.server !== null && !s.serverClosed) s.server.resume();
}

function onClientEnd(this: TaggedSocket): void {
  const s = this[kSession];
  if (s === null) return;
  s.clientEnded = true;
  if (s.reason < 0 && !s.serverEnded) s.reason = TERM_CLIENT_CLOSED;
  if (s.state === ST_CONNECTED) s.server!.end();
  else if (s.state === ST_HEADER) this.destroy(); // gone before it said who it was
  else if (s.state === ST_QUEUED) {
    // A client that hangs up before it ever got a backend is gone (HAProxy's abortonclose).
    leaveQueue(s);
    this.destroy();
  }
  // Connecting: the backend's write side is ended once it is connected (onServerConnect).
}

function onServerEnd(this: TaggedSocket): void {
  const s = this[kSession];
  if (s === null) return;
  s.serverEnded = true;
  if (s.reason < 0 && !s.clientEnded) s.reason = TERM_SERVER_CLOSED;
  if (!s.clientClosed) s.client!.end();
}

function onClientError(this: TaggedSocket): void {
  const s = this[kSession];
  if (s !== null && s.reason < 0) s.reason = TERM_CLIENT_CLOSED;
  // 'close' follows.
}

function onClientTimeout(this: TaggedSocket): void {
  const s = this[kSession];
  if (s === null) return;
  if (s.state === ST_QUEUED) {
    leaveQueue(s);
    f64[s.svc!.scBase + SC_QUEUE_TIMEOUTS] += 1;
    closeClient(s, TERM_QUEUE_TIMEOUT);
  } else if (s.state === ST_CONNECTED) {
    killSession(s, TERM_IDLE_TIMEOUT);
  } else if (s.state === ST_HEADER) {
    s.detail = `no complete PROXY header within ${s.svc!.entry.timeouts.proxy_header}ms`;
    closeClient(s, TERM_BAD_PROXY_HEADER);
  }
}

function onClientClose(this: TaggedSocket, hadError: boolean): void {
  const s = this[kSession];
  if (s === null) return;
  s.clientClosed = true;
  if (s.reason < 0) s.reason = TERM_CLIENT_CLOSED;
  if (s.state === ST_QUEUED) leaveQueue(s);
  const server = s.server;
  if (server !== null && !s.serverClosed) {
    if (hadError || !s.clientEnded || !s.serverEnded || s.state !== ST_CONNECTED) {
      // Reset or destroyed client: nothing more can be delivered either way.
      server.destroy();
    } else {
      // Both sides said goodbye; the backend socket may still be flushing the client's last
      // bytes. It closes by itself; the idle timeout guards a backend that stops reading.
      server.setTimeout(s.svc!.entry.timeouts.idle);
    }
    return; // finalized from onServerClose
  }
  maybeFinalize(s);
}

function onServerClose(this: TaggedSocket, hadError: boolean): void {
  const s = this[kSession];
  if (s === null) return;
  s.serverClosed = true;
  if (!s.clientClosed && (hadError || !s.serverEnded || s.state !== ST_CONNECTED)) {
    // Reset or destroyed backend: pass the abort on. After a clean close the client socket
    // was already ended and closes by itself once its last bytes are written.
    if (s.reason < 0) s.reason = TERM_SERVER_CLOSED;
    s.client!.destroy();
    return; // finalized from onClientClose
  }
  maybeFinalize(s);
}

// ── close ────────────────────────────────────────────────────────────────────

/** Closes the client at once with `reason` (no backend held, or everything released). */
function closeClient(s: Session, reason: number): void {
  if (s.reason < 0) s.reason = reason;
  s.client!.destroy();
}

/** Closes both sides at once: idle timeout, backend marked down, shutdown. */
function killSession(s: Session, reason: number): void {
  if (s.reason < 0 || reason === TERM_BACKEND_DOWN || reason === TERM_SHUTDOWN) s.reason = reason;
  if (s.state === ST_QUEUED) leaveQueue(s);
  if (s.server !== null && !s.serverClosed) s.server.destroy();
  if (!s.clientClosed) s.client!.destroy();
}

/** Gives the engine back what the session holds; safe to call more than once. */
function releaseSession(s: Session): void {
  if (s.holdsSlot) {
    s.holdsSlot = false;
    ctx.engine.release(s.svc!.index, s.backend);
  }
  s.backend = -1;
}

function maybeFinalize(s: Session): void {
  if (s.clientClosed && (s.server === null || s.serverClosed)) finalize(s);
}

/** Adds the bytes moved since the last look to the counters. Per close, and once a second. */
function accountBytes(s: Session): void {
  const rt = s.svc!;
  const inNow = s.client!.bytesRead;
  const outNow = s.server !== null ? s.server.bytesRead : s.countedOut;
  const dIn = inNow - s.countedIn;
  const dOut = outNow - s.countedOut;
  if (dIn === 0 && dOut === 0) return;
  s.countedIn = inNow;
  s.countedOut = outNow;
  f64[rt.scBase + SC_BYTES_IN] += dIn;
  f64[rt.scBase + SC_BYTES_OUT] += dOut;
  if (s.bcBase >= 0 && s.bk !== undefined) {
    f64[s.bcBase + BC_BYTES_IN] += dIn;
    f64[s.bcBase + BC_BYTES_OUT] += dOut;
  }
}

function accountAllBytes(): void {
  for (const s of sessions) if (s.state === ST_CONNECTED) accountBytes(s);
}

/** Exactly once per session: counters, release, log, back to the pool. */
function finalize(s: Session): void {
  const rt = s.svc!;
  if (s.client![kSession] !== s) return;
  accountBytes(s);
  releaseSession(s);
  const reason = s.reason < 0 ? TERM_CLIENT_CLOSED : s.reason;
  f64[rt.scBase + SC_TERM_BASE + reason] += 1;
  s.client![kSession] = null;
  if (s.server !== null) s.server[kSession] = null;
  sessions.delete(s);
  if (ctx.onClose !== null) {
    const rec: CloseRecord = {
      client: s.clientAddr,
      service: rt.entry.name,
      backend: s.bk?.address ?? null,
      connect_ms: s.connectMs < 0 ? -1 : round1(s.connectMs),
      queue_ms: round1(s.queueMs),
      duration_ms: round1(performance.now() - s.tAccept),
      bytes_in: s.countedIn - s.headerBytes,
      bytes_out: s.countedOut,
      retries: s.retries,
      reason: TERM_REASONS[reason],
    };
    if (s.detail !== '') rec.detail = s.detail;
    ctx.onClose(rec);
  }
  s.reset();
  if (pool.length < SESSION_POOL_MAX) pool.push(s);
  if (shuttingDown && sessions.size === 0 && ctx.onIdle !== null) ctx.onIdle();
}

const round1 = (ms: number): number => Math.round(ms * 10) / 10;

// ── control (rare) ───────────────────────────────────────────────────────────

/** Closes this worker's sessions on `backend` (on_marked_down: shutdown_sessions). */
export function killBackend(backend: number): number {
  let killed = 0;
  for (const s of sessions) {
    if (s.backend === backend && (s.state === ST_CONNECTED || s.state === ST_CONNECTING)) {
      f64[s.bcBase + BC_KILLED] += 1;
      killSession(s, TERM_BACKEND_DOWN);
      killed++;
    }
  }
  return killed;
}

/** Stop path, step 1: no new sessions; waiting ones are closed (reason shutdown). */
export function beginShutdown(): void {
  shuttingDown = true;
  for (const s of [...sessions]) if (s.state === ST_QUEUED || s.state === ST_HEADER) killSession(s, TERM_SHUTDOWN);
}

/** Stop path, step 2 (after the grace period): everything still open is closed. */
export function killAll(reason = TERM_SHUTDOWN): void {
  for (const s of [...sessions]) killSession(s, reason);
}

/** Closes the queued sessions of a service that was removed. */
export function dropQueue(rt: ServiceRuntime): void {
  for (const s of [...rt.queue]) {
    leaveQueue(s);
    closeClient(s, TERM_NO_BACKEND);
  }
}
