/**
 * What every probe shares: its signature, its result, the reasons it gives, and a small socket
 * wrapper that turns "read until this parser is satisfied" into a promise that always settles
 * (on data, close, error or abort) and never leaves a socket behind.
 *
 * Probes run on the control plane's event loop. A probe must not throw, must not stall past its
 * signal, and must destroy everything it opened: a garbage reply or a silent server is a failed
 * probe with a reason, never a problem for the rest of fulcrum.
 */
import net from 'node:net';
import tls from 'node:tls';
import { readFile } from 'node:fs/promises';
import type { Duplex } from 'node:stream';
import { readSecretFile, type SecretSetting } from '../../config/secrets.ts';
import type { HostPort, HealthConfig } from '../../config/schema.ts';
import { localErrorCode } from '../../local-errors.ts';

export type Role = 'primary' | 'replica';
export type RoleFilter = 'primary' | 'replica' | 'any';

export interface ProbeResult {
  ok: boolean;
  /** Why it failed, or what it saw when it passed ("ok", "role primary"). */
  reason: string;
  latency_ms: number;
  /** Database probes: the role the server reported. */
  role?: Role;
  /**
   * Set (to the errno code, or why) when the probe could not be made here: fulcrum is out of
   * files, memory or local ports (src/local-errors.ts), or its probe thread ended under it. Not
   * the backend's failure: the monitor records nothing for it and probes again.
   */
  skipped?: string;
  /**
   * Replicas of a check with max_lag: how far behind its primary the server is, in milliseconds
   * (src/health/probes/lag.ts says how each server's lag is read); null when it is behind by an
   * amount it cannot tell (treated as over max_lag).
   */
  lag_ms?: number | null;
  /** The probe failed because the replica lags (over max_lag): lag_action decides, not on_marked_down. */
  lagging?: true;
}

/**
 * One probe type. `settings` is the service's whole health section; `signal` aborts the probe at
 * its timeout (the monitor passes AbortSignal.timeout(health.timeout)). `key` names whose probe
 * it is (service and backend): the probe thread isolates by it; probes themselves ignore it.
 */
export type Probe = (target: HostPort, settings: HealthConfig, signal: AbortSignal, key?: string) => Promise<ProbeResult>;

/** A failure with an operator-readable reason; thrown inside probes, caught by runProbe(). */
export class ProbeFailure extends Error {
  constructor(reason: string) {
    super(reason);
    this.name = 'ProbeFailure';
  }
}

/** At most `max` bytes of a reply, quoted, with control bytes escaped: `"+PON\x00…"`. */
export function excerpt(data: Buffer | string, max = 40): string {
  const buf = typeof data === 'string' ? Buffer.from(data) : data;
  let s = '';
  for (let i = 0; i < Math.min(buf.length, max); i++) {
    const c = buf[i];
    if (c === 0x0d) s += '\\r';
    else if (c === 0x0a) s += '\\n';
    else if (c === 0x09) s += '\\t';
    else if (c === 0x22) s += '\\"';
    else if (c === 0x5c) s += '\\\\';
    else if (c >= 0x20 && c < 0x7f) s += String.fromCharCode(c);
    else s += '\\x' + c.toString(16).padStart(2, '0');
  }
  return `"${s}${buf.length > max ? '…' : ''}"`;
}

/** Turns a socket or driver error into the few reasons an operator needs. */
export function describeError(err: unknown): string {
  const e = err as NodeJS.ErrnoException | undefined;
  switch (e?.code) {
    case 'ECONNREFUSED': return 'connection refused';
    case 'ECONNRESET': case 'EPIPE': return 'connection reset';
    case 'ETIMEDOUT': return 'timeout';
    case 'EHOSTUNREACH': case 'ENETUNREACH': return `unreachable (${e.code})`;
    case 'ENOTFOUND': case 'EAI_AGAIN': return `cannot resolve host (${e.code})`;
  }
  if (err instanceof ProbeFailure) return err.message;
  // Certificate and handshake failures (health.*.tls): the code says which check refused.
  // (Node's messages go on with advice after a ';' — not for this setting: cut there.)
  if (typeof e?.code === 'string' && /CERT|TLS|SSL|VERIFY/.test(e.code)) return `tls: ${clip(e.message.split(';')[0], 120)} (${e.code})`;
  return clip((e as Error | undefined)?.message ?? String(err), 160);
}

