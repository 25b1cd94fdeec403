/**
 * The session core of one worker: every decision about a connection, from accept to close,
 * whatever transport carries it (transport.ts says how one plugs in).
 *
 *   accept ─▶ acquire ─┬─ backend ──▶ connect ─┬─ ok ──▶ data both ways ─▶ close ─▶ release
 *                      ├─ full ────▶ queue ──┘ └─ fail ─▶ reacquire (≤ retries) ─┘
 *                      └─ none ────▶ close (no_backend), or with queue.when_down: queue until
 *                                    the eligible backends change (a rebuild), bounded by it
 *
 * Admission and pick (WebAssembly, engine.ts), the wait queue and its pump, retries with the
 * session's own tried list, the timeouts sweep, PROXY headers (the client's, read before
 * admission; the backend's, made here), counters, the connection log line and finalize. The
 * per-worker state is one `DataPath` object, made by worker.ts.
 *
 * Timeouts (connect, idle, queue, PROXY header) are one deadline per session, checked by one
 * sweep per worker (`sweep`) instead of a timer per socket re-armed on every chunk: a transport
 * stamps `lastActive` with `clock` per chunk, or says at the sweep that the session `moved`.
 */
import { isIP } from 'node:net';
import { lookup } from 'node:dns';
import { performance } from 'node:perf_hooks';
import { getSystemErrorName } from 'node:util';
import { triedList, type Engine } from '../balancer/engine.ts';
import { hashKey } from '../balancer/hash.ts';
import { clientAddress } from '../config/address.ts';
import { LOCAL_ERRORS } from '../local-errors.ts';
import {
  BC_BYTES_IN, BC_BYTES_OUT, BC_CONNECT_FAILURES, BC_CONNECT_TIME_MS, BC_CONNECTIONS, BC_KILLED, BC_RETRIES,
  backendCounterIndex, H_GENERATION, HEADER_OFFSET, MAX_TRIED, PICK_BACKENDS_FULL, PICK_BAD_SERVICE, PICK_NO_BACKEND,
  PICK_SERVICE_FULL, SC_ACCEPTED, SC_BYTES_IN, SC_BYTES_OUT, SC_CONNECT_TIME_MS, SC_QUEUE_TIME_MS, SC_QUEUE_TIMEOUTS,
  SC_QUEUED, SC_QUEUED_NO_BACKEND, SC_RETRIES, SC_TERM_BASE, TERM_BACKEND_DOWN,
  TERM_BAD_PROXY_HEADER, TERM_CLIENT_CLOSED, TERM_CONNECT_FAILED, TERM_IDLE_TIMEOUT, TERM_NO_BACKEND, TERM_QUEUE_FULL,
  TERM_QUEUE_TIMEOUT, TERM_REASONS, TERM_SHUTDOWN,
} from '../shm/layout.ts';
import type { SockAddr } from './handles.ts';
import type { BackendEntry, ServiceEntry, WorkerToMain } from './messages.ts';
import { encodeProxyV1, encodeProxyV2, parseProxyHeader } from './proxy-protocol.ts';
import { CONNECT_DONE } from './transport.ts';
import {
  ServiceRuntime, Session, ST_CONNECTED, ST_CONNECTING, ST_FREE, ST_HEADER, ST_QUEUED, type CloseRecord,
} from './session.ts';

/** Client bytes held while a session waits for its backend; the transport pauses the client beyond this. */
const PENDING_LIMIT = 64 * 1024;
/**
 * Queued connections look again at least this often. Releases and rebuilds notify them (the
 * engine's signalRelease); this is the safety net, and costs one load for a connection waiting
 * for a backend while nothing was rebuilt.
 */
const QUEUE_POLL_MS = 200;
/** i32 index of the header's generation, which every rebuild bumps. */
const GEN_IDX = (HEADER_OFFSET + H_GENERATION) >> 2;
/** The timeout sweep runs every 1/8 of the smallest configured timeout, within these bounds. */
const SWEEP_MIN_MS = 10;
const SWEEP_MAX_MS = 1000;
const LOOKUP_OPTIONS = { order: 'ipv4first' } as const;

/** What the data path needs from its worker. */
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
  /**
   * The descriptor reserve (descriptors.ts): told of each socket a session opens and closes, it
   * stops the worker's listeners at the mark. Null: not counted.
   */
  descriptors: { take(n: number): void; give(n: number): void } | null;
}

