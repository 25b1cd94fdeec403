/**
 * The data path of one worker: a session per client connection, from accept to close.
 *
 *   accept ─▶ acquire ─┬─ backend ──▶ connect ─┬─ ok ──▶ splice both ways ─▶ close ─▶ release
 *                      ├─ full ────▶ queue ──┘ └─ fail ─▶ reacquire (≤ retries) ─┘
 *                      └─ none ────▶ close (no_backend)
 *
 * Two ways of making the system calls share these decisions. The native relay (relay.ts,
 * relay.c; the default where it is built) accepts on the service's socket, connects to the
 * backend this file picked, moves the bytes both ways and closes, and reports each step in one
 * batch per event-loop wake (`onRelayEvents`): a session then has a client fd instead of a client
 * handle, and no server handle. The JavaScript path (when the relay is not built or turned off)
 * does it all here on Node's TCP handles; services with accept_proxy accept here on both paths,
 * read the client's PROXY header, and lend the client's fd to the relay once a backend is picked.
 * The per-chunk functions (onClientRead, onBackendRead, forward, send) serve the JavaScript path
 * only.
 *
 * Performance notes on the JavaScript path (what decided its cost per CPU-second):
 * - Sockets are libuv TCP handles driven directly (handles.ts), not net.Socket: per chunk one
 *   read callback and one write call, no stream state, no timer re-arm, no tick.
 * - No closure is created per connection or per chunk: every handle and request calls one of the
 *   module-level functions below, which find their session through `handle[kSession]`.
 * - Session objects and their read buffers are pooled. Each handle reads into its session's own
 *   buffer (`useUserBuffer`), which starts at READ_BUFFER_MIN and grows ×4 when a read fills it:
 *   idle connections stay small, streams reach full size after four reads.
 * - A chunk goes out with one `writeBuffer`, which tries the kernel at once. When the kernel did
 *   not take it whole, the rest is queued by libuv still pointing into our buffer: the side it
 *   was read from stops reading until the write completes (`onWritten`). Backpressure is
 *   therefore exact both ways, with one buffer per direction (HAProxy's model).
 * - Half-close is forwarded both ways: EOF on one side shuts down the other's write side (after
 *   its queued writes). Once both sides have sent EOF and nothing is left queued, both handles
 *   are closed (a close sends the FIN the second shutdown would have: one request and one
 *   callback fewer per connection).
 * - A session ends synchronously: closing a handle closes its fd at once and stops its reads, so
 *   its buffers are free; requests still in flight call back later (ECANCELED) and are ignored
 *   through `gen`. No close callback is needed.
 * - Timeouts (connect, idle, queue, PROXY header) are one deadline per session, checked by one
 *   sweep per worker (`sweep`) instead of a timer per socket re-armed on every chunk (both
 *   paths: the relay counts each session's chunks, and the sweep sees whether that moved).
 */
import { isIP, type Server } from 'node:net';
import { lookup } from 'node:dns';
import { performance } from 'node:perf_hooks';
import { getSystemErrorName } from 'node:util';
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
import {
  acceptRaw, K_NREAD, K_WRITE_ASYNC, ShutdownWrap, streamState, TCP, TCP_SOCKET, TCPConnectWrap,
  UV_EOF, WriteWrap, type Req, type SockAddr, type TcpHandle,
} from './handles.ts';
import type { BackendEntry, ServiceEntry, WorkerToMain } from './messages.ts';
import { encodeProxyV1, encodeProxyV2, parseProxyHeader } from './proxy-protocol.ts';
import {
  END_SERVER, EV_ACCEPT, EV_ACCEPT_ERROR, EV_CLIENT_GONE, EV_CONNECT_FAILED, EV_CONNECTED, EV_ENDED, EV_FIELDS,
  formatAddress, RELAY_EVENTS, STAT_ACTIVITY, STAT_BYTES_IN, STAT_BYTES_OUT, STAT_FIELDS, type RelayBinding,
} from './relay.ts';
import { LOCAL_ERRORS } from '../local-errors.ts';

/**
 * Largest read buffer of a socket: four times HAProxy's default tune.bufsize, because a copy per
 * 64 KiB rather than per 16 KiB is what bulk throughput per CPU-second rests on (BENCHMARKS.md);
 * only streaming connections get there.
 */
export const READ_BUFFER_SIZE = 64 * 1024;
/**
 * Each socket's (client's and backend's) first read buffer; it grows ×4 (up to READ_BUFFER_SIZE)
 * each time a read fills it, so idle and request/response connections keep a small one (memory
 * per idle connection: a 16 KiB backend buffer cost ≈ 3.5 KB of RSS) and streaming ones reach
 * full size after four reads (256 B, 1 KiB, 4 KiB, 16 KiB, 64 KiB).
 */
const READ_BUFFER_MIN = 256;
/** Client bytes held while a session waits for its backend; the client is paused beyond this. */
const PENDING_LIMIT = 64 * 1024;
/** Queued connections re-try at least this often, so backends coming up (no release) are seen. */
const QUEUE_POLL_MS = 200;
/** Pools are capped so a burst does not pin memory for ever. */
const SESSION_POOL_MAX = 4096;
/** The timeout sweep runs every 1/8 of the smallest configured timeout, within these bounds. */
const SWEEP_MIN_MS = 10;
const SWEEP_MAX_MS = 1000;

// Session states.
const ST_FREE = 0;
const ST_QUEUED = 1;
const ST_CONNECTING = 2;
const ST_CONNECTED = 3;
/** accept_proxy: waiting for the client's PROXY header, before admission. */
const ST_HEADER = 4;

