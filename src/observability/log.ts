/**
 * The one place pino is configured. Components take a child logger made once, at creation
 * (`log.child({ component: 'health', service })`), never one per call or per connection.
 */
import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger } from 'pino';

/**
 * `base`: the fields of every line ({ app: 'fulcrum' }); a thread whose lines another thread writes
 * (src/failover/thread.ts) passes that logger's bindings() and a destination that forwards them.
 */
export function createLogger(level: LevelWithSilent = 'info', destination?: pino.DestinationStream, base: Record<string, unknown> = { app: 'fulcrum' }): Logger {
  return pino({ level, base, timestamp: pino.stdTimeFunctions.isoTime }, destination ?? pino.destination({ sync: false }));
}

/** Writes a line that a logger of another thread formatted to `logger`'s own destination, as it is. */
export function writeLine(logger: Logger, line: string): void {
  (logger as unknown as Record<symbol, pino.DestinationStream>)[pino.symbols.streamSym].write(line);
}

/** A logger that drops everything: for tests and tools that do not log. */
export const silentLogger: Logger = pino({ level: 'silent' });

/**
 * The line logged once per closed connection when `logging.connections` is true (what HAProxy's
 * tcplog carries), by the worker that served it. Field names are part of fulcrum's interface:
 * log pipelines parse them, so they change only with a note in the README.
 */
export interface ConnectionLogLine {
  /** Client address, "ip:port". */
  client: string;
  service: string;
  /** The backend that served the session (or the last one tried), "host:port"; null when none was picked. */
  backend: string | null;
  /** Milliseconds from the first connect attempt to the backend connection being up (-1: never connected). */
  connect_ms: number;
  /** Milliseconds spent waiting in the service's queue (0 when admitted at once). */
  queue_ms: number;
  /** Milliseconds from accept to close. */
  duration_ms: number;
  /** Bytes client → backend. */
  bytes_in: number;
  /** Bytes backend → client. */
  bytes_out: number;
  /** Connect attempts redispatched to another backend for this connection. */
  retries: number;
  /** One of TERM_REASONS in src/shm/layout.ts. */
  reason: string;
  /** Why, where the reason alone does not say it (a bad PROXY header: what was wrong with it). */
  detail?: string;
  /** UDP flows only: datagrams client → backend, and backend → client. */
  datagrams_in?: number;
  datagrams_out?: number;
}

/** The `msg` of every connection line, so `jq 'select(.msg=="connection")'` finds them. */
export const CONNECTION_LOG_MSG = 'connection';

/**
 * The connection line's writer for `logger` (a worker's, made once): the bytes pino writes for
 * `logger.info(rec, CONNECTION_LOG_MSG)`, built from the fixed fields of ConnectionLogLine in one
 * template instead of pino's walk over the object's keys, and written to the logger's destination.
 * HOT with `logging.connections` on: once per closed connection (core.ts finalize). What it saves
 * is in bench/analysis.md (the churn family); test/observability/log.test.ts holds it to pino's
 * output byte for byte.
 */
export function connectionLineWriter(logger: Logger): (rec: ConnectionLogLine) => void {
  const internals = logger as unknown as Record<symbol, unknown>;
  const stream = internals[pino.symbols.streamSym] as pino.DestinationStream;
  // The bindings pino puts after the time: `,"app":"fulcrum","component":"proxy","worker":0`.
  const bindings = internals[pino.symbols.chindingsSym] as string;
  const head = `{"level":${pino.levels.values.info},"time":"`;
  const tail = `,"msg":"${CONNECTION_LOG_MSG}"}\n`;
  let ms = -1;
  let iso = '';
  return (rec) => {
    if (logger.levelVal > pino.levels.values.info) return;
    const now = Date.now();
    if (now !== ms) {
      ms = now;
      iso = new Date(now).toISOString(); // pino.stdTimeFunctions.isoTime, once per millisecond
    }
    let line = `${head}${iso}"${bindings},"client":${jsonString(rec.client)},"service":${jsonString(rec.service)},"backend":${
      rec.backend === null ? 'null' : jsonString(rec.backend)},"connect_ms":${jsonNumber(rec.connect_ms)},"queue_ms":${jsonNumber(rec.queue_ms)},"duration_ms":${
      jsonNumber(rec.duration_ms)},"bytes_in":${jsonNumber(rec.bytes_in)},"bytes_out":${jsonNumber(rec.bytes_out)},"retries":${jsonNumber(rec.retries)},"reason":${
      jsonString(rec.reason)}`;
    if (rec.detail !== undefined) line += `,"detail":${jsonString(rec.detail)}`;
    if (rec.datagrams_in !== undefined) line += `,"datagrams_in":${jsonNumber(rec.datagrams_in)},"datagrams_out":${jsonNumber(rec.datagrams_out!)}`;
    stream.write(line + tail);
  };
}

/** Characters a JSON string must escape (and lone surrogates, which JSON.stringify escapes). */
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/;

/** A JSON string literal: as JSON.stringify writes it, without its call for the plain addresses and names of a connection line. */
function jsonString(s: string): string {
  return NEEDS_ESCAPE.test(s) ? JSON.stringify(s) : `"${s}"`;
}

/** A JSON number as pino writes it (a non-finite one is null). */
function jsonNumber(n: number): string | number {
  return Number.isFinite(n) ? n : 'null';
}

/** A destination that can be flushed: pino.destination()'s SonicBoom. */
export type FlushableDestination = pino.DestinationStream & { flush(): void; flushSync(): void };

/**
 * A destination that gathers lines into one string until it holds `minChars`, then hands that to
 * `out` in one write: pino's SonicBoom measures the UTF-8 length of its whole pending buffer on
 * every write (up to 16 KiB per line under a busy worker's connection log), once per batch here.
 * Lines keep their order; flush and flushSync hand over what is gathered first.
 */
export class LineBatch implements pino.DestinationStream {
  #pending = '';
  readonly #out: FlushableDestination;
  readonly #minChars: number;

  constructor(out: FlushableDestination, minChars = 4096) {
    this.#out = out;
    this.#minChars = minChars;
  }

  /** HOT: once per log line (with the connection log on, once per closed connection). */
  write(line: string): void {
    this.#pending += line;
    if (this.#pending.length >= this.#minChars) this.#handOver();
  }

  #handOver(): void {
    if (this.#pending === '') return;
    const text = this.#pending;
    this.#pending = '';
    this.#out.write(text);
  }

  /** What is gathered, then the destination's own flush (asynchronous; may throw while it is not ready). */
  flush(): void {
    this.#handOver();
    this.#out.flush();
  }

  flushSync(): void {
    this.#handOver();
    this.#out.flushSync();
  }
}

/** The `msg` of the line logged per backend state transition (fields: service, backend, from, to, cause). */
export const BACKEND_STATE_LOG_MSG = 'backend state';
/** The `msg` of the line logged per failover role change (fields: from, to, cause). */
export const ROLE_LOG_MSG = 'failover role';
