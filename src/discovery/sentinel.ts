/**
 * `discover.redis_sentinel`: the primary (role primary) or the replicas (role replica) of a
 * master that Redis Sentinel watches. Called by the Discovery (index.ts): `ask` every interval,
 * and `listen` for the whole life of the watch.
 *
 * - ask: the sentinels in turn (the one that answered last first) until one answers:
 *   `SENTINEL get-master-addr-by-name <master>` (nil: a master this sentinel does not know — the
 *   next one is asked, and if none knows it the answer fails), and for replicas
 *   `SENTINEL replicas <master>`, keeping those whose flags hold none of s_down, o_down,
 *   disconnected and whose master-link-status is ok — with primary_as_backup, the primary too,
 *   as `backup: true` (reads fall back to it when every replica is out).
 * - listen: one connection to a live sentinel, SUBSCRIBEd to the events that move the set; it
 *   reconnects to the next sentinel when it drops (any one may be down). `+switch-master <master>
 *   <old ip> <old port> <new ip> <new port>` for a primary service is applied from the message
 *   itself, with no round trip (the 100 ms target: new connections reach the new primary as soon
 *   as the reload sequence has applied it); the other events (and a new subscription, which may
 *   have missed some) ask at once.
 *
 * The RESP reading is the probes' (src/health/probes/resp.ts): one parser of Redis replies.
 */
import net from 'node:net';
import { formatHostPort, type HostPort, type SentinelDiscoveryConfig } from '../config/schema.ts';
import { readSecretFile } from '../config/secrets.ts';
import { encodeCommand, parseReply, RespError, type RespValue } from '../health/probes/resp.ts';
import { DiscoveryError } from './errors.ts';
import { backendList, type Found, type Source, type SourceAnswer } from './source.ts';

/** Largest reply kept: a SENTINEL replicas answer for a few hundred replicas. */
const MAX_BUFFER = 1024 * 1024;
/** Events that change a master's primary or replicas (Sentinel's pub/sub channels). */
const EVENTS = ['+switch-master', '+slave', '+sdown', '-sdown', '+odown', '-odown', '+convert-to-slave', '+slave-reconf-done', '+reboot', '-dup-sentinel'];
/** Pause before subscribing again after a connection dropped (each sentinel in turn). */
const RESUBSCRIBE_MS = 100;

/**
 * One RESP connection to a sentinel: commands answered in order, and (once subscribed) pushed
 * messages to `onPush`. Every failure (close, error, garbage, too long a reply) ends it with its
 * reason, once.
 */
class RespConnection {
  readonly #socket: net.Socket;
  #buf: Buffer = Buffer.alloc(0);
  readonly #waiting: Array<{ resolve(v: RespValue): void; reject(e: Error): void }> = [];
  #ended: Error | null = null;
  onPush: ((v: RespValue) => void) | null = null;
  onEnd: ((why: Error) => void) | null = null;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.on('data', (d: Buffer) => this.#data(d));
    socket.on('error', (err) => this.#end(err));
    socket.on('close', () => this.#end(new Error('connection closed')));
  }

  static open(at: HostPort, timeoutMs: number): Promise<RespConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: at.host, port: at.port, noDelay: true });
      const timer = setTimeout(() => socket.destroy(new Error(`no connection within ${timeoutMs}ms`)), timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.off('error', reject);
        socket.setKeepAlive(true, 1000);
        resolve(new RespConnection(socket));
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  }