const kSession = Symbol('fulcrum.session');
const kRuntime = Symbol('fulcrum.service');
type Handle = TcpHandle & { [kSession]: Session | null };
/** A write or shutdown request: which session and direction it belongs to. */
interface SideReq extends Req {
  session: Session | null;
  gen: number;
  toServer: boolean;
  /** Keeps the chunk alive while libuv still points into it (async writes). */
  buffer: Uint8Array | null;
}
interface ConnectReq extends Req {
  session: Session | null;
  gen: number;
  attempt: number;
}

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
  /**
   * Called when this process ran out of something it needs for a connection (errno < 0: EMFILE,
   * ENFILE, ENOBUFS…): while accepting it, or opening its backend socket. Not a backend's fault.
   */
  onLocalError: ((errno: number, service: string, during: 'accept' | 'connect') => void) | null;
  /** The native relay that makes the data path's system calls, or null (Node's TCP handles do). */
  relay: RelayBinding | null;
}

let ctx: DataPathContext;
let f64: Float64Array;
let i32: Int32Array;
/** Backend id → where to connect, and its address family (4, 6, or 0: a name to resolve). */
let backends: (BackendEntry | undefined)[] = [];
let families: number[] = [];
/** Every open session (from accept until its handles are closed). */
export const sessions = new Set<Session>();
let shuttingDown = false;
/** performance.now() as of the last sweep or accept: activity stamps use it (no clock read per chunk). */
let clock = 0;
let sweepMs = 0;
let sweepTimer: ReturnType<typeof setInterval> | null = null;
/** performance.now() at the previous sweep: relayed sessions' activity is stamped with it. */
let lastSweep = 0;

// The relay's side (relay.ts has the layout): a slot per session it has worked for, a runtime per listener.
let relay: RelayBinding | null = null;
let relayStats = new Float64Array(0);
const relayEvents = new Int32Array(RELAY_EVENTS * EV_FIELDS);
const slotSessions: (Session | null)[] = [];
const freeSlots: number[] = [];
const relayListeners: (ServiceRuntime | undefined)[] = [];
/** Filled by relay.localAddress (send_proxy's destination). */
const localAddr = new Int32Array(5);

export function initDataPath(c: DataPathContext): void {
  ctx = c;
  f64 = new Float64Array(c.memory.buffer);
  i32 = new Int32Array(c.memory.buffer);
  clock = lastSweep = performance.now();
  setInterval(accountAllBytes, 1000).unref();
  relay = c.relay;
  if (relay !== null) {
    relayStats = new Float64Array(1024 * STAT_FIELDS);
    relay.init(relayStats, relayEvents, onRelayEvents);
  }
}

/** Whether the relay makes this worker's system calls (its listeners: listenRelay). */
export function relayOn(): boolean {
  return relay !== null;
}