const round1 = (ms: number): number => Math.round(ms * 10) / 10;

export class DataPath {
  readonly ctx: DataPathContext;
  /** Every open session (from accept until it is finalized). */
  readonly sessions = new Set<Session>();
  /** performance.now() as of the last sweep or accept: activity stamps use it (no clock read per chunk). */
  clock = 0;
  private shuttingDown = false;
  private readonly f64: Float64Array;
  private readonly i32: Int32Array;
  /** This worker's tried list in the shared memory, written before each reacquire. */
  private readonly triedScratch: Uint16Array;
  /** Backend id → where to connect, and its address family (4, 6, or 0: a name to resolve). */
  private backends: (BackendEntry | undefined)[] = [];
  private families: number[] = [];
  /**
   * Bumped by each new table. A rebuild that adds a backend wakes the queue before the table
   * naming it arrives (the control plane sends it next): a session that picked a backend not yet
   * in the table waits for this to move (the queue's poll sees it).
   */
  private tableGen = 0;
  private sweepMs = 0;
  private sweepTimer: ReturnType<typeof setInterval> | null = null;
  /** performance.now() at the previous sweep: a session that moved since is stamped with it. */
  private lastSweep = 0;
  /** Reused by peer / local (once per connection, when an address is needed). */
  private readonly addr: SockAddr = { address: '', family: '', port: 0 };
  private readonly onSweep = (): void => this.sweep();

  constructor(ctx: DataPathContext) {
    this.ctx = ctx;
    this.f64 = new Float64Array(ctx.memory.buffer);
    this.i32 = new Int32Array(ctx.memory.buffer);
    this.triedScratch = triedList(ctx.memory, ctx.workerId);
    this.clock = this.lastSweep = performance.now();
    setInterval(() => this.accountAllBytes(), 1000).unref();
  }

  /** A runtime for a service of this worker (worker.ts: one per service, a new one when its engine slot moves). */
  runtime(entry: ServiceEntry): ServiceRuntime {
    return new ServiceRuntime(entry, this.ctx.workerId, this);
  }

  /** A new service table: where each backend is, and how often the sweep runs. */
  setBackends(list: ServiceEntry[]): void {
    const next: (BackendEntry | undefined)[] = [];
    const fam: number[] = [];
    let shortest = Infinity;
    for (const s of list) {
      for (const b of s.backends) {
        next[b.index] = b;
        fam[b.index] = isIP(b.host);
      }
      shortest = Math.min(shortest, s.timeouts.connect, s.timeouts.idle, s.queue.timeout, s.accept_proxy ? s.timeouts.proxy_header : Infinity,
        s.queue.when_down > 0 ? s.queue.when_down : Infinity);
    }
    this.backends = next;
    this.families = fam;
    this.tableGen++;
    const every = Math.max(SWEEP_MIN_MS, Math.min(SWEEP_MAX_MS, Math.floor(shortest / 8)));
    if (every !== this.sweepMs) {
      this.sweepMs = every;
      if (this.sweepTimer !== null) clearInterval(this.sweepTimer);
      this.sweepTimer = setInterval(this.onSweep, every);
      this.sweepTimer.unref();
    }
  }

  // ── accept ─────────────────────────────────────────────────────────────────

  /** HOT: once per accepted connection, from its transport (the session carries the transport). */
  accepted(s: Session, rt: ServiceRuntime): void {
    this.f64[rt.scBase + SC_ACCEPTED] += 1;
    s.svc = rt;
    s.tAccept = this.clock = performance.now();
    s.lastActive = this.clock;
    this.sessions.add(s);
    this.ctx.descriptors?.take(1); // the client's socket
    // While draining (a stop, an upgrade, a retiring worker) a connection accepted late — one
    // another worker's relay handed over just before this listener closed — is served like the
    // open ones, up to the grace: it is the client's connection already, and closing it would reset it.
    if (rt.entry.accept_proxy) {
      // The client's first bytes are a PROXY header naming the real client: admission and the
      // Maglev key wait for it (readProxyHeader), bounded by timeouts.proxy_header.
      s.state = ST_HEADER;
      this.arm(s, rt.entry.timeouts.proxy_header);
      return;
    }
    this.admit(s, rt);
  }

