/**
 * The native relay (relay/*.c, built into build/out/relay.node): the system calls of the data path
 * — accept, connect, and moving bytes both ways — without a call into JavaScript per connection or
 * per chunk. The session core (core.ts) keeps every decision (admission and pick, queue, retries, PROXY headers,
 * timeouts, counters, logs) and tells the relay what to do; the relay reports back in one call per
 * event-loop wake.
 *
 * The event and stats layout shared with relay/ is in src/shm/layout.ts (relay/relay.h includes it as
 * a generated header; a built relay is checked against it at load, through its `constants()`).
 * An ACCEPT may carry a connection another worker's relay accepted and handed over (relay/handoff.c: the
 * workers even out their connections); it comes on this worker's listener for that address.
 *
 * The relay is built against the headers of the Node that runs fulcrum (build/relay.ts: it uses
 * libuv's API, which N-API's ABI promise does not cover); `loadRelay` refuses one built for
 * another Node ABI, naming both.
 *
 * UDP services have a datagram path of their own in the relay (relay/udp.c: the udp* functions,
 * driven by transport-relay-udp.ts), batched with recvmmsg / sendmmsg.
 *
 * Without the relay (no C compiler at install, FULCRUM_RELAY=off, a load error) every session
 * runs on the JavaScript path (Node's TCP handles); `loadRelay` says why, and the pool logs it once.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatIPv4, formatIPv6 } from '../config/address.ts';
import { CONNECT_DONE } from './transport.ts';

import {
  END_CLIENT, END_MOVED, END_SERVER, EV_ACCEPT, EV_ACCEPT_ERROR, EV_CLIENT_GONE, EV_CONNECT_FAILED, EV_CONNECTED, EV_ENDED, EV_FIELDS,
  EV_UDP_ENDED, EV_UDP_FAILED, EV_UDP_NEW, RELAY_MAX_ACCEPT, RELAY_MAX_EVENTS, STAT_ACTIVITY, STAT_BYTES_IN, STAT_BYTES_OUT,
  STAT_DGRAMS_IN, STAT_DGRAMS_OUT, STAT_FIELDS,
} from '../shm/layout.ts';

export {
  END_MOVED, EV_UDP_ENDED, EV_UDP_FAILED, EV_UDP_NEW, STAT_DGRAMS_IN, STAT_DGRAMS_OUT, UDP_MAX_BATCH,
  END_CLIENT, END_SERVER, EV_A, EV_ACCEPT, EV_ACCEPT_ERROR, EV_ADDR, EV_B, EV_CLIENT_GONE, EV_CONNECT_FAILED, EV_CONNECTED,
  EV_ENDED, EV_FIELDS, EV_ID, EV_TYPE, RELAY_EVENTS, RELAY_MAX_ACCEPT, RELAY_MAX_EVENTS, STAT_ACTIVITY, STAT_BYTES_IN,
  STAT_BYTES_OUT, STAT_FIELDS, OPT_FIELDS, OPT_FLAGS, OPT_KEEP_COUNT, OPT_KEEP_IDLE, OPT_KEEP_INTERVAL, OPT_PROPAGATE_RESET,
} from '../shm/layout.ts';

/** The relay's interface version (its functions and their arguments); relay.c's RELAY_VERSION. */
export const RELAY_VERSION = 8;

/** Transport.connect's "connected within the call" (transport.ts); relay.c's CONNECT_DONE, checked against constants(). */
export { CONNECT_DONE };

