/**
 * Who may hold a connection to the admin server, and for how long. The admin API is an operator's
 * tool on the control plane's thread: 64 idle or slowly dribbling connections used to lock every
 * operator out (Node checks its headersTimeout only every 30 s, and maxConnections refuses the
 * newest connection, which is the operator's). Here:
 *
 * - a request's headers must be whole within `headersMs` of the connection (or of the previous
 *   reply on a kept-alive one), and its body within `bodyMs` of the headers: one timer per
 *   connection, re-armed per request (control plane; at most `max` connections exist);
 * - one client address holds at most `perClient` connections; one more is closed as it arrives;
 * - when `max` connections are held, a new one still gets in: the oldest connection that is not
 *   in the middle of a request (idle, or still sending its headers) is closed for it. Only when
 *   every held connection has a request in progress is the new one refused.
 *
 * Refusals and evictions are counted (status) and logged at most once a minute.
 */
import type { Server, IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from '../observability/log.ts';

export interface ConnectionLimits {
  /** Connections held at once. */
  max: number;
  /** Connections held at once from one client address. */
  perClient: number;
  /** From the connection (or the previous reply) to the end of a request's headers. */
  headersMs: number;
  /** From the end of the headers to the end of the body. */
  bodyMs: number;
}

/** The admin server's limits: an operator's request is a few hundred bytes, sent at once. */
export const ADMIN_LIMITS: ConnectionLimits = { max: 64, perClient: 16, headersMs: 5_000, bodyMs: 10_000 };

export interface ConnectionCounts {
  /** Closed as they arrived: over the per-client limit, or every slot busy with a request. */
  refused: number;
  /** Closed to make room for a new connection (idle or still sending headers). */
  evicted: number;
  /** Closed because headers or body did not arrive in time. */
  timed_out: number;
}

interface Held {
  socket: Socket;
  client: string;
  /** Headers in, reply not yet finished. */
  busy: boolean;
  timer: NodeJS.Timeout | null;
}

const LOG_EVERY_MS = 60_000;

export class ConnectionGuard {
  readonly #limits: ConnectionLimits;
  readonly #log: Logger;
  /** Held connections, oldest first (a Map keeps insertion order). */
  readonly #held = new Map<Socket, Held>();
  readonly #perClient = new Map<string, number>();
  readonly counts: ConnectionCounts = { refused: 0, evicted: 0, timed_out: 0 };
  #lastLog = -Infinity;

  constructor(server: Server, limits: ConnectionLimits, log: Logger) {
    this.#limits = limits;
    this.#log = log;
    server.on('connection', (socket: Socket) => this.#admit(socket));
    server.on('request', (req: IncomingMessage, res: ServerResponse) => this.#onRequest(req, res));
  }

  #admit(socket: Socket): void {
    const client = socket.remoteAddress ?? '?';
    const fromClient = this.#perClient.get(client) ?? 0;
    if (fromClient >= this.#limits.perClient) return this.#refuse(socket, `${client} holds ${fromClient} connections already`);
    if (this.#held.size >= this.#limits.max) {
      const victim = this.#oldestIdle();
      if (victim === undefined) return this.#refuse(socket, `all ${this.#limits.max} connections have a request in progress`);
      this.counts.evicted++;
      this.#note('admin connection closed to make room for a new one');
      victim.socket.destroy();
      this.#release(victim);
    }
    const held: Held = { socket, client, busy: false, timer: null };
    this.#held.set(socket, held);
    this.#perClient.set(client, fromClient + 1);
    this.#arm(held, this.#limits.headersMs, 'headers');
    socket.once('close', () => this.#release(held));
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    const held = this.#held.get(req.socket);
    if (held === undefined) return;
    held.busy = true;
    if (req.complete) this.#disarm(held);
    else {
      this.#arm(held, this.#limits.bodyMs, 'body');
      req.once('end', () => this.#disarm(held));
    }
    res.once('finish', () => {
      held.busy = false;
      // Kept alive: the next request's headers are timed from here.
      if (!held.socket.destroyed) this.#arm(held, this.#limits.headersMs, 'headers');
    });
  }

  #oldestIdle(): Held | undefined {
    for (const h of this.#held.values()) if (!h.busy) return h;
    return undefined;
  }

  #arm(held: Held, ms: number, what: string): void {
    this.#disarm(held);
    held.timer = setTimeout(() => {
      held.timer = null;
      this.counts.timed_out++;
      this.#note(`admin connection closed: its ${what} did not arrive within ${ms}ms`);
      held.socket.destroy();
    }, ms);
    held.timer.unref();
  }

  #disarm(held: Held): void {
    if (held.timer !== null) clearTimeout(held.timer);
    held.timer = null;
  }

  #refuse(socket: Socket, why: string): void {
    this.counts.refused++;
    this.#note(`admin connection refused: ${why}`);
    socket.destroy();
  }

  #release(held: Held): void {
    this.#disarm(held);
    if (this.#held.get(held.socket) !== held) return;
    this.#held.delete(held.socket);
    const n = (this.#perClient.get(held.client) ?? 1) - 1;
    if (n <= 0) this.#perClient.delete(held.client);
    else this.#perClient.set(held.client, n);
  }

  /** One warning a minute at most, with the counts so far: a flood must not flood the log. */
  #note(what: string): void {
    const now = performance.now();
    if (now - this.#lastLog < LOG_EVERY_MS) return;
    this.#lastLog = now;
    this.#log.warn({ ...this.counts }, `${what} (further ones are counted, logged at most once a minute)`);
  }
}