  /**
   * Client bytes read before the backend is connected (its PROXY header, early payload): kept as
   * a copy (the transport's buffer is reused). True when the transport should stop reading the
   * client (PENDING_LIMIT) until it is connected. Once per such chunk (usually none or one).
   */
  early(s: Session, data: Buffer, n: number): boolean {
    const copy = Buffer.allocUnsafe(n);
    data.copy(copy, 0, 0, n);
    (s.pending ??= []).push(copy);
    s.pendingBytes += n;
    const full = s.pendingBytes >= PENDING_LIMIT;
    if (s.state === ST_HEADER) this.readProxyHeader(s);
    return full;
  }

  /** The client sent EOF or reset before its backend was connected. */
  clientLeft(s: Session): void {
    s.clientEnded = true;
    if (s.reason < 0) s.reason = TERM_CLIENT_CLOSED;
    if (s.state === ST_HEADER) this.end(s, TERM_CLIENT_CLOSED); // gone before it said who it was
    else if (s.state === ST_QUEUED) this.end(s, TERM_CLIENT_CLOSED); // abandoned its wait (HAProxy's abortonclose)
    // Connecting: the transport passes the EOF on once connected.
  }

  /** Hashes the client's key, then takes a backend or queues. Once per connection (after its PROXY header, if any). */
  private admit(s: Session, rt: ServiceRuntime): void {
    const e = rt.entry;
    const ctx = this.ctx;
    if (e.hashed || ctx.onClose !== null) {
      let ip = s.srcAddr;
      let port = s.srcPort;
      if (ip === '') {
        this.peerOf(s);
        ip = this.addr.address ?? '';
        port = this.addr.port ?? 0;
      }
      ip = clientAddress(ip); // a dual-stack listener's or a header's ::ffff:a.b.c.d is a.b.c.d
      s.clientAddr = e.hash_key === 'source_ip_port' || ctx.onClose !== null ? ip + ':' + port : ip;
      if (e.hashed) s.hash = hashKey(e.hash_key === 'source_ip_port' ? s.clientAddr : ip) >>> 0;
    }
    // FIFO: a newcomer never overtakes connections already waiting in this worker; it waits for
    // what the first one waits for (a slot, or a backend).
    if (rt.queue.length > 0) {
      // Never picked (pickTable 0, the table's generation is ≥ 1): it picks when its turn comes.
      s.awaitsChange = rt.queue[0].awaitsChange;
      this.enqueue(s, rt, s.awaitsChange);
      return;
    }
    // Before the pick: a rebuild after this read is what a wait for a backend waits for.
    if (e.queue.when_down > 0) {
      s.pickGen = Atomics.load(this.i32, GEN_IDX);
      s.pickTable = this.tableGen;
    }
    const r = ctx.engine.acquire(rt.index, s.hash);
    if (r >= 0) {
      s.holdsSlot = true;
      this.connectTo(s, r);
    } else if (r === PICK_NO_BACKEND) {
      if (!this.waitForBackend(s, rt, true)) this.end(s, TERM_NO_BACKEND);
    } else if (r === PICK_BAD_SERVICE) {
      this.end(s, TERM_NO_BACKEND);
    } else {
      this.enqueue(s, rt, false);
    }
  }

  /** The client's address into `addr`, as its transport sees it. */
  private peerOf(s: Session): void {
    this.addr.address = '';
    this.addr.port = 0;
    s.t.peer(s, this.addr);
  }

  // ── queue ──────────────────────────────────────────────────────────────────

  /**
   * Once per connection that finds the service or its backends full (`down` false: it waits up to
   * queue.timeout), or, with queue.when_down, no backend (`down`: up to when_down). A connection
   * whose connects all failed may come back once more (waitForBackend).
   */
  private enqueue(s: Session, rt: ServiceRuntime, down: boolean): void {
    const i32 = this.i32;
    // The bound is global (all workers): S_QUEUED counts every waiting connection.
    if (Atomics.add(i32, rt.queuedIdx, 1) >= rt.entry.queue.max) {
      Atomics.sub(i32, rt.queuedIdx, 1);
      // Queue full (queue.max reached across all workers): closed at once.
      this.end(s, TERM_QUEUE_FULL);
      return;
    }
    i32[rt.tallyQueuedIdx] += 1;
    if (s.tQueued === 0) this.f64[rt.scBase + SC_QUEUED] += 1; // once per connection, however often it waits
    s.state = ST_QUEUED;
    s.tQueued = performance.now();
    rt.queue.push(s);
    // The client is watched while it waits: one that leaves ends its wait (clientLeft).
    if (s.t.watch(s) !== 0) {
      this.end(s, TERM_CLIENT_CLOSED); // leaves the queue
      return;
    }
    if (down) this.armDown(s, rt);
    else this.arm(s, rt.entry.queue.timeout);
    if (!rt.waiting) this.pumpQueue(rt);
  }