/**
 * Longest reason a probe gives. Reasons quote what servers say (a Redis error line, a PostgreSQL
 * or MySQL error message: up to MAX_REPLY bytes each), and every one goes to the history the
 * status page shows and into log lines: a server's text must not make them tens of KB.
 */
const MAX_REASON = 200;

const clip = (text: string, max = MAX_REASON): string => (text.length > max ? text.slice(0, max) + '…' : text);

/** "timeout after 500ms (waiting for reply)" — `stage` says how far the probe got. */
export function timeoutReason(settings: HealthConfig, stage: string): string {
  return `timeout after ${settings.timeout}ms (${stage})`;
}

/** How far a probe got: named in its timeout reason, with any partial reply the socket holds. */
export interface ProbeStage {
  name: string;
  socket?: ProbeSocket;
}

/** Runs a probe body, measuring latency and turning every throw into a failed result. */
export async function runProbe(
  signal: AbortSignal,
  settings: HealthConfig,
  body: (stage: ProbeStage) => Promise<{ reason: string; role?: Role; ok?: boolean } & Pick<ProbeResult, 'lag_ms' | 'lagging'>>,
): Promise<ProbeResult> {
  const started = performance.now();
  const stage: ProbeStage = { name: 'connecting' };
  const latency = () => Math.round((performance.now() - started) * 100) / 100;
  let onAbort: (() => void) | undefined;
  try {
    if (signal.aborted) throw new ProbeFailure(timeoutReason(settings, 'before start'));
    // The signal bounds the probe even if a driver never calls back after being destroyed.
    const r = await Promise.race([body(stage), new Promise<never>((_, reject) => {
      onAbort = () => reject(new Error('aborted'));
      signal.addEventListener('abort', onAbort, { once: true });
    })]);
    return {
      ok: r.ok ?? true, reason: clip(r.reason), latency_ms: latency(), ...(r.role ? { role: r.role } : {}),
      ...(r.lag_ms !== undefined ? { lag_ms: r.lag_ms } : {}), ...(r.lagging ? { lagging: r.lagging } : {}),
    };
  } catch (err) {
    const local = localErrorCode(err);
    if (local !== undefined) {
      return { ok: false, reason: `not probed: ${local} here (fulcrum is out of files, memory or local ports)`, latency_ms: latency(), skipped: local };
    }
    let reason = signal.aborted && !(err instanceof ProbeFailure) ? timeoutReason(settings, stage.name) : describeError(err);
    const partial = signal.aborted ? stage.socket?.pending : undefined;
    if (partial && partial.length > 0 && reason.startsWith('timeout')) reason += `, partial reply ${excerpt(partial)}`;
    return { ok: false, reason: clip(reason), latency_ms: latency() };
  } finally {
    if (onAbort) signal.removeEventListener('abort', onAbort);
  }
}

/** Applies the role filter to the role a server reported. */
export function roleResult(role: Role, want: RoleFilter): { ok: boolean; reason: string; role: Role } {
  if (want === 'any' || want === role) return { ok: true, reason: `role ${role}`, role };
  return { ok: false, reason: `wrong role: saw ${role}, want ${want}`, role };
}

/**
 * Reads a password file (config/secrets.ts's rule); read per probe so rotation needs no reload. A
 * file that cannot be used fails the probe with the reader's words as its reason; one that cannot
 * be opened for want of descriptors (a local error) skips it (runProbe).
 */
export async function readSecret(file: string, setting: SecretSetting): Promise<string> {
  try {
    return (await readSecretFile(setting, file)).toString('utf8');
  } catch (err) {
    if (localErrorCode(err) !== undefined) throw err;
    throw new ProbeFailure((err as Error).message);
  }
}

/** What a probe's `tls` and `ca_file` settings say (health.redis, health.postgres, health.mysql). */
export interface TlsSettings {
  tls: 'disable' | 'require' | 'verify-full';
  ca_file?: string;
}

