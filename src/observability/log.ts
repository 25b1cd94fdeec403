/**
 * The one place pino is configured. Components take a child logger made once, at creation
 * (`log.child({ component: 'health', service })`), never one per call or per connection.
 *
 * How lines reach stdout: every thread formats its lines as pino JSON, but only the main thread
 * writes them, through one LogOutput, in the order they were logged:
 * - a data-plane worker batches its lines (LineForwarder): the first line of a batch sends a
 *   notice at once ("lines from time T on are coming"), the batch follows LOG_BATCH_MS later;
 * - the failover thread posts each line as it logs it;
 * - LogOutput writes a line once it is LOG_SETTLE_MS old (a message between threads arrives
 *   within that) and no worker has an open batch that began before it, but never holds one
 *   longer than LOG_MAX_HOLD_MS (a stalled worker's lines are then written late, out of place).
 * So lines come out in time order, within LOG_SETTLE_MS when the workers are quiet and within
 * about LOG_BATCH_MS while they log, and always within a second (LOG_MAX_HOLD_MS).
 * LogOutput also applies `logging.format`: JSON as pino made it, or formatText's readable line.
 */
import { writeSync } from 'node:fs';
import { pino, type Logger, type LevelWithSilent } from 'pino';
import type { LoggingConfig } from '../config/schema.ts';

export type { Logger } from 'pino';

/** `logging.format`: json for log shippers, text for a terminal (and the demo). */
export type LogFormat = LoggingConfig['format'];

/** How long LogOutput keeps a line at least: another thread's line of the same moment is in its hands by then. */
export const LOG_SETTLE_MS = 20;
/** The longest LogOutput waits for a worker's announced batch (a worker stalled longer has its lines written late). */
export const LOG_MAX_HOLD_MS = 1000;
/** How long LineForwarder collects a thread's lines before sending them: a line waits at most this long in its thread. */
export const LOG_BATCH_MS = 100;
/** A batch is sent at once when it holds this many lines (a busy worker under connection logging)… */
const LOG_BATCH_LINES = 512;
/**
 * …or this many characters: its text stays below V8's large-object size (128 KiB) on both threads,
 * so it is made and dropped in the young generation (512 connection lines, ≈ 140 KiB, were
 * allocated with mmap and freed with munmap by the full collector, on both threads).
 */
const LOG_BATCH_CHARS = 60_000;

// The time of the line this thread's loggers are writing. pino calls `timestamp` and then the
// destination's write() synchronously, in the same log call: the destination reads the time here
// instead of parsing it out of the line. Per thread (each thread loads its own copy of this module).
let stampedAt = 0;
const timestamp = (): string => {
  stampedAt = Date.now();
  return `,"time":"${new Date(stampedAt).toISOString()}"`;
};

/**
 * `base`: the fields of every line ({ app: 'fulcrum' }); a thread whose lines another thread writes
 * (src/failover/thread.ts, src/proxy/worker.ts) passes a destination that forwards them. Without a
 * destination the lines go to this process's LogOutput on stdout (logOutput()).
 */
export function createLogger(level: LevelWithSilent = 'info', destination?: pino.DestinationStream, base: Record<string, unknown> = { app: 'fulcrum' }): Logger {
  return pino({ level, base, timestamp }, destination ?? logOutput());
}

/** When the line being written by this thread's logger was logged (epoch ms): for a destination's write(). */
export function loggedAt(): number {
  return stampedAt;
}

const streamOf = (logger: Logger): pino.DestinationStream => (logger as unknown as Record<symbol, pino.DestinationStream>)[pino.symbols.streamSym];

/**
 * A batch of one thread's lines as a LineForwarder sends it: the lines joined into one string
 * (`text`; line i ends at ends[i], in UTF-16 code units) and when each was logged (`at`, epoch ms).
 * One string and two typed arrays cost the structured clone a copy each on both threads, where an
 * array of 512 strings cost it 512 strings to flatten, write and read back (bench/analysis.md).
 */
export interface ForwardedBatch {
  text: string;
  ends: Uint32Array;
  at: Float64Array;
}

/** What a LineForwarder sends: the notice that a batch began at `open`, or the batch itself. */
export type ForwardedLines = { open: number } | ForwardedBatch;