  /**
   * queue.when_down: a connection that has no backend to go to — none eligible at its pick, or
   * every one it tried failed to connect — waits in the queue until the eligible backends change
   * (a rebuild: health, the admin API, a reload), instead of being closed. False when when_down is
   * 0 (or the worker is stopping): the caller closes it as before. Rare: once per such pick.
   */
  private waitForBackend(s: Session, rt: ServiceRuntime, gated: boolean): boolean {
    if (rt.entry.queue.when_down === 0 || this.shuttingDown) return false;
    s.awaitsChange = gated;
    this.enqueue(s, rt, true);
    return true;
  }

  /** Bounds a wait for a backend: when_down from the moment the connection first waited for one. */
  private armDown(s: Session, rt: ServiceRuntime): void {
    if (s.tDown === 0) {
      s.tDown = performance.now();
      this.f64[rt.scBase + SC_QUEUED_NO_BACKEND] += 1;
    }
    s.timeoutMs = rt.entry.queue.when_down;
    s.lastActive = s.tDown;
  }

  private leaveQueue(s: Session): void {
    const rt = s.svc!;
    const at = rt.queue.indexOf(s);
    if (at >= 0) rt.queue.splice(at, 1);
    Atomics.sub(this.i32, rt.queuedIdx, 1);
    this.i32[rt.tallyQueuedIdx] -= 1;
    s.t.unwatch(s);
    const waited = performance.now() - s.tQueued;
    s.queueMs += waited;
    this.f64[rt.scBase + SC_QUEUE_TIME_MS] += waited;
    s.state = ST_FREE;
    s.timeoutMs = 0;
  }

  /**
   * Gives queued connections the slots released, and the backends come up, since the last look.
   * Called when a connection is queued, and on every wake of the service's S_RELEASE_SEQ (a
   * release or a rebuild in any thread) or poll.
   */
  pumpQueue(rt: ServiceRuntime): void {
    const q = rt.queue;
    const i32 = this.i32;
    // This loop owns the queue until it waits or empties it: a session it sends back to the queue
    // (its connect failed at once, its backend not yet in the table) is taken up here, not by a
    // second, nested pump with a wait of its own.
    rt.waiting = true;
    while (q.length > 0) {
      // Read the sequence before trying: a release or rebuild after this read makes the wait return at once.
      const seq = Atomics.load(i32, rt.seqIdx);
      const s = q[0];
      // Waiting for a backend, and nothing rebuilt since its pick found none: picking again would
      // find none again (or the backend that just failed it). The rebuild bumps the generation
      // before the sequence, so a rebuild not seen here wakes the wait below.
      const gen = Atomics.load(i32, GEN_IDX);
      let r = PICK_NO_BACKEND;
      if (!s.awaitsChange || gen !== s.pickGen || s.pickTable !== this.tableGen) {
        // A connect to what it picks may fail: it then waits for a rebuild after this.
        s.pickGen = gen;
        s.pickTable = this.tableGen;
        r = this.ctx.engine.acquire(rt.index, s.hash);
      }
      if (r >= 0) {
        this.leaveQueue(s);
        s.holdsSlot = true;
        this.connectTo(s, r);
        continue;
      }
      if (r === PICK_BAD_SERVICE || (r === PICK_NO_BACKEND && rt.entry.queue.when_down === 0)) {
        this.leaveQueue(s);
        this.end(s, TERM_NO_BACKEND);
        continue;
      }
      if (r === PICK_NO_BACKEND) {
        // queue.when_down: keeps waiting, for a rebuild (bounded from its first wait for a backend).
        this.armDown(s, rt);
        s.awaitsChange = true;
      } else {
        s.awaitsChange = false; // full: a release wakes it
      }
      const w = Atomics.waitAsync(this.i32, rt.seqIdx, seq, QUEUE_POLL_MS);
      if (w.async) w.value.then(rt.onWake);
      else queueMicrotask(rt.onWake);
      return;
    }
    rt.waiting = false;
  }

  // ── connect ────────────────────────────────────────────────────────────────