export interface RelayBinding {
  init(stats: Float64Array, events: Int32Array, onEvents: (n: number) => void): void;
  setStats(stats: Float64Array): void;
  /** A listener id, or a negative errno. */
  listen(ip: string, port: number, family: number, reusePort: boolean, backlog: number): number;
  closeListener(id: number): void;
  /** A listening TCP socket made elsewhere (handed over by `fulcrum upgrade`): its listener id, or a negative errno. */
  adopt(fd: number): number;
  /** A listener's fd (what `fulcrum upgrade` hands to the next process), or -EBADF. */
  listenerFd(id: number): number;
  /** Connections other workers' relays handed to this one that it has not reported yet (a drain waits for them). */
  handedOver(): number;
  resume(id: number): void;
  /** Stops accepting on a listener (connections wait in its backlog) until resume(id). */
  pause(id: number): void;
  /** A listener's TCP keepalive (opts: layout.ts OPT_*), inherited by the sockets it accepts. */
  keepAlive(id: number, opts: Int32Array): void;
  /**
   * 0 (EV_CONNECTED or EV_CONNECT_FAILED follows), CONNECT_DONE (connected already: the session
   * relays), or a negative errno (nothing was kept: the client socket is still the caller's).
   * `opts` (layout.ts OPT_*): propagate_reset, the backend's (and a lent client's) keepalive.
   */
  connect(slot: number, clientFd: number, ownClient: boolean, ip: string, port: number, family: number,
    prefix: Uint8Array | null, clientEnded: boolean, opts: Int32Array): number;
  watch(slot: number, clientFd: number): number;
  /** Whether the slot had a session; its sockets are closed but a kept or Node-owned client. */
  stop(slot: number, keepClient: boolean): boolean;
  /** 0, or -EBADF: only a client the relay accepted and JS holds outside a session is closed. */
  closeFd(fd: number): number;
  /** Fills out[0] = family << 16 | port, out[1..4] = address bytes; 0 or a negative errno. */
  localAddress(fd: number, out: Int32Array): number;
  /**
   * Reads (only) a TCP socket's options into out: SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL,
   * TCP_KEEPCNT, SO_LINGER on and seconds, local port, peer port. Any fd; tests and diagnosis.
   */
  socketOptions(fd: number, out: Int32Array): number;
  /**
   * Drops (on) or lets through the pure SYNs that reach a listening TCP socket of this process:
   * a classic BPF socket filter (listen.c js_quiesce). 0, or a negative errno (-EBADF: not a
   * listening TCP socket). Needs no init(); the workers call it on both data paths (quiesceFilter).
   */
  quiesce(fd: number, on: boolean): number;
  /**
   * One datagram to an AF_UNIX socket (sd_notify: socketPath is $NOTIFY_SOCKET, "@name" abstract):
   * 0 or a negative errno. Needs no init(); src/ops/notify.ts calls it on the main thread.
   */
  notify(socketPath: string, message: string): number;
  // ── UDP services (relay/udp.c) ──
  /** Once per worker: the shared memory (the counters it adds to, the backend states it reads), datagrams per recvmmsg/sendmmsg. */
  udpInit(memory: Float64Array, batch: number): void;
  /** A UDP listener id, or a negative errno. */
  udpListen(ip: string, port: number, family: number, reusePort: boolean, adoptFd: number): number;
  /** The UDP listener's fd (what `fulcrum upgrade` hands over), or -EBADF. */
  udpListenerFd(id: number): number;
  /** The service's settings for its socket: at listen and per reload (`serviceCounters`: f64 index of this worker's counters). */
  udpConfigure(id: number, maxDatagram: number, responses: number, serviceCounters: number): void;
  udpCloseListener(id: number): void;
  /**
   * A pending flow (EV_UDP_NEW's id) becomes `slot`'s, connected to the backend (or, pendingId -1,
   * the slot's failed flow goes to another): 0 or a negative errno. `backendState`: i32 index of
   * its B_STATE; `backendCounters`: f64 index of its counters.
   */
  udpConnect(slot: number, pendingId: number, ip: string, port: number, family: number, header: Uint8Array | null,
    backendState: number, backendCounters: number): number;
  /** The flow's backend was removed: its next datagram starts a new flow. */
  udpMove(slot: number): void;
  /** Frees a flow (slot) or a pending one (pendingId ≥ 0); whether there was one. */
  udpClose(slot: number, pendingId: number): boolean;
  /** What it was built with: the layout constants, nodeAbi, and nodeVersion (a string). */
  constants(): Record<string, number> & { nodeVersion?: string };
}

export const RELAY_PATH = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'out', 'relay.node');