/** `lines` (logged at `at`, in that order) as one ForwardedBatch: LineForwarder's encoding (and tests'). */
export function toBatch(lines: readonly string[], at: ArrayLike<number>): ForwardedBatch {
  const ends = new Uint32Array(lines.length);
  let end = 0;
  for (let i = 0; i < lines.length; i++) ends[i] = end += lines[i].length;
  return { text: lines.join(''), ends, at: Float64Array.from(at) };
}

/** The lines of a batch, each as its own string (toBatch's inverse). */
export function batchLines(m: ForwardedBatch): string[] {
  const lines: string[] = [];
  for (let i = 0, from = 0; i < m.ends.length; from = m.ends[i++]) lines.push(m.text.slice(from, m.ends[i]));
  return lines;
}

/**
 * Hands what a LineForwarder of another thread (`source`: which one) sent to `logger`'s own
 * destination: into LogOutput's time order, or — a caller's own stream — each line as it is.
 */
export function writeForwarded(logger: Logger, source: string, m: ForwardedLines): void {
  const stream = streamOf(logger);
  if (stream instanceof LogOutput) {
    if ('open' in m) stream.open(source, m.open);
    else stream.batch(source, m);
  } else if ('text' in m) {
    for (const line of batchLines(m)) stream.write(line);
  }
}

/** The thread `source` ended: the output stops waiting for a batch it announced. */
export function closeForwarded(logger: Logger, source: string): void {
  const stream = streamOf(logger);
  if (stream instanceof LogOutput) stream.close(source);
}

/** One line another thread formatted and posted as it logged it (`at`: when), to `logger`'s destination. */
export function writeLine(logger: Logger, line: string, at: number = Date.now()): void {
  const stream = streamOf(logger);
  if (stream instanceof LogOutput) stream.writeAt(line, at);
  else stream.write(line);
}

/** Sets the format of the output `logger` writes to, when that is a LogOutput (a caller's own stream keeps its form). */
export function setLogFormat(logger: Logger, format: LogFormat): void {
  const stream = streamOf(logger);
  if (stream instanceof LogOutput) stream.format = format;
}

/**
 * The process's log output (main thread): every line of every thread, written in the order of the
 * time it was logged, as JSON or as text (see the header for when a line is written). `drain(now)`
 * writes what is due; a timer calls it while lines wait (tests call it with their own clock).
 */
export class LogOutput implements pino.DestinationStream {
  format: LogFormat = 'json';
  readonly #out: pino.DestinationStream & { flush?(cb?: (err?: Error) => void): void };
  readonly #now: () => number;
  readonly #timer: boolean;
  /**
   * Lines waiting, as runs in arrival order: a run is lines of one thread in the order they were
   * logged and in time order (a worker's batch, split where its clock stepped back; or one line).
   * take() merges the runs by time, the earlier arrival first among equal times: the order a
   * stable sort of all the lines by time gives, at the cost of a comparison per run, not per line.
   */
  #pending: Run[] = [];
  /** Sources with a batch announced and not yet arrived: when its first line was logged. */
  readonly #open = new Map<string, number>();
  #armed = false;

  constructor(out: pino.DestinationStream, options: { now?: () => number; timer?: boolean } = {}) {
    this.#out = out;
    this.#now = options.now ?? Date.now;
    this.#timer = options.timer ?? true;
  }

  /** A line of this thread's own loggers (pino's call). */
  write(line: string): void {
    this.writeAt(line, stampedAt);
  }

  /** A line logged at `at` (epoch ms), by this thread or another (the failover thread's, posted as logged). */
  writeAt(line: string, at: number): void {
    this.#pending.push(new Run(line, [line.length], [at], 0, 1));
    this.#arm();
  }