  /** Once per connect attempt (the first, and each retry). */
  private connectTo(s: Session, backend: number): void {
    const rt = s.svc!;
    s.backend = backend;
    s.bcBase = backendCounterIndex(this.ctx.workerId, backend, 0);
    s.state = ST_CONNECTING;
    const bk = this.backends[backend];
    s.bk = bk;
    if (bk === undefined) {
      // The table has not caught up with the engine (a reload in flight). With queue.when_down the
      // session waits for the table (a reload that brings a backend wakes the waiting connections
      // at its rebuild, before the table follows); else it counts as a failed connect.
      if (rt.entry.queue.when_down > 0 && !this.shuttingDown) {
        this.releaseSession(s);
        s.pickGen = Atomics.load(this.i32, GEN_IDX);
        s.pickTable = this.tableGen;
        this.waitForBackend(s, rt, true);
        return;
      }
      this.connectFailed(s, 'EUNKNOWNBACKEND');
      return;
    }
    s.tConnect = performance.now();
    this.arm(s, rt.entry.timeouts.connect);
    const attempt = ++s.attempt;
    const family = this.families[backend];
    if (family !== 0) {
      this.startConnect(s, bk.host, bk.port, family);
      return;
    }
    // A host name (IP addresses are recommended: README): resolved on every connect, as Node's
    // net.connect does, IPv4 addresses first (the first one is used).
    const gen = s.gen;
    lookup(bk.host, LOOKUP_OPTIONS, (err, address, fam) => {
      if (s.gen !== gen || s.attempt !== attempt || s.state !== ST_CONNECTING) return;
      if (err) this.connectFailed(s, (err as NodeJS.ErrnoException).code ?? 'ENOTFOUND');
      else this.startConnect(s, address, bk.port, fam);
    });
  }

  private startConnect(s: Session, ip: string, port: number, family: number): void {
    const err = s.t.connect(s, ip, port, family);
    if (err === 0 || err === CONNECT_DONE) {
      s.backendFd = true;
      this.ctx.descriptors?.take(1);
      // Connected within the call (the relay on loopback or a near LAN): no event follows.
      if (err === CONNECT_DONE) this.connected(s);
      return;
    }
    const code = getSystemErrorName(err);
    if (LOCAL_ERRORS.has(code)) this.localConnectFailure(s, err, code);
    else this.connectFailed(s, code);
  }

  /**
   * The backend socket could not be made here (open-files limit, memory, local ports): the backend
   * is not to blame, so no connect failure is counted or reported to passive health, and no other
   * backend is tried (it would fail alike). The client is closed (connect_failed, with the errno in
   * the log's `detail`) and the worker logs the cause.
   */
  private localConnectFailure(s: Session, errno: number, code: string): void {
    s.t.abandon(s);
    s.state = ST_FREE;
    s.detail = `${code}: no socket for the backend connection (local resources)`;
    this.ctx.onLocalError?.(errno, s.svc!.entry.name, 'connect');
    this.releaseSession(s);
    this.end(s, TERM_CONNECT_FAILED);
  }

  /** Once per connection, when its backend connection is up: counters, the idle timeout. */
  connected(s: Session): void {
    const rt = s.svc!;
    const f64 = this.f64;
    s.state = ST_CONNECTED;
    s.connectMs = performance.now() - s.tConnect;
    f64[rt.scBase + SC_CONNECT_TIME_MS] += s.connectMs;
    f64[s.bcBase + BC_CONNECTIONS] += 1;
    f64[s.bcBase + BC_CONNECT_TIME_MS] += s.connectMs;
    this.arm(s, rt.entry.timeouts.idle);
  }