const EXPECTED: Record<string, number> = {
  version: RELAY_VERSION, statBytesIn: STAT_BYTES_IN, statBytesOut: STAT_BYTES_OUT, statActivity: STAT_ACTIVITY,
  statFields: STAT_FIELDS, evFields: EV_FIELDS, evAccept: EV_ACCEPT, evAcceptError: EV_ACCEPT_ERROR,
  evConnected: EV_CONNECTED, evConnectFailed: EV_CONNECT_FAILED, evEnded: EV_ENDED, evClientGone: EV_CLIENT_GONE,
  endClient: END_CLIENT, endServer: END_SERVER, maxEvents: RELAY_MAX_EVENTS, maxAccept: RELAY_MAX_ACCEPT, connectDone: CONNECT_DONE,
  statDgramsIn: STAT_DGRAMS_IN, statDgramsOut: STAT_DGRAMS_OUT, evUdpNew: EV_UDP_NEW, evUdpFailed: EV_UDP_FAILED,
  evUdpEnded: EV_UDP_ENDED, endMoved: END_MOVED,
};

/** Loads the relay: the binding, or why it cannot be used (the data path then stays in JavaScript). */
export function loadRelay(env: NodeJS.ProcessEnv = process.env, path = RELAY_PATH): RelayBinding | string {
  const setting = env.FULCRUM_RELAY ?? 'on';
  if (setting === 'off') return 'FULCRUM_RELAY=off';
  // A path names another build of the relay (the tests run the proxy suite against one built with
  // AddressSanitizer and UndefinedBehaviorSanitizer: build/relay.ts --sanitize).
  if (setting.endsWith('.node')) path = setting;
  else if (setting !== 'on') return `FULCRUM_RELAY=${setting} is neither on, off nor the path of a relay build (….node)`;
  if (!existsSync(path)) return `${path} is not built (npm install builds it with the C compiler: apt-get install gcc libc6-dev)`;
  let binding: RelayBinding;
  try {
    binding = createRequire(import.meta.url)(path) as RelayBinding;
  } catch (err) {
    return `${path} did not load: ${(err as Error).message}`;
  }
  const got = typeof binding.constants === 'function' ? binding.constants() : {};
  // First the Node it was built for: a relay built against another Node's libuv must not run.
  const abi = Number(process.versions.modules);
  if (got.nodeAbi !== abi) {
    const built = got.nodeAbi === undefined ? 'an unrecorded Node ABI' : `Node ABI ${got.nodeAbi} (${got.nodeVersion ?? '?'})`;
    return `${path} was built for ${built}, but this is Node ABI ${abi} (${process.version}): run npm run build:relay with this Node`;
  }
  const wrong = Object.keys(EXPECTED).filter((k) => got[k] !== EXPECTED[k]);
  if (wrong.length > 0) {
    return `${path} was built from another relay.c (${wrong.map((k) => `${k} ${got[k]} ≠ ${EXPECTED[k]}`).join(', ')}): run npm run build`;
  }
  return binding;
}

/**
 * The quiesce filter's setsockopt (a BGP drain holds new SYNs back: src/bgp/index.ts), or why it
 * is not there. It lives in the relay because Node has no setsockopt; on the JavaScript data
 * path (FULCRUM_RELAY=off, or a worker fallen back to it) the built relay is loaded for this one
 * call all the same — `off` chooses who moves the bytes — so only a relay not built (or built for
 * another Node) leaves a drain without it. Once per worker, at its first quiesce.
 */
export function quiesceFilter(env: NodeJS.ProcessEnv = process.env): RelayBinding['quiesce'] | string {
  const relay = loadRelay(env.FULCRUM_RELAY === 'off' ? { ...env, FULCRUM_RELAY: 'on' } : env);
  return typeof relay === 'string' ? relay : (fd, on) => relay.quiesce(fd, on);
}

/**
 * The text of an address the relay wrote as bytes (`words` from index `at`: 4 bytes for family 4,
 * 16 for family 6), in the one spelling of config/address.ts (Node's: RFC 5952, an IPv4-mapped
 * address as ::ffff:a.b.c.d). Hot: once per accepted connection whose address is needed.
 */
export function formatAddress(family: number, words: Int32Array, at: number): string {
  const bytes = new Uint8Array(words.buffer, words.byteOffset + at * 4, family === 6 ? 16 : 4);
  return family === 6 ? formatIPv6(bytes, 0) : formatIPv4(bytes, 0);
}