export function setBackends(list: ServiceEntry[]): void {
  const next: (BackendEntry | undefined)[] = [];
  const fam: number[] = [];
  let shortest = Infinity;
  for (const s of list) {
    for (const b of s.backends) {
      next[b.index] = b;
      fam[b.index] = isIP(b.host);
    }
    shortest = Math.min(shortest, s.timeouts.connect, s.timeouts.idle, s.queue.timeout, s.accept_proxy ? s.timeouts.proxy_header : Infinity);
  }
  backends = next;
  families = fam;
  const every = Math.max(SWEEP_MIN_MS, Math.min(SWEEP_MAX_MS, Math.floor(shortest / 8)));
  if (every !== sweepMs) {
    sweepMs = every;
    if (sweepTimer !== null) clearInterval(sweepTimer);
    sweepTimer = setInterval(sweep, every);
    sweepTimer.unref();
  }
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

/**
 * A session's read buffer before its first read on a handle: made then (READ_BUFFER_MIN), so the
 * relay's sessions, which never read here, hold none.
 */
const NO_BUFFER = Buffer.alloc(0);
const readBuffer = (b: Buffer): Buffer => (b.length === 0 ? Buffer.allocUnsafeSlow(READ_BUFFER_MIN) : b);

/** Everything about one client connection. Pooled: `reset()` makes it new again. */
export class Session {
  client: Handle | null = null;
  server: Handle | null = null;
  svc: ServiceRuntime | null = null;
  bk: BackendEntry | undefined = undefined;
  state = ST_FREE;
  /** Bumped by reset(): requests of an earlier use of this pooled object are ignored. */
  gen = 0;
  /** Bumped per connect attempt: a cancelled attempt's callback is ignored. */
  attempt = 0;
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
  /** EOF read from the client / the backend. */
  clientEnded = false;
  serverEnded = false;
  /** Writes queued by libuv (the kernel did not take them at once), per direction. */
  c2sWrites = 0;
  s2cWrites = 0;
  /** Timeout of the current state (0: none), measured from lastActive. */
  timeoutMs = 0;
  lastActive = 0;
  tAccept = 0;
  tQueued = 0;
  queueMs = 0;
  tConnect = 0;
  /** -1 until a backend connection is up. */
  connectMs = -1;
  bytesIn = 0;
  bytesOut = 0;
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
  /** The client's and the backend's read buffers; replaced by a larger one when a read fills them. */
  cbuf: Buffer = NO_BUFFER;
  sbuf: Buffer = NO_BUFFER;
  /** The last chunk's view of `cbuf` / `sbuf` (bytes 0..n), reused while chunks keep their size. */
  cview: Buffer | null = null;
  sview: Buffer | null = null;
  /** The client socket when the relay accepted it (no handle then), else -1; -1 again once closed. */
  fd = -1;
  /** The client's address, when the relay accepted it and something needs it (hash, log, send_proxy). */
  peerIp = '';
  peerPort = 0;
  /** This session's relay slot (its stats), from its first relay request until it ends, else -1. */
  slot = -1;
  /** The relay holds a session for the slot now (connecting, relaying, or watching the queued client). */
  inRelay = false;
  /** bytesIn / bytesOut when the relay's connect was asked (its counters start at 0 there). */
  relayBaseIn = 0;
  relayBaseOut = 0;
  /** The relay's activity count as the last sweep saw it. */
  seenActivity = 0;

  reset(): void {
    this.client = null;
    this.server = null;
    this.svc = null;
    this.bk = undefined;
    this.state = ST_FREE;
    this.gen++;
    this.attempt = 0;
    this.hash = 0;
    this.backend = -1;
    this.holdsSlot = false;
    this.bcBase = -1;
    this.retries = 0;
    this.reason = -1;
    this.clientEnded = this.serverEnded = false;
    this.c2sWrites = this.s2cWrites = 0;
    this.timeoutMs = this.lastActive = 0;
    this.tAccept = this.tQueued = this.queueMs = this.tConnect = 0;
    this.connectMs = -1;
    this.bytesIn = this.bytesOut = this.countedIn = this.countedOut = 0;
    this.clientAddr = '';
    this.srcAddr = this.dstAddr = this.detail = '';
    this.srcPort = this.dstPort = this.headerBytes = 0;
    this.pending = null;
    this.pendingBytes = 0;
    // The pool keeps small read buffers only: one grown by a stream would pin 64 KiB per pooled
    // session. (Once per session that streamed; its handles are closed, nothing points into them.)
    if (this.cbuf.length > READ_BUFFER_MIN) this.cbuf = NO_BUFFER;
    if (this.sbuf.length > READ_BUFFER_MIN) this.sbuf = NO_BUFFER;
    this.cview = this.sview = null;
    this.fd = this.slot = -1;
    this.peerIp = '';
    this.peerPort = 0;
    this.inRelay = false;
    this.relayBaseIn = this.relayBaseOut = this.seenActivity = 0;
  }
}

const pool: Session[] = [];

// ── accept ───────────────────────────────────────────────────────────────────

/** Tags a listener with its service; its connections go to `onAccept` as raw handles. */
export function attachListener(server: Server, rt: ServiceRuntime): void {
  (server as unknown as { [kRuntime]: ServiceRuntime })[kRuntime] = rt;
  acceptRaw(server, onAccept);
}

export function updateRuntime(server: Server, rt: ServiceRuntime): void {
  (server as unknown as { [kRuntime]: ServiceRuntime })[kRuntime] = rt;
}

/** HOT: the listener handle's onconnection, once per accepted connection. */
function onAccept(this: { owner: Server }, err: number, handle: TcpHandle | undefined): void {
  const rt = (this.owner as unknown as { [kRuntime]: ServiceRuntime })[kRuntime];
  if (err !== 0 || handle === undefined) {
    // An accept error (EMFILE, ENFILE…): libuv keeps listening (and closes the connections it
    // cannot take, rather than leave them waiting); the worker says so in its log.
    ctx.onLocalError?.(err, rt.entry.name, 'accept');
    return;
  }
  const client = handle as Handle;
  const s = openSession(rt);
  s.client = client;
  client[kSession] = s; // TCP_NODELAY: inherited from the listening socket (acceptRaw)
  client.onread = onClientRead;
  client.useUserBuffer((s.cbuf = readBuffer(s.cbuf)));
  client.readStart();
  if (shuttingDown) {
    endSession(s, TERM_SHUTDOWN);
    return;
  }
  if (rt.entry.accept_proxy) {
    // The client's first bytes are a PROXY header naming the real client: admission and the
    // Maglev key wait for it (readProxyHeader), bounded by timeouts.proxy_header.
    s.state = ST_HEADER;
    arm(s, rt.entry.timeouts.proxy_header);
    return;
  }
  admit(s, rt);
}

/** A session for a connection just accepted on `rt` (either path). */
function openSession(rt: ServiceRuntime): Session {
  f64[rt.scBase + SC_ACCEPTED] += 1;
  const s = pool.pop() ?? new Session();
  s.svc = rt;
  s.tAccept = clock = performance.now();
  s.lastActive = clock;
  sessions.add(s);
  return s;
}

/** Reused by getpeername / getsockname (once per connection, when an address is needed). */
const addr: SockAddr = { address: '', family: '', port: 0 };

/** The client's address into `addr`: its handle's peer, or what the relay said at accept. */
function peerOf(s: Session): void {
  if (s.client !== null) {
    addr.address = '';
    addr.port = 0;
    s.client.getpeername(addr);
  } else {
    addr.address = s.peerIp;
    addr.port = s.peerPort;
  }
}

/** Hashes the client's key, then takes a backend or queues. Once per connection (after its PROXY header, if any). */
function admit(s: Session, rt: ServiceRuntime): void {
  const e = rt.entry;
  if (e.hashed || ctx.onClose !== null) {
    const proxied = s.srcAddr !== '';
    let ip = s.srcAddr;
    let port = s.srcPort;
    if (!proxied) {
      peerOf(s);
      ip = addr.address ?? '';
      port = addr.port ?? 0;
    }
    s.clientAddr = e.hash_key === 'source_ip_port' || ctx.onClose !== null ? ip + ':' + port : ip;
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
    endSession(s, TERM_NO_BACKEND);
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
    endSession(s, TERM_QUEUE_FULL);
    return;
  }
  i32[rt.tallyQueuedIdx] += 1;
  f64[rt.scBase + SC_QUEUED] += 1;
  s.state = ST_QUEUED;
  s.tQueued = performance.now();
  rt.queue.push(s);
  // A client the relay accepted is watched while it waits: one that leaves ends its wait
  // (EV_CLIENT_GONE), as a handle's EOF does (onClientEnd).
  if (s.client === null && relayWatch(s) !== 0) {
    endSession(s, TERM_CLIENT_CLOSED); // leaves the queue
    return;
  }
  arm(s, rt.entry.queue.timeout);
  if (!rt.waiting) pumpQueue(rt);
}

function leaveQueue(s: Session): void {
  const rt = s.svc!;
  const at = rt.queue.indexOf(s);
  if (at >= 0) rt.queue.splice(at, 1);
  Atomics.sub(i32, rt.queuedIdx, 1);
  i32[rt.tallyQueuedIdx] -= 1;
  if (s.inRelay) {
    relay!.stop(s.slot, true); // stops watching the client
    s.inRelay = false;
  }
  s.queueMs = performance.now() - s.tQueued;
  f64[rt.scBase + SC_QUEUE_TIME_MS] += s.queueMs;
  s.state = ST_FREE;
  s.timeoutMs = 0;
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
      endSession(s, TERM_NO_BACKEND);
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
    connectFailed(s, 'EUNKNOWNBACKEND');
    return;
  }
  s.tConnect = performance.now();
  arm(s, rt.entry.timeouts.connect);
  const attempt = ++s.attempt;
  const family = families[backend];
  if (family !== 0) {
    startConnect(s, bk.host, bk.port, family);
    return;
  }
  // A host name (IP addresses are recommended: README): resolved on every connect, as Node's
  // net.connect does, IPv4 addresses first (the first one is used).
  const gen = s.gen;
  lookup(bk.host, LOOKUP_OPTIONS, (err, address, fam) => {
    if (s.gen !== gen || s.attempt !== attempt || s.state !== ST_CONNECTING) return;
    if (err) connectFailed(s, (err as NodeJS.ErrnoException).code ?? 'ENOTFOUND');
    else startConnect(s, address, bk.port, fam);
  });
}