  /** `source` announced a batch whose first line was logged at `at`: lines logged after that wait for it. */
  open(source: string, at: number): void {
    if (!this.#open.has(source)) this.#open.set(source, at);
  }

  /** `source`'s batch (the pool: once per batch of a worker), which closes what it announced. */
  batch(source: string, m: ForwardedBatch): void {
    this.#open.delete(source);
    const { text, ends, at } = m;
    let first = 0;
    for (let i = 1; i < at.length; i++) {
      if (at[i] >= at[i - 1]) continue;
      this.#pending.push(new Run(text, ends, at, first, i)); // the clock stepped back: a run of its own from here
      first = i;
    }
    if (first < at.length) this.#pending.push(new Run(text, ends, at, first, at.length));
    this.#arm();
  }

  /** `source` ends (a worker exited): nothing more is coming from it. */
  close(source: string): void {
    if (this.#open.delete(source) && this.#pending.length > 0) this.#arm();
  }

  #arm(): void {
    if (this.#armed || !this.#timer) return;
    this.#armed = true;
    // The drain runs in the check phase (setImmediate), after the poll phase has taken the messages
    // that arrived meanwhile: an announcement waiting in the queue is seen before lines are written.
    // unref: a line waiting does not keep the process alive; the exit handler writes it.
    setTimeout(() => setImmediate(() => {
      this.#armed = false;
      this.drain();
    }).unref(), LOG_SETTLE_MS).unref();
  }

  /** Writes, in time order, every line that is due at `now` (all of them with Infinity). */
  drain(now: number = this.#now()): void {
    const chunk = this.take(now);
    if (chunk !== '') this.#out.write(chunk);
    if (this.#pending.length > 0) this.#arm();
  }

  /** Removes the lines drain(now) would write and returns them, in time order and in the format set. */
  take(now: number): string {
    const runs = this.#pending;
    if (runs.length === 0) return '';
    let until = now - LOG_SETTLE_MS;
    for (const openedAt of this.#open.values()) if (now - openedAt < LOG_MAX_HOLD_MS) until = Math.min(until, openedAt - 1);
    const asText = this.format === 'text';
    let chunk = '';
    let spent = 0;
    for (;;) {
      // The run whose next line is the oldest (the first arrived among equal times)…
      let r = -1;
      let head = Infinity;
      for (let j = 0; j < runs.length; j++) {
        const x = runs[j];
        if (x.next < x.last && x.at[x.next] < head) {
          head = x.at[x.next];
          r = j;
        }
      }
      if (r < 0 || head > until) break;
      // …gives its lines up to the next line of another run: older than the heads of the runs
      // that arrived before it, no newer than those after it. A batch that overlaps no other
      // goes whole, as one piece of its text.
      let atMost = until;
      let below = Infinity;
      for (let j = 0; j < runs.length; j++) {
        const x = runs[j];
        if (j === r || x.next >= x.last) continue;
        if (j < r) below = Math.min(below, x.at[x.next]);
        else atMost = Math.min(atMost, x.at[x.next]);
      }
      const x = runs[r];
      let end = x.next;
      while (end < x.last && x.at[end] <= atMost && x.at[end] < below) end++;
      if (asText) {
        for (let i = x.next, from = x.from; i < end; from = x.ends[i++]) chunk += formatText(x.text.slice(from, x.ends[i]));
      } else {
        chunk += x.from === 0 && x.ends[end - 1] === x.text.length ? x.text : x.text.slice(x.from, x.ends[end - 1]);
      }
      x.from = x.ends[end - 1];
      x.next = end;
      if (end === x.last) spent++;
    }
    if (spent > 0) this.#pending = spent === runs.length ? [] : runs.filter((x) => x.next < x.last);
    return chunk;
  }

  /** Writes everything now (a stop: no more lines are coming), then flushes the stream (pino's logger.flush). */
  flush(cb?: (err?: Error) => void): void {
    this.drain(Infinity);
    if (this.#out.flush) this.#out.flush(cb);
    else cb?.();
  }
}

/** Lines next..last-1 of a batch (LogOutput's pending runs); `from`: where line `next` starts in `text`. */
class Run {
  readonly text: string;
  readonly ends: ArrayLike<number>;
  readonly at: ArrayLike<number>;
  next: number;
  readonly last: number;
  from: number;

  constructor(text: string, ends: ArrayLike<number>, at: ArrayLike<number>, next: number, last: number) {
    this.text = text;
    this.ends = ends;
    this.at = at;
    this.next = next;
    this.last = last;
    this.from = next === 0 ? 0 : ends[next - 1];
  }
}

let processOutput: LogOutput | undefined;

/** For Atomics.wait: a pause of FdOutput's while a non-blocking pipe is full. */
const pause = new Int32Array(new SharedArrayBuffer(4));

/**
 * A file descriptor as LogOutput's stream: each chunk encoded once and written synchronously,
 * whole (a partial write goes on where it stopped; a full non-blocking pipe, EAGAIN, is waited
 * on a millisecond at a time, as pino's SonicBoom does in its sync mode). SonicBoom, which it
 * replaces here, measured each chunk's UTF-8 length twice before writing it: ≈ 0.4 µs per
 * connection line on the main thread with the connection log on (bench/analysis.md).
 */
export class FdOutput implements pino.DestinationStream {
  readonly #fd: number;

  constructor(fd: number) {
    this.#fd = fd;
  }

  write(chunk: string): void {
    const bytes = Buffer.from(chunk, 'utf8');
    let off = 0;
    while (off < bytes.length) {
      try {
        off += writeSync(this.#fd, bytes, off, bytes.length - off);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
        Atomics.wait(pause, 0, 0, 1);
      }
    }
  }

  /** Nothing is held: every write is done when write() returns. */
  flush(cb?: (err?: Error) => void): void {
    cb?.();
  }
}

/**
 * This process's LogOutput on stdout, made at first use. Its writes are synchronous: one write per
 * drain (all threads' lines together), so they cost little, and what was written is on stdout, in
 * order, when the process exits (an asynchronous stream can still have a write in flight then,
 * which the lines written at exit would pass). What still waits when the process exits is written then.
 */
export function logOutput(): LogOutput {
  if (processOutput === undefined) {
    const out = new LogOutput(new FdOutput(1));
    process.on('exit', () => out.drain(Infinity));
    processOutput = out;
  }
  return processOutput;
}

/**
 * A destination for a thread whose lines the main thread writes (the data-plane workers): keeps
 * each line with the time it was logged; the first line of a batch is announced to `send` at once
 * ({ open }), and the batch is sent LOG_BATCH_MS later (no timer while the thread logs nothing),
 * or at LOG_BATCH_LINES or LOG_BATCH_CHARS.
 */
export class LineForwarder implements pino.DestinationStream {
  readonly #send: (m: ForwardedLines) => void;
  #lines: string[] = [];
  #chars = 0;
  readonly #at = new Float64Array(LOG_BATCH_LINES);
  #timer: NodeJS.Timeout | null = null;

  constructor(send: (m: ForwardedLines) => void) {
    this.#send = send;
  }

  /** pino's call, once per line the thread logs: per closed connection with logging.connections. */
  write(line: string): void {
    const n = this.#lines.length;
    if (n === 0) this.#send({ open: stampedAt });
    this.#at[n] = stampedAt;
    this.#lines.push(line);
    this.#chars += line.length;
    if (n + 1 >= LOG_BATCH_LINES || this.#chars >= LOG_BATCH_CHARS) this.flush();
    else this.#timer ??= setTimeout(() => this.flush(), LOG_BATCH_MS).unref();
  }

  /** Sends what is batched now (also before the thread stops). */
  flush(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    const n = this.#lines.length;
    if (n === 0) return;
    this.#send(toBatch(this.#lines, this.#at.subarray(0, n)));
    this.#lines = [];
    this.#chars = 0;
  }
}

// ── the text format ──────────────────────────────────────────────────────────────────────────

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
/** A value that can stand bare after `key=`: no space, quote, `=` or control character. */
const BARE = /^[^\s"=\\\x00-\x1f]+$/;

const pad2 = (n: number): string => (n < 10 ? '0' : '') + n;

/** "2026-12-06 09:05:42.123", in the machine's time zone (what a terminal's reader compares with their clock). */
export function localTime(ms: number): string {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, '0')}`;
}

function textValue(v: unknown): string {
  if (typeof v === 'string') return v !== '' && BARE.test(v) ? v : JSON.stringify(v);
  if (typeof v === 'object' && v !== null) return JSON.stringify(v);
  return String(v);
}

/**
 * One pino JSON line as a readable one: local time, level name, message, then the fields as
 * key=value in the order pino wrote them (the component and worker first); strings with spaces
 * are quoted, objects are compact JSON. An error's stack follows on indented lines. The `app`
 * field every line carries is left out. A line that is not JSON is returned as it is.
 *
 *   2026-12-06 09:05:42.123 INFO  connection component=proxy worker=1 client=127.0.0.1:50412 service=web …
 */
export function formatText(line: string): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  if (typeof o !== 'object' || o === null) return line;
  const { level, time, msg, app: _app, ...fields } = o;
  const at = typeof time === 'string' ? Date.parse(time) : typeof time === 'number' ? time : NaN;
  let out = `${Number.isNaN(at) ? '-' : localTime(at)} ${(LEVEL_NAMES[level as number] ?? String(level)).padEnd(5)} ${typeof msg === 'string' ? msg : ''}`;
  let stack = '';
  for (const [key, value] of Object.entries(fields)) {
    if (key === 'err' && typeof value === 'object' && value !== null && 'message' in value) {
      const { message, stack: s, type: _type, ...rest } = value as { message: unknown; stack?: unknown; type?: unknown };
      out += ` err=${textValue(message)}`;
      for (const [k, v] of Object.entries(rest)) out += ` err.${k}=${textValue(v)}`;
      if (typeof s === 'string') stack = '\n' + s.split('\n').map((l) => '    ' + l.trim()).join('\n');
      continue;
    }
    out += ` ${key}=${textValue(value)}`;
  }
  return out + stack + '\n';
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
  const isoTime = isoTimeCache();
  // The service, backend and reason strings as JSON: a worker writes the same few over and over.
  const known = new Map<string, string>();
  const named = (s: string): string => {
    let json = known.get(s);
    if (json === undefined) {
      if (known.size >= 1024) known.clear(); // names of backends a reload or discovery removed
      known.set(s, json = jsonString(s));
    }
    return json;
  };
  return (rec) => {
    if (logger.levelVal > pino.levels.values.info) return;
    const now = Date.now();
    stampedAt = now; // what the destination orders the line by, as pino's timestamp() sets it
    if (now !== ms) {
      ms = now;
      iso = isoTime(now); // pino.stdTimeFunctions.isoTime, once per millisecond
    }
    let line = `${head}${iso}"${bindings},"client":${jsonString(rec.client)},"service":${named(rec.service)},"backend":${
      rec.backend === null ? 'null' : named(rec.backend)},"connect_ms":${jsonNumber(rec.connect_ms)},"queue_ms":${jsonNumber(rec.queue_ms)},"duration_ms":${
      jsonNumber(rec.duration_ms)},"bytes_in":${jsonNumber(rec.bytes_in)},"bytes_out":${jsonNumber(rec.bytes_out)},"retries":${jsonNumber(rec.retries)},"reason":${
      named(rec.reason)}`;
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

/**
 * A JSON number as pino writes it (String(n); a non-finite one is null). The milliseconds of a
 * connection line have one decimal (core.ts round1): such a number is the double nearest to k/10,
 * whose shortest round-trip form — what String() writes — is k's digits with a point before the
 * last, built here from integers; V8 would run its double-to-shortest conversion for each one
 * (its number-to-string cache misses on durations).
 */
export function jsonNumber(n: number): string | number {
  if (Number.isInteger(n)) return n;
  const k = Math.round(n * 10);
  // Below 1e9 a tenth is far wider than a double's spacing, so no shorter form reaches n.
  if (k / 10 === n && k > 0 && k < 1e10) return `${(k - (k % 10)) / 10}.${k % 10}`;
  return Number.isFinite(n) ? String(n) : 'null';
}

/**
 * Date.prototype.toISOString for epoch milliseconds, the date and time of day made once per
 * second ("2026-12-06T12:40:17.") and the milliseconds appended ("123Z"): Date's formatting
 * (a C++ call with a time-zone lookup) once a second instead of once per millisecond.
 */
export function isoTimeCache(): (ms: number) => string {
  let second = NaN;
  let prefix = '';
  return (ms) => {
    const s = Math.floor(ms / 1000);
    if (s !== second) {
      const full = new Date(s * 1000).toISOString();
      // Years 0–9999 only ("+010000-…" has another length): others are formatted whole.
      if (full.length !== 24) return new Date(ms).toISOString();
      second = s;
      prefix = full.slice(0, 20);
    }
    return prefix + MILLIS[ms - s * 1000];
  };
}

/** "000Z" … "999Z": the end of an ISO time, by its milliseconds. */
const MILLIS = Array.from({ length: 1000 }, (_, i) => `${String(i).padStart(3, '0')}Z`);

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