  /** A connect attempt failed (error or timeout): count it, tell the control plane, try again. */
  connectFailed(s: Session, code: string): void {
    const rt = s.svc!;
    const f64 = this.f64;
    const failed = s.backend;
    s.t.abandon(s);
    this.backendClosed(s);
    s.state = ST_FREE;
    s.timeoutMs = 0;
    f64[s.bcBase + BC_CONNECT_FAILURES] += 1;
    this.ctx.post({ type: 'connect-failed', service: rt.entry.name, backend: failed, address: s.bk?.address ?? '', error: code });
    if (s.retries < rt.entry.retries && !this.shuttingDown) {
      // The engine's tried list is the worker's scratch, which other connections' acquires
      // overwrite while this one was connecting: reacquire takes this session's own list.
      const tried = (s.tried ??= new Int32Array(MAX_TRIED));
      const n = Math.min(s.retries, MAX_TRIED);
      for (let i = 0; i < n; i++) this.triedScratch[i] = tried[i];
      if (rt.entry.queue.when_down > 0) {
        s.pickGen = Atomics.load(this.i32, GEN_IDX);
        s.pickTable = this.tableGen;
      }
      const r = this.ctx.engine.reacquire(rt.index, s.hash, failed, n);
      if (r >= 0) {
        if (s.retries < MAX_TRIED) tried[s.retries] = failed;
        s.retries++;
        f64[rt.scBase + SC_RETRIES] += 1;
        f64[s.bcBase + BC_RETRIES] += 1;
        this.connectTo(s, r);
        return;
      }
      // reacquire released `failed`; the service slot is still held. Nothing left to try (every
      // candidate failed, or the rest are full): the client saw its connects fail — unless
      // queue.when_down holds it until the backends change (or, the rest full, a slot frees).
      s.backend = -1;
      this.releaseSession(s);
      if (!this.waitForBackend(s, rt, r !== PICK_BACKENDS_FULL && r !== PICK_SERVICE_FULL)) this.end(s, TERM_CONNECT_FAILED);
      return;
    }
    this.releaseSession(s);
    // Out of retries: with queue.when_down it waits for the backends to change and tries again.
    if (!this.waitForBackend(s, rt, true)) this.end(s, this.shuttingDown ? TERM_SHUTDOWN : TERM_CONNECT_FAILED);
  }

  // ── PROXY headers ──────────────────────────────────────────────────────────