const LOOKUP_OPTIONS = { order: 'ipv4first' } as const;

function startConnect(s: Session, ip: string, port: number, family: number): void {
  if (relay !== null) {
    relayConnect(s, ip, port, family);
    return;
  }
  const server = new TCP(TCP_SOCKET) as Handle;
  server[kSession] = s;
  s.server = server;
  s.serverEnded = false;
  const req = new TCPConnectWrap() as ConnectReq;
  req.oncomplete = onConnected as ConnectReq['oncomplete'];
  req.session = s;
  req.gen = s.gen;
  req.attempt = s.attempt;
  const err = family === 6 ? server.connect6(req, ip, port) : server.connect(req, ip, port);
  if (err === 0) return;
  const code = getSystemErrorName(err);
  if (LOCAL_ERRORS.has(code)) localConnectFailure(s, err, code);
  else connectFailed(s, code);
}

/**
 * The backend socket could not be made here (open-files limit, memory, local ports): the backend
 * is not to blame, so no connect failure is counted or reported to passive health, and no other
 * backend is tried (it would fail alike). The client is closed (connect_failed, with the errno in
 * the log's `detail`) and the worker logs the cause.
 */
function localConnectFailure(s: Session, errno: number, code: string): void {
  const server = s.server;
  if (server !== null) {
    server[kSession] = null;
    server.close();
    s.server = null;
  }
  s.state = ST_FREE;
  s.detail = `${code}: no socket for the backend connection (local resources)`;
  ctx.onLocalError?.(errno, s.svc!.entry.name, 'connect');
  releaseSession(s);
  endSession(s, TERM_CONNECT_FAILED);
}

/** Once per connect attempt: the backend connection is up (status 0) or failed. */
function onConnected(this: ConnectReq, status: number): void {
  const s = this.session;
  this.session = null;
  if (s === null || s.gen !== this.gen || s.attempt !== this.attempt || s.state !== ST_CONNECTING) return;
  if (status < 0) {
    connectFailed(s, getSystemErrorName(status));
    return;
  }
  const rt = s.svc!;
  const server = s.server!;
  markConnected(s);
  server.setNoDelay(true);
  server.onread = onBackendRead;
  server.useUserBuffer((s.sbuf = readBuffer(s.sbuf)));
  server.readStart();
  if (rt.entry.send_proxy !== 'none') {
    const h = proxyHeaderFor(s, rt.entry.send_proxy);
    if (send(s, server, h, true) < 0) return;
  }
  const pending = s.pending;
  if (pending !== null) {
    s.pending = null;
    s.pendingBytes = 0;
    const all = pending.length === 1 ? pending[0] : Buffer.concat(pending);
    if (send(s, server, all, true) < 0) return;
  }
  if (s.c2sWrites > 0) s.client!.readStop();
  else resumeClient(s);
  if (s.clientEnded) shutdownSide(s, true);
}

/** Once per connection, when its backend connection is up (either path): counters, the idle timeout. */
function markConnected(s: Session): void {
  const rt = s.svc!;
  s.state = ST_CONNECTED;
  s.connectMs = performance.now() - s.tConnect;
  f64[rt.scBase + SC_CONNECT_TIME_MS] += s.connectMs;
  f64[s.bcBase + BC_CONNECTIONS] += 1;
  f64[s.bcBase + BC_CONNECT_TIME_MS] += s.connectMs;
  arm(s, rt.entry.timeouts.idle);
}

