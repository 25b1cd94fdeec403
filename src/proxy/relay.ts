/**
 * The native relay (relay/*.c, built into build/out/relay.node): the system calls of the data path
 * — accept, connect, and moving bytes both ways — without a call into JavaScript per connection or
 * per chunk. The session core (core.ts) keeps every decision (admission and pick, queue, retries, PROXY headers,
 * timeouts, counters, logs) and tells the relay what to do; the relay reports back in one call per
 * event-loop wake.
 *
 * Shared with relay/relay.h (checked at load against the addon's `constants()`):
 *
 *   events: Int32Array, EV_FIELDS (8) int32 per event, n of them per onEvents(n) call
 *   ┌────────────────┬──────────┬───────────┬─────────────────────┬─────────────────────────┐
 *   │ [0] type       │ [1] id   │ [2] a     │ [3] b               │ [4..7] c d e f          │
 *   ├────────────────┼──────────┼───────────┼─────────────────────┼─────────────────────────┤
 *   │ ACCEPT         │ listener │ client fd │ family << 16 | port │ address bytes (4 or 16) │
 *   │ ACCEPT_ERROR   │ listener │ -errno    │ (the listener is paused until resume(id))     │
 *   │ CONNECTED      │ slot     │           │                                               │
 *   │ CONNECT_FAILED │ slot     │ -errno    │ (backend socket closed, client socket kept)   │
 *   │ ENDED          │ slot     │ END_*     │ (sockets closed, but a Node-owned client's)   │
 *   │ CLIENT_GONE    │ slot     │           │ (a watched, queued client left; socket kept)  │
 *   └────────────────┴──────────┴───────────┴───────────────────────────────────────────────┘
 *   An ACCEPT may carry a connection another worker's relay accepted and handed over (relay/handoff.c:
 *   the workers even out their connections); it comes on this worker's listener for that address.
 *
 *   stats: Float64Array, STAT_FIELDS per slot: bytes client → server, bytes server → client, and
 *   an activity count (chunks moved) the timeout sweep compares between sweeps: no clock read
 *   per chunk. Zeroed by connect(); JS grows it (setStats) before using a slot beyond it.
 *
 * Without the relay (no C compiler at install, FULCRUM_RELAY=off, a load error) every session
 * runs on the JavaScript path (Node's TCP handles); `loadRelay` says why, and the pool logs it once.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const RELAY_VERSION = 2;
export const STAT_BYTES_IN = 0;
export const STAT_BYTES_OUT = 1;
export const STAT_ACTIVITY = 2;
export const STAT_FIELDS = 3;
export const EV_FIELDS = 8;
export const EV_ACCEPT = 1;
export const EV_ACCEPT_ERROR = 2;
export const EV_CONNECTED = 3;
export const EV_CONNECT_FAILED = 4;
export const EV_ENDED = 5;
export const EV_CLIENT_GONE = 6;
export const END_CLIENT = 1;
export const END_SERVER = 2;
export const RELAY_MAX_EVENTS = 256;
export const RELAY_MAX_ACCEPT = 64;
/** Events per onEvents call at most: room for two per epoll event, plus the accepts. */
export const RELAY_EVENTS = 1024;

export interface RelayBinding {
  init(stats: Float64Array, events: Int32Array, onEvents: (n: number) => void): void;
  setStats(stats: Float64Array): void;
  /** A listener id, or a negative errno. */
  listen(ip: string, port: number, family: number, reusePort: boolean, backlog: number): number;
  closeListener(id: number): void;
  resume(id: number): void;
  /** 0, or a negative errno (nothing was kept: the client socket is still the caller's). */
  connect(slot: number, clientFd: number, ownClient: boolean, ip: string, port: number, family: number,
    prefix: Uint8Array | null, clientEnded: boolean): number;
  watch(slot: number, clientFd: number): number;
  /** Whether the slot had a session; its sockets are closed but a kept or Node-owned client. */
  stop(slot: number, keepClient: boolean): boolean;
  /** 0, or -EBADF: only a client the relay accepted and JS holds outside a session is closed. */
  closeFd(fd: number): number;
  /** Fills out[0] = family << 16 | port, out[1..4] = address bytes; 0 or a negative errno. */
  localAddress(fd: number, out: Int32Array): number;
  constants(): Record<string, number>;
}

export const RELAY_PATH = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'out', 'relay.node');

const EXPECTED: Record<string, number> = {
  version: RELAY_VERSION, statBytesIn: STAT_BYTES_IN, statBytesOut: STAT_BYTES_OUT, statActivity: STAT_ACTIVITY,
  statFields: STAT_FIELDS, evFields: EV_FIELDS, evAccept: EV_ACCEPT, evAcceptError: EV_ACCEPT_ERROR,
  evConnected: EV_CONNECTED, evConnectFailed: EV_CONNECT_FAILED, evEnded: EV_ENDED, evClientGone: EV_CLIENT_GONE,
  endClient: END_CLIENT, endServer: END_SERVER, maxEvents: RELAY_MAX_EVENTS, maxAccept: RELAY_MAX_ACCEPT,
};

/** Loads the relay: the binding, or why it cannot be used (the data path then stays in JavaScript). */
export function loadRelay(env: NodeJS.ProcessEnv = process.env, path = RELAY_PATH): RelayBinding | string {
  const setting = env.FULCRUM_RELAY ?? 'on';
  if (setting === 'off') return 'FULCRUM_RELAY=off';
  if (setting !== 'on') return `FULCRUM_RELAY=${setting} is neither on nor off`;
  if (!existsSync(path)) return `${path} is not built (npm install builds it with the C compiler: apt-get install gcc libc6-dev)`;
  let binding: RelayBinding;
  try {
    binding = createRequire(import.meta.url)(path) as RelayBinding;
  } catch (err) {
    return `${path} did not load: ${(err as Error).message}`;
  }
  const got = typeof binding.constants === 'function' ? binding.constants() : {};
  const wrong = Object.keys(EXPECTED).filter((k) => got[k] !== EXPECTED[k]);
  if (wrong.length > 0) {
    return `${path} was built from another relay.c (${wrong.map((k) => `${k} ${got[k]} ≠ ${EXPECTED[k]}`).join(', ')}): run npm run build`;
  }
  return binding;
}

/**
 * The text of an address the relay wrote as bytes (`words` from index `at`: 4 bytes for family 4,
 * 16 for family 6), as Node prints it (IPv6 per RFC 5952: lower case, the longest run of zero
 * groups as ::, an IPv4-mapped address as ::ffff:a.b.c.d).
 */
export function formatAddress(family: number, words: Int32Array, at: number): string {
  const bytes = new Uint8Array(words.buffer, words.byteOffset + at * 4, family === 6 ? 16 : 4);
  if (family !== 6) return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i] << 8) | bytes[i + 1]);
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `::ffff:${bytes[12]}.${bytes[13]}.${bytes[14]}.${bytes[15]}`;
  }
  let best = -1;
  let bestLen = 1; // a single zero group is not shortened (RFC 5952 4.2.2)
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}
