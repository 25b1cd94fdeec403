/**
 * What the session core knows about one client connection (or, with a datagram transport, one
 * flow), whatever transport carries it: its service, its backend and what it holds in the engine,
 * its state and timeout, its PROXY-header addresses, its bytes and the figures of its log line.
 * A transport extends the class with what it needs to move the bytes (transport.ts), and pools
 * its own objects: `reset()` makes one new again.
 */
import type { ConnectionLogLine } from '../observability/log.ts';
import { serviceAddr, serviceCounterIndex, S_QUEUED, S_RELEASE_SEQ, tallyAddr, T_SERVICE_QUEUED } from '../shm/layout.ts';
import type { BackendEntry, ServiceEntry } from './messages.ts';
import type { Transport } from './transport.ts';

// Session states.
export const ST_FREE = 0;
export const ST_QUEUED = 1;
export const ST_CONNECTING = 2;
export const ST_CONNECTED = 3;
/** accept_proxy: waiting for the client's PROXY header, before admission. */
export const ST_HEADER = 4;

/** One closed connection: the connection log line (field names fixed in observability/log.ts). */
export type CloseRecord = ConnectionLogLine;

/** Per-service state of one worker: its config and its wait queue. worker.ts makes one per service. */
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
  /** A waitAsync on S_RELEASE_SEQ is pending, or the pump is running: nobody else pumps. */
  waiting = false;
  /** Made once per service: the wait's callback (no closure per wait). */
  readonly onWake: () => void;

  constructor(entry: ServiceEntry, workerId: number, core: { pumpQueue(rt: ServiceRuntime): void }) {
    this.entry = entry;
    this.index = entry.index;
    this.scBase = serviceCounterIndex(workerId, entry.index, 0);
    this.queuedIdx = (serviceAddr(entry.index) + S_QUEUED) >> 2;
    this.seqIdx = (serviceAddr(entry.index) + S_RELEASE_SEQ) >> 2;
    this.tallyQueuedIdx = (tallyAddr(workerId) + T_SERVICE_QUEUED + entry.index * 4) >> 2;
    this.onWake = () => {
      this.waiting = false;
      core.pumpQueue(this);
    };
  }
}

/** The core's part of a session. Pooled by its transport: `reset()` makes it new again. */
export class Session {
  /** The transport that carries the session (set by it, before the core sees the session). */
  t: Transport;
  svc: ServiceRuntime | null = null;
  bk: BackendEntry | undefined = undefined;
  state = ST_FREE;
  /** Bumped by reset(): callbacks of an earlier use of this pooled object are ignored. */
  gen = 0;
  /** Bumped per connect attempt: a cancelled attempt's callback is ignored. */
  attempt = 0;
  hash = 0;
  /** Backend whose B_ACTIVE this session holds (-1: none). */
  backend = -1;
  /** Whether this session holds a service slot (S_ACTIVE): acquire succeeded, release not yet called. */
  holdsSlot = false;
  /** A backend socket of the current connect attempt is open (counted in the descriptor reserve). */
  backendFd = false;
  /** Base index of this worker's counters for `backend`. */
  bcBase = -1;
  retries = 0;
  /**
   * Backends whose connect failed for this session, in order (`retries` of them are set). Made on
   * the first retry (rare), then kept with the pooled session: an idle one does not pay ≈ 200 B.
   */
  tried: Int32Array | null = null;
  reason = -1;
  /** EOF read from the client before the backend was connected (the transport passes it on then). */
  clientEnded = false;
  /** Timeout of the current state (0: none), measured from lastActive. */
  timeoutMs = 0;
  /** performance.now() of the last activity: the transport stamps it per chunk (core.clock) or the sweep does (moved). */
  lastActive = 0;
  tAccept = 0;
  /** performance.now() when it last entered the queue (0: never queued); queueMs sums its waits. */
  tQueued = 0;
  queueMs = 0;
  /**
   * queue.when_down: performance.now() when it began waiting for a backend (0: never). Its wait is
   * bounded by when_down from then, and it ends no_backend if none came.
   */
  tDown = 0;
  /**
   * Queued for a backend (queue.when_down), not for a slot: it picks again only once the eligible
   * backends may have changed (H_GENERATION moved past pickGen, or a new table), and its wait ends
   * no_backend at its bound.
   */
  awaitsChange = false;
  /** H_GENERATION read before its last pick (only with queue.when_down). */
  pickGen = 0;
  /** The worker's table generation (core.ts `tableGen`) at its last pick: a new table also lets it pick again. */
  pickTable = 0;
  tConnect = 0;
  /** -1 until a backend connection is up. */
  connectMs = -1;
  /** Payload bytes client → backend and back, as the transport counted them (syncBytes). */
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
  /** Client bytes read before the backend was connected (copies), sent to it first. */
  pending: Buffer[] | null = null;
  pendingBytes = 0;
  /** A datagram transport's counts for the log line (UDP flows); -1: not a flow (TCP). */
  datagramsIn = -1;
  datagramsOut = -1;

  constructor(t: Transport) {
    this.t = t;
  }

  reset(): void {
    this.svc = null;
    this.bk = undefined;
    this.state = ST_FREE;
    this.gen++;
    this.attempt = 0;
    this.hash = 0;
    this.backend = -1;
    this.holdsSlot = false;
    this.backendFd = false;
    this.bcBase = -1;
    this.retries = 0;
    this.reason = -1;
    this.clientEnded = false;
    this.timeoutMs = this.lastActive = 0;
    this.tAccept = this.tQueued = this.queueMs = this.tConnect = this.tDown = this.pickGen = this.pickTable = 0;
    this.awaitsChange = false;
    this.connectMs = -1;
    this.bytesIn = this.bytesOut = this.countedIn = this.countedOut = 0;
    this.clientAddr = '';
    this.srcAddr = this.dstAddr = this.detail = '';
    this.srcPort = this.dstPort = this.headerBytes = 0;
    this.pending = null;
    this.pendingBytes = 0;
    this.datagramsIn = this.datagramsOut = -1;
  }
}