// ── relay ────────────────────────────────────────────────────────────────────

/** The session's relay slot, taken on its first relay request and kept until it ends. */
function slotOf(s: Session): number {
  if (s.slot >= 0) return s.slot;
  const slot = freeSlots.pop() ?? slotSessions.length;
  if ((slot + 1) * STAT_FIELDS > relayStats.length) {
    const grown = new Float64Array(relayStats.length * 2);
    grown.set(relayStats);
    relayStats = grown;
    relay!.setStats(grown);
  }
  slotSessions[slot] = s;
  s.slot = slot;
  // Counted from here (connect zeroes them again, and relayConnect moves the base).
  relayStats.fill(0, slot * STAT_FIELDS, (slot + 1) * STAT_FIELDS);
  s.relayBaseIn = s.bytesIn;
  s.relayBaseOut = s.bytesOut;
  return slot;
}

/** The client socket the relay works on: its own, or the one a handle lends it. */
function clientFd(s: Session): number {
  return s.client !== null ? s.client.fd : s.fd;
}

/** Queued: the relay watches the client for leaving. 0, or a negative errno. */
function relayWatch(s: Session): number {
  const err = relay!.watch(slotOf(s), s.fd);
  if (err === 0) s.inRelay = true;
  return err;
}

/**
 * Once per connect attempt on the relay path: the relay connects to `ip`, sends the PROXY header
 * and any bytes read before (a retry sends them again), then moves the bytes both ways.
 */
function relayConnect(s: Session, ip: string, port: number, family: number): void {
  const rt = s.svc!;
  let prefix: Uint8Array | null = null;
  const pending = s.pending;
  if (rt.entry.send_proxy !== 'none') {
    const h = proxyHeaderFor(s, rt.entry.send_proxy);
    prefix = pending === null ? h : Buffer.concat([h, ...pending]);
  } else if (pending !== null) {
    prefix = pending.length === 1 ? pending[0] : Buffer.concat(pending);
  }
  // A handle read so far (its PROXY header) stops: the relay reads from here on.
  if (s.client !== null) s.client.readStop();
  const err = relay!.connect(slotOf(s), clientFd(s), s.client === null, ip, port, family, prefix, s.clientEnded);
  if (err === 0) {
    s.inRelay = true;
    s.relayBaseIn = s.bytesIn;
    s.relayBaseOut = s.bytesOut;
    s.seenActivity = 0;
    return;
  }
  const code = getSystemErrorName(err);
  if (LOCAL_ERRORS.has(code)) localConnectFailure(s, err, code);
  else connectFailed(s, code);
}

/** The relay's counters of a session into its own (bytes; the sweep reads activity). */
function syncRelayed(s: Session): void {
  const base = s.slot * STAT_FIELDS;
  s.bytesIn = s.relayBaseIn + relayStats[base + STAT_BYTES_IN];
  s.bytesOut = s.relayBaseOut + relayStats[base + STAT_BYTES_OUT];
}

/**
 * Called by the relay once per event-loop wake in which something happened: `relayEvents` holds
 * n events (relay.ts has the layout). Runs each as the JavaScript path's callback would.
 */
function onRelayEvents(n: number): void {
  const ev = relayEvents;
  for (let i = 0, at = 0; i < n; i++, at += EV_FIELDS) {
    const type = ev[at];
    if (type === EV_ACCEPT) {
      onRelayAccept(ev[at + 1], ev[at + 2], at);
      continue;
    }
    if (type === EV_ACCEPT_ERROR) {
      onRelayAcceptError(ev[at + 1], ev[at + 2]);
      continue;
    }
    const s = slotSessions[ev[at + 1]];
    if (s === null || s === undefined || !s.inRelay) continue;
    s.inRelay = false;
    if (type === EV_CONNECTED) {
      s.inRelay = true;
      if (s.state !== ST_CONNECTING) continue;
      s.pending = null; // sent: kept until now for a retry
      s.pendingBytes = 0;
      markConnected(s);
    } else if (type === EV_CONNECT_FAILED) {
      if (s.state === ST_CONNECTING) connectFailed(s, getSystemErrorName(ev[at + 2]));
    } else if (type === EV_ENDED) {
      if (s.client === null) s.fd = -1; // closed by the relay
      endSession(s, ev[at + 2] === END_SERVER ? TERM_SERVER_CLOSED : TERM_CLIENT_CLOSED);
    } else if (type === EV_CLIENT_GONE) {
      endSession(s, TERM_CLIENT_CLOSED); // abandoned its wait (as onClientEnd)
    }
  }
}

/** HOT: once per connection the relay accepted (`at`: its event, with the client's address). */
function onRelayAccept(lid: number, fd: number, at: number): void {
  const rt = relayListeners[lid];
  if (rt === undefined) {
    relay!.closeFd(fd);
    return;
  }
  const s = openSession(rt);
  s.fd = fd;
  const e = rt.entry;
  if (e.hashed || ctx.onClose !== null || e.send_proxy !== 'none') {
    const familyPort = relayEvents[at + 3];
    s.peerIp = formatAddress(familyPort >>> 16, relayEvents, at + 4);
    s.peerPort = familyPort & 0xffff;
  }
  if (shuttingDown) {
    endSession(s, TERM_SHUTDOWN);
    return;
  }
  admit(s, rt);
}

/** Accepting failed for lack of files or memory: the relay paused the listener; try again shortly. */
function onRelayAcceptError(lid: number, errno: number): void {
  const rt = relayListeners[lid];
  if (rt === undefined) return;
  ctx.onLocalError?.(errno, rt.entry.name, 'accept');
  setTimeout(() => {
    if (relayListeners[lid] === rt) relay!.resume(lid);
  }, ACCEPT_RETRY_MS).unref();
}