  command(args: string[], timeoutMs: number): Promise<RespValue> {
    if (this.#ended) return Promise.reject(this.#ended);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.#end(new Error(`no reply to ${args.slice(0, 2).join(' ')} within ${timeoutMs}ms`)), timeoutMs);
      this.#waiting.push({ resolve: (v) => { clearTimeout(timer); resolve(v); }, reject: (e) => { clearTimeout(timer); reject(e); } });
      this.#socket.write(encodeCommand(args));
    });
  }

  close(): void {
    this.#end(new Error('closed'));
  }

  #data(d: Buffer): void {
    this.#buf = this.#buf.length === 0 ? d : Buffer.concat([this.#buf, d]);
    try {
      for (;;) {
        const r = parseReply(this.#buf);
        if (!r) break;
        this.#buf = this.#buf.subarray(r[1]);
        const waiter = this.#waiting.shift();
        if (waiter) waiter.resolve(r[0]);
        else this.onPush?.(r[0]);
      }
    } catch (err) {
      return this.#end(err as Error);
    }
    if (this.#buf.length > MAX_BUFFER) this.#end(new Error(`reply too long (over ${MAX_BUFFER} bytes)`));
  }

  #end(why: Error): void {
    if (this.#ended) return;
    this.#ended = why;
    this.#socket.destroy();
    for (const w of this.#waiting.splice(0)) w.reject(why);
    this.onEnd?.(why);
  }
}

/** A flat [key, value, key, value…] reply as a map. */
function fields(v: RespValue): Map<string, string> {
  const m = new Map<string, string>();
  if (!Array.isArray(v)) return m;
  for (let i = 0; i + 1 < v.length; i += 2) if (typeof v[i] === 'string' && typeof v[i + 1] === 'string') m.set(v[i] as string, v[i + 1] as string);
  return m;
}

/** "ip port" strings to an address, or why not. */
function address(host: unknown, port: unknown): HostPort | string {
  const p = Number(port);
  if (typeof host !== 'string' || net.isIP(host) === 0) return `not an IP address: ${JSON.stringify(host)}`;
  if (!Number.isInteger(p) || p < 1 || p > 65535) return `not a port: ${JSON.stringify(port)}`;
  return { host, port: p };
}

const errorOf = (v: RespValue): string | null => (v instanceof RespError ? v.message : null);

export function sentinelSource(settings: SentinelDiscoveryConfig): Source {
  const { master, role, timeout } = settings;
  const who = `redis_sentinel ${master}`;
  /** The sentinel that answered last: asked first next time. */
  let preferred = 0;
  const order = (): HostPort[] => settings.sentinels.map((_, i) => settings.sentinels[(preferred + i) % settings.sentinels.length]);

  const connect = async (at: HostPort): Promise<RespConnection> => {
    const conn = await RespConnection.open(at, timeout);
    if (settings.password_file) {
      const password = (await readSecretFile('discover.redis_sentinel.password_file', settings.password_file)).toString('utf8');
      const r = await conn.command(['AUTH', password], timeout);
      if (errorOf(r)) {
        conn.close();
        throw new Error(`auth failed: ${errorOf(r)}`);
      }
    }
    return conn;
  };

  /** The answer of one sentinel; null: it knows no master of that name. */
  const askOne = async (conn: RespConnection): Promise<SourceAnswer | null> => {
    const m = await conn.command(['SENTINEL', 'get-master-addr-by-name', master], timeout);
    if (errorOf(m)) throw new Error(`SENTINEL get-master-addr-by-name: ${errorOf(m)}`);
    if (m === null) return null;
    if (!Array.isArray(m) || m.length !== 2) throw new Error(`SENTINEL get-master-addr-by-name: a bad reply ${JSON.stringify(m).slice(0, 80)}`);
    const primary = address(m[0], m[1]);
    if (typeof primary === 'string') throw new Error(`SENTINEL get-master-addr-by-name: ${primary}`);
    if (role === 'primary') return { backends: backendList([primary]), notes: [] };
    const r = await conn.command(['SENTINEL', 'replicas', master], timeout);
    if (errorOf(r)) throw new Error(`SENTINEL replicas: ${errorOf(r)}`);
    if (!Array.isArray(r)) throw new Error(`SENTINEL replicas: a bad reply ${JSON.stringify(r).slice(0, 80)}`);
    const notes: string[] = [];
    const found: Found[] = settings.primary_as_backup ? [{ ...primary, backup: true }] : [];
    for (const entry of r) {
      const f = fields(entry);
      const at = address(f.get('ip'), f.get('port'));
      if (typeof at === 'string') {
        notes.push(`a replica ${at}`);
        continue;
      }
      const flags = (f.get('flags') ?? '').split(',');
      const bad = flags.filter((x) => x === 's_down' || x === 'o_down' || x === 'disconnected');
      if (bad.length > 0) notes.push(`replica ${formatHostPort(at)}: ${bad.join(', ')}`);
      else if (f.get('master-link-status') !== 'ok') notes.push(`replica ${formatHostPort(at)}: link to the primary ${f.get('master-link-status') ?? 'unknown'}`);
      else found.push(at);
    }
    return { backends: backendList(found), notes };
  };

  return {
    kind: 'redis_sentinel',
    query: `${role} of ${master} via ${settings.sentinels.map(formatHostPort).join(', ')}`,
    interval: settings.interval,
    hold: settings.hold,

    async ask(signal) {
      const problems: string[] = [];
      let unknown = 0;
      const sentinels = order();
      for (const at of sentinels) {
        if (signal.aborted) break;
        let conn: RespConnection | undefined;
        try {
          conn = await connect(at);
          const answer = await askOne(conn);
          if (answer === null) {
            unknown++;
            problems.push(`${formatHostPort(at)}: unknown master`);
            continue;
          }
          preferred = settings.sentinels.indexOf(at);
          return answer;
        } catch (err) {
          problems.push(`${formatHostPort(at)}: ${(err as Error).message}`);
        } finally {
          conn?.close();
        }
      }
      if (unknown === sentinels.length) throw new DiscoveryError(`${who}: no sentinel knows a master named ${JSON.stringify(master)}`);
      throw new DiscoveryError(`${who}: no sentinel answered (${problems.join('; ')})`);
    },

    listen(push) {
      let stopped = false;
      let conn: RespConnection | null = null;
      let timer: NodeJS.Timeout | undefined;
      let next = 0;
      const subscribe = async (): Promise<void> => {
        if (stopped) return;
        const at = settings.sentinels[next++ % settings.sentinels.length];
        let c: RespConnection | undefined;
        try {
          c = await connect(at);
          if (stopped) return c.close();
          conn = c;
          const mine = c;
          c.onEnd = () => {
            if (conn === mine) conn = null;
            if (!stopped) timer = setTimeout(() => void subscribe(), RESUBSCRIBE_MS);
          };
          c.onPush = (msg) => {
            if (!Array.isArray(msg) || msg[0] !== 'message' || typeof msg[1] !== 'string' || typeof msg[2] !== 'string') return;
            const words = msg[2].split(' ');
            if (msg[1] === '+switch-master') {
              if (words[0] !== master) return;
              const primary = address(words[3], words[4]);
              // A primary service takes the new primary from the message itself; confirmed by the next ask.
              if (role === 'primary' && typeof primary !== 'string') push({ backends: backendList([primary]), notes: [] });
              else push(null);
            } else if (words.includes(master)) {
              push(null);
            }
          };
          // One confirmation per channel: the first answers the command, the others reach onPush
          // (not messages: ignored). Then ask: events may have been missed while not subscribed.
          await c.command(['SUBSCRIBE', ...EVENTS], timeout);
          push(null);
        } catch {
          // A connection that opened ends through onEnd, which subscribes again; one that did not, here.
          if (c) c.close();
          else if (!stopped) timer = setTimeout(() => void subscribe(), RESUBSCRIBE_MS);
        }
      };
      void subscribe();
      return () => {
        stopped = true;
        clearTimeout(timer);
        conn?.close();
      };
    },
  };
}
