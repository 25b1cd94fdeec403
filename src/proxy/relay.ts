/**
 * The native relay (relay.c, built into build/out/relay.node): established sessions move their
 * bytes there, without a call into JavaScript per chunk. splice.ts keeps every decision (accept,
 * admission and pick, connect, retries, queue, PROXY headers, timeouts, close, counters) and hands
 * a session over once both sockets are up and nothing is left to send; relay.c reports the
 * sessions that ended, in one call per event-loop wake.
 *
 * Shared with relay.c (checked at load against its `constants()`):
 *
 *   stats: Float64Array, STAT_FIELDS per slot      ended: Int32Array, 2 per ended session
 *   ┌──────────────┬───────────────┬──────────┐    ┌──────┬───────┐
 *   │ bytes c → s  │ bytes s → c   │ activity │    │ slot │ cause │ …  (cause: END_CLIENT | END_SERVER)
 *   └──────────────┴───────────────┴──────────┘    └──────┴───────┘
 *   zeroed by splice(); `activity` counts chunks, so the timeout sweep sees whether a relayed
 *   session moved since its last look without a clock read per chunk.
 *
 * Without the relay (no C compiler at install, FULCRUM_RELAY=off, a load error) every session
 * runs on the JavaScript path; `relayUnavailable` says why, and the worker logs it once.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const RELAY_VERSION = 1;
export const STAT_BYTES_IN = 0;
export const STAT_BYTES_OUT = 1;
export const STAT_ACTIVITY = 2;
export const STAT_FIELDS = 3;
export const END_CLIENT = 1;
export const END_SERVER = 2;
export const RELAY_MAX_EVENTS = 256;

export interface RelayBinding {
  init(stats: Float64Array, ended: Int32Array, onEnded: (n: number) => void): void;
  setStats(stats: Float64Array): void;
  /** 0, or a negative errno: the session stays on the JavaScript path. */
  splice(slot: number, clientFd: number, serverFd: number): number;
  /** Whether the slot was relayed; it is not any more. */
  stop(slot: number): boolean;
  constants(): Record<string, number>;
}

export const RELAY_PATH = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'out', 'relay.node');

const EXPECTED: Record<string, number> = {
  version: RELAY_VERSION, statBytesIn: STAT_BYTES_IN, statBytesOut: STAT_BYTES_OUT, statActivity: STAT_ACTIVITY,
  statFields: STAT_FIELDS, endClient: END_CLIENT, endServer: END_SERVER, maxEvents: RELAY_MAX_EVENTS,
};

/** Loads the relay: the binding, or why it cannot be used (the data path then stays in JavaScript). */
export function loadRelay(env: NodeJS.ProcessEnv = process.env): RelayBinding | string {
  const setting = env.FULCRUM_RELAY ?? 'on';
  if (setting === 'off') return 'FULCRUM_RELAY=off';
  if (setting !== 'on') return `FULCRUM_RELAY=${setting} is neither on nor off`;
  if (!existsSync(RELAY_PATH)) return `${RELAY_PATH} is not built (npm install builds it with the C compiler: apt-get install gcc libc6-dev)`;
  let binding: RelayBinding;
  try {
    binding = createRequire(import.meta.url)(RELAY_PATH) as RelayBinding;
  } catch (err) {
    return `${RELAY_PATH} did not load: ${(err as Error).message}`;
  }
  const got = binding.constants();
  const wrong = Object.keys(EXPECTED).filter((k) => got[k] !== EXPECTED[k]);
  if (wrong.length > 0) {
    return `${RELAY_PATH} was built from another relay.c (${wrong.map((k) => `${k} ${got[k]} ≠ ${EXPECTED[k]}`).join(', ')}): run npm run build`;
  }
  return binding;
}