/** After an accept failed for lack of files (EMFILE…), the listener waits this long (HAProxy: 100 ms too). */
const ACCEPT_RETRY_MS = 100;

/** Opens a listener whose connections the relay accepts: its id, or a negative errno. */
export function listenRelay(rt: ServiceRuntime, ip: string, port: number, family: number, reusePort: boolean, backlog: number): number {
  const lid = relay!.listen(ip, port, family, reusePort, backlog);
  if (lid >= 0) relayListeners[lid] = rt;
  return lid;
}

export function closeRelayListener(lid: number): void {
  relay!.closeListener(lid);
  relayListeners[lid] = undefined;
}

export function updateRelayRuntime(lid: number, rt: ServiceRuntime): void {
  relayListeners[lid] = rt;
}

/** A connect attempt failed (error or timeout): count it, tell the control plane, try again. */
function connectFailed(s: Session, code: string): void {
  const rt = s.svc!;
  const failed = s.backend;
  if (s.inRelay) {
    relay!.stop(s.slot, true); // a timeout: the relay gives up this attempt, the client stays
    s.inRelay = false;
  }
  if (s.server !== null) {
    // Its connect callback (ECANCELED, or the late success) is ignored: the attempt has moved on.
    s.server[kSession] = null;
    s.server.close();
    s.server = null;
  }
  s.state = ST_FREE;
  s.timeoutMs = 0;
  f64[s.bcBase + BC_CONNECT_FAILURES] += 1;
  const bk = s.bk;
  ctx.post({ type: 'connect-failed', service: rt.entry.name, backend: failed, address: bk?.address ?? '', error: code });
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
    endSession(s, TERM_CONNECT_FAILED);
    return;
  }
  releaseSession(s);
  endSession(s, shuttingDown ? TERM_SHUTDOWN : TERM_CONNECT_FAILED);
}

// ── splice ───────────────────────────────────────────────────────────────────

/** A WriteWrap for the next write; replaced only when libuv keeps one (a write not taken at once). */
let spareWrite = newWriteReq();

function newWriteReq(): SideReq {
  const req = new WriteWrap() as SideReq;
  req.oncomplete = onWritten as SideReq['oncomplete'];
  req.session = null;
  req.gen = 0;
  req.toServer = false;
  req.buffer = null;
  return req;
}

/**
 * HOT: once per chunk, each way. Writes `data` to `to`: 0 when the kernel took it all (the buffer
 * is free again), 1 when libuv queued the rest (the buffer stays referenced until `onWritten`; the
 * caller stops reading from the other side), or a negative errno (the session is ended).
 */
function send(s: Session, to: Handle, data: Uint8Array, toServer: boolean): number {
  const req = spareWrite;
  const err = to.writeBuffer(req, data);
  if (err !== 0) {
    endSession(s, toServer ? TERM_SERVER_CLOSED : TERM_CLIENT_CLOSED);
    return err;
  }
  if (streamState[K_WRITE_ASYNC] === 0) return 0;
  // Queued: this request now belongs to libuv until it calls back.
  spareWrite = newWriteReq();
  req.session = s;
  req.gen = s.gen;
  req.toServer = toServer;
  req.buffer = data;
  if (toServer) s.c2sWrites++;
  else s.s2cWrites++;
  return 1;
}

/** Once per write that libuv queued (backpressure): the kernel took the rest, or the write failed. */
function onWritten(this: SideReq, status: number): void {
  const s = this.session;
  this.session = null;
  this.buffer = null;
  if (s === null || s.gen !== this.gen) return;
  if (status < 0) {
    endSession(s, this.toServer ? TERM_SERVER_CLOSED : TERM_CLIENT_CLOSED);
    return;
  }
  s.lastActive = clock;
  const left = this.toServer ? --s.c2sWrites : --s.s2cWrites;
  if (left > 0) return;
  if (doneBothWays(s)) {
    endSession(s, TERM_CLIENT_CLOSED); // the last queued write was what both sides waited for
  } else if (this.toServer) {
    resumeClient(s);
  } else if (!s.serverEnded && s.server !== null) {
    s.server.readStart();
  }
}

/** Reading the client again: after its queued writes completed, or once connected (PENDING_LIMIT may have stopped it). */
function resumeClient(s: Session): void {
  if (!s.clientEnded) s.client!.readStart();
}

/**
 * HOT: once per chunk, each way (from onClientRead with toServer, from onBackendRead without).
 * Sends the `n` bytes just read into the reading side's buffer (`cbuf` / `sbuf`) to `to`; stops
 * `from` reading when libuv kept part of them; returns the buffer to read into next when a full
 * read grows it (×4, up to READ_BUFFER_SIZE), else undefined.
 */
function forward(s: Session, from: Handle, to: Handle, n: number, toServer: boolean): Uint8Array | undefined {
  s.lastActive = clock;
  const buf = toServer ? s.cbuf : s.sbuf;
  // The view of the first n bytes is kept while reads keep that size (request/response traffic
  // repeats it): no typed array is made per chunk.
  let view = toServer ? s.cview : s.sview;
  if (view === null || view.length !== n) {
    view = n === buf.length ? buf : buf.subarray(0, n);
    if (toServer) s.cview = view;
    else s.sview = view;
  }
  const r = send(s, to, view, toServer);
  if (r < 0) return undefined;
  if (r > 0) from.readStop(); // until onWritten
  if (n < buf.length || n >= READ_BUFFER_SIZE) return undefined;
  const next = Buffer.allocUnsafeSlow(n * 4);
  if (toServer) {
    s.cbuf = next;
    s.cview = null;
  } else {
    s.sbuf = next;
    s.sview = null;
  }
  return next;
}