/**
 * The TLS options of a probe's connection, or undefined for `tls: disable`. `require` encrypts
 * without checking who answers (as libpq's sslmode=require); `verify-full` checks the chain
 * against `ca_file` (the system's CAs without one) and the name or address the backend is
 * configured with. The CA file is read per probe, as the password files are, so renewing it
 * needs no reload. `setting` names the section in reasons ("health.postgres").
 */
export async function tlsOptions(cfg: TlsSettings | undefined, setting: string): Promise<tls.ConnectionOptions | undefined> {
  if (cfg === undefined || cfg.tls === 'disable') return undefined;
  if (cfg.tls === 'require') return { rejectUnauthorized: false };
  if (cfg.ca_file === undefined) return { rejectUnauthorized: true };
  try {
    return { rejectUnauthorized: true, ca: await readFile(cfg.ca_file, 'utf8') };
  } catch (err) {
    throw new ProbeFailure(`${setting}.ca_file ${cfg.ca_file}: cannot read (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
}

/** Largest reply a probe keeps: enough for INFO replication or an HTTP status line. */
export const MAX_REPLY = 64 * 1024;

/**
 * Makes `stream` show each chunk to `check` before any 'data' listener, the driver's parser
 * included, sees it. The drivers (pg, mysql2) parse in that callback and trust the server's
 * framing, so a reply they cannot parse could throw out of it (the thread ends) or loop for ever.
 * `check` returns why the bytes must not reach the driver, or null; a problem destroys the stream
 * with a ProbeFailure, which the driver reports as its error, and the probe fails with that
 * reason. Used on the plain socket a driver is given and, with TLS, on the TLS socket the driver
 * makes over it (whose 'data' is what the driver parses), before any data can arrive on it.
 */
export function checkData<T extends Duplex>(stream: T, check: (chunk: Buffer) => string | null): T {
  const emit = stream.emit;
  stream.emit = function (this: T, event: string | symbol, ...args: unknown[]): boolean {
    if (event === 'data' && !this.destroyed) {
      const problem = check(args[0] as Buffer);
      if (problem !== null) {
        this.destroy(new ProbeFailure(problem));
        return false;
      }
    }
    return emit.call(this, event, ...args);
  } as T['emit'];
  return stream;
}

/**
 * A CheckedSocket check for a length-prefixed protocol (pg's, mysql2's): once `header` bytes of a
 * message are in, `size` gives its whole length or why it is refused; `message` judges each
 * complete one. At most one incomplete message is held between chunks (`size` refuses one larger
 * than MAX_REPLY at its header).
 */
export function framed(
  header: number,
  size: (buf: Buffer, at: number) => number | string,
  message: (buf: Buffer, at: number, size: number) => string | null,
): (chunk: Buffer) => string | null {
  let rest: Buffer | null = null;
  return (chunk) => {
    const buf = rest === null ? chunk : Buffer.concat([rest, chunk]);
    let at = 0;
    while (buf.length - at >= header) {
      const total = size(buf, at);
      if (typeof total === 'string') return total;
      if (buf.length - at < total) break;
      const problem = message(buf, at, total);
      if (problem !== null) return problem;
      at += total;
    }
    rest = at < buf.length ? buf.subarray(at) : null;
    return null;
  };
}

/**
 * Bounds what a driver's socket (pg, mysql2) may receive in one probe, as ProbeSocket bounds its
 * own reads. The drivers keep a message until its declared length has arrived (pg up to 1 GB,
 * mysql2 16 MB packets chained without end), so a server streaming garbage grew the control
 * plane's memory for the whole timeout (≈ 800 MB a second on loopback), and mysql2 parses a
 * large packet in one synchronous call (≈ 200 ms per MB) that stalled the event loop, heartbeats
 * included, far past the probe's timeout. A probe's exchange is a few hundred bytes: beyond
 * MAX_REPLY the socket is destroyed with a ProbeFailure, which the driver reports as its error.
 * Called before the driver connects.
 */
export function capReply(socket: Duplex): void {
  let received = 0;
  socket.on('data', (d: Buffer) => {
    received += d.length;
    if (received > MAX_REPLY) socket.destroy(new ProbeFailure(`reply too long (over ${MAX_REPLY} bytes)`));
  });
}

/**
 * A TCP connection for one probe. `read(parse)` accumulates bytes until `parse` returns a value
 * (it may throw ProbeFailure for a bad reply), then keeps the unparsed rest for the next read.
 * Every path (close, error, abort, oversize) settles the pending read, and `destroy()` is
 * idempotent.
 */
export class ProbeSocket {
  readonly socket: net.Socket;
  #buf: Buffer = Buffer.alloc(0);
  #ended = false;
  #error: unknown = null;
  #wake: (() => void) | null = null;
  readonly #signal: AbortSignal;
  readonly #onAbort = () => this.#notify();

  private constructor(socket: net.Socket, signal: AbortSignal) {
    this.socket = socket;
    this.#signal = signal;
    socket.on('data', (d: Buffer) => {
      this.#buf = this.#buf.length === 0 ? d : Buffer.concat([this.#buf, d]);
      // Past MAX_REPLY nothing more is read: a server streaming without end must not make the
      // probe thread concatenate (and hold) more before the reader wakes (read() then fails it).
      if (this.#buf.length > MAX_REPLY) socket.destroy();
      this.#notify();
    });
    socket.on('end', () => { this.#ended = true; this.#notify(); });
    socket.on('close', () => { this.#ended = true; this.#notify(); });
    socket.on('error', (err) => { this.#error ??= err; this.#notify(); });
    signal.addEventListener('abort', this.#onAbort, { once: true });
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  /**
   * Connects (over TLS with `secure`: tlsOptions()), or throws "connection refused", a TLS
   * failure, or the timeout (via the signal).
   */
  static connect(target: HostPort, signal: AbortSignal, secure?: tls.ConnectionOptions): Promise<ProbeSocket> {
    return new Promise((resolve, reject) => {
      const socket = secure === undefined
        ? net.connect({ host: target.host, port: target.port, noDelay: true })
        : tls.connect({ ...secure, host: target.host, port: target.port, ...(net.isIP(target.host) === 0 ? { servername: target.host } : {}) }).setNoDelay(true);
      const connected = secure === undefined ? 'connect' : 'secureConnect';
      const ps = new ProbeSocket(socket, signal);
      const onAbort = () => { cleanup(); ps.destroy(); reject(new Error('aborted')); };
      const onError = (err: unknown) => { cleanup(); ps.destroy(); reject(err); };
      const onConnect = () => { cleanup(); resolve(ps); };
      const cleanup = () => {
        socket.off(connected, onConnect);
        socket.off('error', onError);
        signal.removeEventListener('abort', onAbort);
      };
      if (signal.aborted) return onAbort();
      socket.once(connected, onConnect);
      socket.once('error', onError);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  write(data: Buffer | string): void {
    if (!this.socket.destroyed) this.socket.write(data);
  }

  /** Resolves with parse()'s value; `parse` returns [value, bytesConsumed] or undefined for "need more". */
  async read<T>(parse: (buf: Buffer, ended: boolean) => [T, number] | undefined): Promise<T> {
    for (;;) {
      if (this.#signal.aborted) throw new Error('aborted');
      if (this.#buf.length > 0 || this.#ended) {
        const r = parse(this.#buf, this.#ended);
        if (r) {
          this.#buf = this.#buf.subarray(r[1]);
          return r[0];
        }
      }
      if (this.#buf.length > MAX_REPLY) throw new ProbeFailure(`reply too long (over ${MAX_REPLY} bytes) ${excerpt(this.#buf)}`);
      if (this.#error) throw this.#error;
      if (this.#ended) {
        throw new ProbeFailure(this.#buf.length === 0
          ? 'closed by server before replying'
          : `closed by server after a partial reply ${excerpt(this.#buf)}`);
      }
      await new Promise<void>((resolve) => { this.#wake = resolve; });
    }
  }

  /** What has arrived and not been consumed (for failure messages). */
  get pending(): Buffer {
    return this.#buf;
  }

  destroy(): void {
    this.#signal.removeEventListener('abort', this.#onAbort);
    this.socket.destroy();
  }
}
