/**
 * What the main thread and the data-plane workers say to each other. Everything here is
 * structured-cloneable; the shared memory and the compiled engine travel in `workerData`.
 *
 * main → worker: `services` (the whole service table, on start, reload and runtime changes),
 * `kill-backend`, `pause` / `resume` (stop / start accepting on one service), `quiesce` (services
 * whose listeners drop new SYNs, unanswered: a BGP drain, src/bgp/index.ts), `logging` (a reload
 * changed the log level or per-connection logging), `shutdown` (stop, or a retirement by resize),
 * `listeners` (their fds, for an upgrade).
 * worker → main: `ack` (answers a request, with any listen errors; a `shutdown` is answered once
 * the listeners and the queue are closed), `connect-failed` (passive health), `stopped` (a
 * shutdown's sessions are all gone).
 */
import type { HostPort } from '../config/schema.ts';
import type { ForwardedLines } from '../observability/log.ts';

/** One backend as a worker needs it: the engine's id and where to connect. */
export interface BackendEntry {
  index: number;
  host: string;
  port: number;
  /** "host:port", for log lines and messages (made once, here). */
  address: string;
  /** Removed from the config, draining its open sessions (TCP keeps them; a UDP flow moves on). */
  removed: boolean;
}

/** One service as a worker needs it. Built by the control plane from config + balancer indexes. */
export interface ServiceEntry {
  index: number;
  name: string;
  /** udp: flows of datagrams (transport-udp.ts, on both data paths); tcp: connections. */
  protocol: 'tcp' | 'udp';
  listen: HostPort;
  /** Only maglev uses the client hash; other algorithms get 0 and no string work is done. */
  hashed: boolean;
  hash_key: 'source_ip' | 'source_ip_port';
  retries: number;
  timeouts: { connect: number; idle: number; proxy_header: number };
  /** Clients send a PROXY header first (fulcrum behind another L4 balancer). */
  accept_proxy: boolean;
  /** Backends get a PROXY header naming the client. */
  send_proxy: 'none' | 'v1' | 'v2';
  /** TCP keepalive of both sockets, in whole seconds (the kernel's unit), or null (the system's default). */
  tcp_keepalive: { idle: number; interval: number; count: number } | null;
  /** A reset from one side is passed on as a reset (SO_LINGER 0 and close), not a clean close. */
  propagate_reset: boolean;
  /**
   * UDP never queues: max 0, so a datagram that finds no room is dropped (queue_full, counted as a
   * limit drop). when_down: how long a connection waits for a backend while none is eligible (0:
   * closed at once).
   */
  queue: { max: number; timeout: number; when_down: number };
  /** protocol udp: replies that end a flow (0: only idle ends it), and the longest datagram forwarded. */
  udp: { responses: number; max_datagram: number };
  backends: BackendEntry[];
}

export interface WorkerInit {
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  workerId: number;
  services: ServiceEntry[];
  /** Names of services that start without a listener (e.g. bound to a VIP this node does not hold). */
  paused: string[];
  /** Names of services whose listeners drop new SYNs from their bind on (the node is being drained: `quiesce`). */
  quiesced: string[];
  logging: { level: string; connections: boolean };
  reusePort: boolean;
  /** Whether the worker runs the native relay (the pool checked that it loads), else Node's handles. */
  relay: boolean;
  /** The descriptor reserve's cells, shared by all workers and the pool (descriptors.ts). */
  descriptors: SharedArrayBuffer;
  /**
   * Listening sockets the previous process handed over (`fulcrum upgrade`, src/control/upgrade.ts):
   * a service whose name, address and protocol match adopts its fd instead of binding anew.
   */
  inherited?: HandedListener[];
}

/**
 * A listening socket as an upgrade hands it over: whose it is and its fd in the process holding
 * it. One per worker and service (each worker has its own SO_REUSEPORT listener).
 */
export interface HandedListener {
  service: string;
  /** formatHostPort(listen) when it was bound. */
  address: string;
  protocol: 'tcp' | 'udp';
  fd: number;
}

export type MainToWorker =
  | { type: 'services'; seq: number; services: ServiceEntry[] }
  | { type: 'kill-backend'; seq: number; backend: number }
  | { type: 'pause'; seq: number; service: string }
  | { type: 'resume'; seq: number; service: string }
  /**
   * These services' TCP listeners drop (on) or let through pure SYNs: new clients are held back
   * (they retransmit) while handshakes under way and open connections go on. Answered with `ack`,
   * its errors naming a listener that could not be changed. `services` replaces the set.
   */
  | { type: 'quiesce'; seq: number; services: string[] }
  | { type: 'shutdown'; seq: number; grace: number }
  /** The fds of the worker's listeners (an upgrade hands them over); answered with `listeners`. */
  | { type: 'listeners'; seq: number }
  | { type: 'logging'; seq: number; level: string; connections: boolean };

/** A listener that could not bind, as reported by a worker. */
export interface ListenProblem {
  service: string;
  address: string;
  message: string;
  code?: string;
}

export type WorkerToMain =
  | { type: 'ack'; seq: number; errors: ListenProblem[]; killed?: number; listeners?: HandedListener[] }
  | { type: 'connect-failed'; service: string; backend: number; address: string; error: string }
  | { type: 'stopped'; workerId: number }
  /** The worker's log lines: a batch announced, or the batch with the time each was logged (observability/log.ts LineForwarder). */
  | { type: 'log'; log: ForwardedLines };