/**
 * HOT: once per read on a client handle, into the session's `cbuf`. Returns the buffer to read
 * into next when it changes (a full read grows it), else undefined.
 */
function onClientRead(this: Handle): Uint8Array | undefined {
  const s = this[kSession];
  if (s === null) return undefined;
  const n = streamState[K_NREAD];
  if (n > 0) {
    s.bytesIn += n;
    if (s.state === ST_CONNECTED) return forward(s, this, s.server!, n, true);
    // Still reading its PROXY header, queued or connecting: keep a copy (the buffer is reused).
    const copy = Buffer.allocUnsafe(n);
    s.cbuf.copy(copy, 0, 0, n);
    (s.pending ??= []).push(copy);
    s.pendingBytes += n;
    if (s.pendingBytes >= PENDING_LIMIT) this.readStop(); // until connected (onConnected)
    if (s.state === ST_HEADER) readProxyHeader(s);
    return undefined;
  }
  if (n === UV_EOF) onClientEnd(s);
  else if (n < 0) endSession(s, TERM_CLIENT_CLOSED); // reset
  return undefined;
}

/** HOT: once per read on a backend handle, into the session's `sbuf`. */
function onBackendRead(this: Handle): Uint8Array | undefined {
  const s = this[kSession];
  if (s === null || s.server !== this) return undefined;
  const n = streamState[K_NREAD];
  if (n > 0) {
    s.bytesOut += n;
    return forward(s, this, s.client!, n, false);
  }
  if (n === UV_EOF) onServerEnd(s);
  else if (n < 0) endSession(s, TERM_SERVER_CLOSED); // reset
  return undefined;
}

/**
 * accept_proxy: once per client chunk until its PROXY header is whole (almost always the first
 * chunk). A bad header closes the client (reason bad_proxy_header, the parser's words in the
 * log's `detail`); a good one names the client for the Maglev key, the log and send_proxy, and
 * the bytes after it wait for the backend like any early client bytes.
 */