  /**
   * accept_proxy: once per client chunk until its PROXY header is whole (almost always the first
   * chunk). A bad header closes the client (reason bad_proxy_header, the parser's words in the
   * log's `detail`); a good one names the client for the Maglev key, the log and send_proxy, and
   * the bytes after it wait for the backend like any early client bytes.
   */
  private readProxyHeader(s: Session): void {
    const pending = s.pending!;
    const buf = pending.length === 1 ? pending[0] : Buffer.concat(pending);
    const r = parseProxyHeader(buf);
    if (r.status === 'incomplete') {
      s.pending = [buf];
      return;
    }
    if (r.status === 'error') {
      s.detail = r.reason;
      this.end(s, TERM_BAD_PROXY_HEADER);
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
    this.admit(s, s.svc!);
  }

  /**
   * The PROXY header for the backend (send_proxy), or null: the client as its own header named it,
   * else the socket's addresses. Once per backend connection, from the transport's connect.
   */
  proxyHeader(s: Session): Buffer | null {
    const version = s.svc!.entry.send_proxy;
    if (version === 'none') return null;
    let src = s.srcAddr;
    let srcPort = s.srcPort;
    let dst = s.dstAddr;
    let dstPort = s.dstPort;
    if (src === '') {
      const addr = this.addr;
      this.peerOf(s);
      src = addr.address ?? '';
      srcPort = addr.port ?? 0;
      addr.address = '';
      addr.port = 0;
      s.t.local(s, addr);
      if (addr.address !== '') {
        dst = addr.address ?? '';
        dstPort = addr.port ?? 0;
      }
    }
    return version === 'v2' ? encodeProxyV2(src, srcPort, dst, dstPort, s.svc!.entry.protocol === 'udp') : encodeProxyV1(src, srcPort, dst, dstPort);
  }

  // ── timeouts ───────────────────────────────────────────────────────────────

  /** Gives the session's current state a timeout of `ms`, from now. */
  private arm(s: Session, ms: number): void {
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
  private sweep(): void {
    const now = (this.clock = performance.now());
    const slack = this.sweepMs;
    const before = this.lastSweep;
    this.lastSweep = now;
    for (const s of this.sessions) {
      const connected = s.state === ST_CONNECTED;
      // Moved since the last sweep, so no earlier than that sweep (the slack covers it).
      if (connected && s.t.moved(s)) s.lastActive = before;
      if (s.timeoutMs > 0 && now - s.lastActive >= s.timeoutMs + (connected ? slack : 0)) this.onTimeout(s);
    }
  }

  private onTimeout(s: Session): void {
    s.timeoutMs = 0;
    if (s.state === ST_QUEUED) {
      // Waited for a backend (queue.when_down) and none came: refused as without the wait. (One
      // that found backends again, but full, timed out as queued.)
      if (s.awaitsChange) {
        this.end(s, TERM_NO_BACKEND); // leaves the queue
        return;
      }
      this.f64[s.svc!.scBase + SC_QUEUE_TIMEOUTS] += 1;
      this.end(s, TERM_QUEUE_TIMEOUT); // leaves the queue
    } else if (s.state === ST_CONNECTING) {
      this.connectFailed(s, 'ETIMEDOUT');
    } else if (s.state === ST_CONNECTED) {
      this.end(s, TERM_IDLE_TIMEOUT);
    } else if (s.state === ST_HEADER) {
      s.detail = `no complete PROXY header within ${s.svc!.entry.timeouts.proxy_header}ms`;
      this.end(s, TERM_BAD_PROXY_HEADER);
    }
  }

  // ── close ──────────────────────────────────────────────────────────────────

  /**
   * Ends a session: its transport closes its sockets, then it is finalized. `reason` is kept
   * unless one was set already — or `override` (backend down, shutdown: the proxy's own decision
   * names the end, whatever the peers did before). The caller must not touch `s` afterwards: it
   * is back in its transport's pool.
   */
  end(s: Session, reason: number, override = false): void {
    if (s.svc === null) return; // ended already (the object is back in the pool)
    if (override || s.reason < 0) s.reason = reason;
    if (s.state === ST_QUEUED) this.leaveQueue(s);
    s.t.close(s);
    this.finalize(s);
  }

  /** The attempt's backend socket is closed (abandoned, or with the session): the reserve counts it back. */
  private backendClosed(s: Session): void {
    if (!s.backendFd) return;
    s.backendFd = false;
    this.ctx.descriptors?.give(1);
  }

  /** Gives the engine back what the session holds; safe to call more than once. */
  private releaseSession(s: Session): void {
    if (s.holdsSlot) {
      s.holdsSlot = false;
      this.ctx.engine.release(s.svc!.index, s.backend);
    }
    s.backend = -1;
  }

  /** Adds the bytes moved since the last look to the counters. Per close, and once a second. */
  private accountBytes(s: Session): void {
    const rt = s.svc!;
    const f64 = this.f64;
    s.t.syncBytes(s);
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

  private accountAllBytes(): void {
    for (const s of this.sessions) if (s.state === ST_CONNECTED) this.accountBytes(s);
  }

  /** Exactly once per session, from end: counters, release, log, back to its transport. */
  private finalize(s: Session): void {
    const rt = s.svc!;
    const ctx = this.ctx;
    this.accountBytes(s);
    this.releaseSession(s);
    const reason = s.reason < 0 ? TERM_CLIENT_CLOSED : s.reason;
    this.f64[rt.scBase + SC_TERM_BASE + reason] += 1;
    this.sessions.delete(s);
    this.backendClosed(s);
    ctx.descriptors?.give(1); // the client's socket
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
      if (s.datagramsIn >= 0) {
        rec.datagrams_in = s.datagramsIn;
        rec.datagrams_out = s.datagramsOut;
      }
      ctx.onClose(rec);
    }
    s.t.recycle(s);
    if (this.shuttingDown && this.sessions.size === 0 && ctx.onIdle !== null) ctx.onIdle();
  }

  // ── control (rare) ─────────────────────────────────────────────────────────

  /** Closes this worker's sessions on `backend` (on_marked_down: shutdown_sessions). */
  killBackend(backend: number): number {
    let killed = 0;
    for (const s of this.sessions) {
      if (s.backend === backend && (s.state === ST_CONNECTED || s.state === ST_CONNECTING)) {
        this.f64[s.bcBase + BC_KILLED] += 1;
        this.end(s, TERM_BACKEND_DOWN, true);
        killed++;
      }
    }
    return killed;
  }

  /** Stop path, step 1: no new sessions; waiting ones are closed (reason shutdown). */
  beginShutdown(): void {
    this.shuttingDown = true;
    for (const s of this.sessions) if (s.state === ST_QUEUED || s.state === ST_HEADER) this.end(s, TERM_SHUTDOWN, true);
  }

  /** Stop path, step 2 (after the grace period): everything still open is closed. */
  killAll(reason = TERM_SHUTDOWN): void {
    for (const s of this.sessions) this.end(s, reason, true);
  }

  /** Closes the queued sessions of a service that was removed. */
  dropQueue(rt: ServiceRuntime): void {
    for (const s of [...rt.queue]) this.end(s, TERM_NO_BACKEND);
  }
}