function readProxyHeader(s: Session): void {
  const pending = s.pending!;
  const buf = pending.length === 1 ? pending[0] : Buffer.concat(pending);
  const r = parseProxyHeader(buf);
  if (r.status === 'incomplete') {
    s.pending = [buf];
    return;
  }
  if (r.status === 'error') {
    s.detail = r.reason;
    endSession(s, TERM_BAD_PROXY_HEADER);
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
  s.timeoutMs = 0;
  admit(s, s.svc!);
}

/** The PROXY header for the backend: the client as its own header named it, else the socket's addresses. Once per backend connection. */
function proxyHeaderFor(s: Session, version: 'v1' | 'v2'): Buffer {
  let src = s.srcAddr;
  let srcPort = s.srcPort;
  let dst = s.dstAddr;
  let dstPort = s.dstPort;
  if (src === '') {
    peerOf(s);
    src = addr.address ?? '';
    srcPort = addr.port ?? 0;
    if (s.client !== null) {
      s.client.getsockname(addr);
      dst = addr.address ?? '';
      dstPort = addr.port ?? 0;
    } else if (relay!.localAddress(s.fd, localAddr) === 0) {
      dst = formatAddress(localAddr[0] >>> 16, localAddr, 1);
      dstPort = localAddr[0] & 0xffff;
    }
  }
  return version === 'v2' ? encodeProxyV2(src, srcPort, dst, dstPort) : encodeProxyV1(src, srcPort, dst, dstPort);
}

// ── half-close ───────────────────────────────────────────────────────────────

/** The client sent EOF. */
function onClientEnd(s: Session): void {
  s.clientEnded = true;
  if (s.reason < 0 && !s.serverEnded) s.reason = TERM_CLIENT_CLOSED;
  if (s.state === ST_CONNECTED) {
    if (doneBothWays(s)) endSession(s, TERM_CLIENT_CLOSED);
    else shutdownSide(s, true);
  } else if (s.state === ST_HEADER) endSession(s, TERM_CLIENT_CLOSED); // gone before it said who it was
  else if (s.state === ST_QUEUED) endSession(s, TERM_CLIENT_CLOSED); // abandoned its wait (HAProxy's abortonclose)
  // Connecting: the backend's write side is shut once it is connected (onConnected).
}

/** The backend sent EOF. */
function onServerEnd(s: Session): void {
  s.serverEnded = true;
  if (s.reason < 0 && !s.clientEnded) s.reason = TERM_SERVER_CLOSED;
  if (doneBothWays(s)) endSession(s, TERM_SERVER_CLOSED);
  else shutdownSide(s, false);
}

/**
 * Both sides have sent EOF and no write is queued: every byte is with the kernel, and closing the
 * two handles sends the FINs still owed (the reason was set by the first EOF).
 */
function doneBothWays(s: Session): boolean {
  return s.clientEnded && s.serverEnded && s.c2sWrites === 0 && s.s2cWrites === 0;
}

/**
 * Shuts down the write side of the backend (toServer) or the client once its queued writes are
 * out. Nobody waits for it to complete (the request has no oncomplete, so Node makes no call
 * back): the session ends when both sides have sent EOF and no write is queued (onClientEnd,
 * onServerEnd, onWritten), and closing a handle sends a FIN of its own if the shutdown has not.
 */
function shutdownSide(s: Session, toServer: boolean): void {
  const err = (toServer ? s.server! : s.client!).shutdown(new ShutdownWrap());
  if (err !== 0) endSession(s, toServer ? TERM_SERVER_CLOSED : TERM_CLIENT_CLOSED);
}

// ── timeouts ─────────────────────────────────────────────────────────────────

/** Gives the session's current state a timeout of `ms`, from now. */
function arm(s: Session, ms: number): void {
  s.timeoutMs = ms;
  s.lastActive = performance.now();
}

/**
 * Every sweepMs (1/8 of the smallest timeout configured, 10 ms–1 s): ends the sessions whose
 * state has lasted longer than its timeout. Queue, connect and PROXY-header timeouts run from the
 * moment they were armed (exact). The idle timeout runs from the last chunk, stamped with `clock`
 * (the last sweep's time, so up to one sweep before the chunk really came): one sweep of slack
 * makes it never fire early, and at most two sweeps late (a 30 min idle timeout: ≤ 2 s).
 */
function sweep(): void {
  const now = (clock = performance.now());
  const slack = sweepMs;
  const before = lastSweep;
  lastSweep = now;
  for (const s of sessions) {
    if (s.inRelay && s.state === ST_CONNECTED) {
      // Relayed: moved since the last sweep, so no earlier than that sweep (the slack covers it).
      const activity = relayStats[s.slot * STAT_FIELDS + STAT_ACTIVITY];
      if (activity !== s.seenActivity) {
        s.seenActivity = activity;
        s.lastActive = before;
      }
    }
    if (s.timeoutMs > 0 && now - s.lastActive >= s.timeoutMs + (s.state === ST_CONNECTED ? slack : 0)) onTimeout(s);
  }
}

function onTimeout(s: Session): void {
  s.timeoutMs = 0;
  if (s.state === ST_QUEUED) {
    f64[s.svc!.scBase + SC_QUEUE_TIMEOUTS] += 1;
    endSession(s, TERM_QUEUE_TIMEOUT); // leaves the queue
  } else if (s.state === ST_CONNECTING) {
    connectFailed(s, 'ETIMEDOUT');
  } else if (s.state === ST_CONNECTED) {
    endSession(s, TERM_IDLE_TIMEOUT);
  } else if (s.state === ST_HEADER) {
    s.detail = `no complete PROXY header within ${s.svc!.entry.timeouts.proxy_header}ms`;
    endSession(s, TERM_BAD_PROXY_HEADER);
  }
}

// ── close ────────────────────────────────────────────────────────────────────

/**
 * Closes the session's handles (both at once) and finalizes it. `reason` is kept unless one was
 * set already — or `override` (backend down, shutdown: the proxy's own decision names the end,
 * whatever the peers did before). The caller must not touch `s` afterwards: it is back in the pool.
 */
function endSession(s: Session, reason: number, override = false): void {
  if (s.svc === null) return; // ended already (the object is back in the pool)
  if (override || s.reason < 0) s.reason = reason;
  if (s.state === ST_QUEUED) leaveQueue(s);
  if (s.slot >= 0) {
    if (s.inRelay) {
      relay!.stop(s.slot, false); // closes the sockets it has (a handle's client: below)
      s.inRelay = false;
      if (s.client === null) s.fd = -1;
    }
    syncRelayed(s);
    slotSessions[s.slot] = null;
    freeSlots.push(s.slot);
    s.slot = -1;
  }
  const client = s.client;
  if (client !== null) {
    client[kSession] = null;
    client.close();
  } else if (s.fd >= 0) {
    relay!.closeFd(s.fd);
    s.fd = -1;
  }
  const server = s.server;
  if (server !== null) {
    server[kSession] = null;
    server.close();
  }
  finalize(s);
}

/** Gives the engine back what the session holds; safe to call more than once. */
function releaseSession(s: Session): void {
  if (s.holdsSlot) {
    s.holdsSlot = false;
    ctx.engine.release(s.svc!.index, s.backend);
  }
  s.backend = -1;
}

/** Adds the bytes moved since the last look to the counters. Per close, and once a second. */
function accountBytes(s: Session): void {
  const rt = s.svc!;
  if (s.slot >= 0) syncRelayed(s);
  const dIn = s.bytesIn - s.countedIn;
  const dOut = s.bytesOut - s.countedOut;
  if (dIn === 0 && dOut === 0) return;
  s.countedIn = s.bytesIn;
  s.countedOut = s.bytesOut;
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

/** Exactly once per session, from endSession: counters, release, log, back to the pool. */
function finalize(s: Session): void {
  const rt = s.svc!;
  accountBytes(s);
  releaseSession(s);
  const reason = s.reason < 0 ? TERM_CLIENT_CLOSED : s.reason;
  f64[rt.scBase + SC_TERM_BASE + reason] += 1;
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
      endSession(s, TERM_BACKEND_DOWN, true);
      killed++;
    }
  }
  return killed;
}

/** Stop path, step 1: no new sessions; waiting ones are closed (reason shutdown). */
export function beginShutdown(): void {
  shuttingDown = true;
  for (const s of sessions) if (s.state === ST_QUEUED || s.state === ST_HEADER) endSession(s, TERM_SHUTDOWN, true);
}

/** Stop path, step 2 (after the grace period): everything still open is closed. */
export function killAll(reason = TERM_SHUTDOWN): void {
  for (const s of sessions) endSession(s, reason, true);
}

/** Closes the queued sessions of a service that was removed. */
export function dropQueue(rt: ServiceRuntime): void {
  for (const s of [...rt.queue]) endSession(s, TERM_NO_BACKEND);
}
