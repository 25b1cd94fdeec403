/**
 * The heartbeat: one small authenticated UDP datagram from each instance to the other every
 * advert interval. Control path (a few packets a second): written for clarity, not speed.
 *
 * Wire format, version 1, big-endian, exactly 64 bytes:
 *
 *    0        4     5      6      7      8          12         16                    24          28     30       32                      64
 *    ┌────────┬─────┬──────┬──────┬──────┬──────────┬──────────┬─────────────────────┬───────────┬──────┬────────┬───────────────────────┐
 *    │ magic  │ ver │ role │ prio │ flags│  epoch   │ counter  │ timestamp (ms, u64) │ sender ip │ port │ ivl ms │ HMAC-SHA256(bytes 0–31)│
 *    └────────┴─────┴──────┴──────┴──────┴──────────┴──────────┴─────────────────────┴───────────┴──────┴────────┴───────────────────────┘
 *
 *  - magic "FLCR", version 1; role is the sender's state (1 init, 2 backup, 3 master, 4 fault);
 *    prio 0–254 (0 = a master resigning); flags reserved (0).
 *  - sequence = (epoch, counter): epoch is random per process start (a process started by
 *    `fulcrum upgrade` goes on with its predecessor's epoch and counter), counter starts at 1 and only
 *    grows, so a receiver rejects any packet whose counter is not greater than the last one it
 *    accepted in that epoch (replay), and remembers epochs it has moved away from.
 *  - timestamp is the sender's wall clock (Date.now()); see `staleWindowMs` for the window.
 *  - sender ip/port: the sender's ha.bind; must equal the configured ha.peer (and the datagram's
 *    source address), so a packet from ourselves or from a third instance is not acted on.
 *  - ivl: the sender's advert interval in ms (RFC 5798 §6.4.2: backups learn the master's).
 *  - the MAC covers bytes 0–31 with the key from ha.secret_file, compared in constant time.
 *
 * Checks run cheapest-first and the MAC before anything that reads meaning from the packet:
 * size (malformed = truncated, oversized) → magic → version → MAC → field sanity (malformed) →
 * sender → staleness → replay. A dropped packet is counted by reason and never reaches the FSM.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { EventEmitter } from 'node:events';
import { formatHostPort } from '../config/schema.ts';
import type { Logger } from '../observability/log.ts';
import { readSecretFileSync, SecretFileError } from '../config/secrets.ts';
import { HaBindError } from './errors.ts';
import { intToIpv4, ROLES, type Role } from './fsm.ts';

export const HEARTBEAT_MAGIC = 0x464c4352; // "FLCR"
export const HEARTBEAT_VERSION = 1;
export const PACKET_SIZE = 64;
const MAC_OFFSET = 32;
const MAC_SIZE = 32;
/** Shortest key accepted from ha.secret_file (HMAC-SHA256 keys should carry ≥ 128 bits). */
export const MIN_SECRET_BYTES = 16;

export const DROP_REASONS = ['malformed', 'bad_magic', 'bad_version', 'bad_mac', 'replayed', 'stale', 'oversized', 'wrong_sender'] as const;
export type DropReason = (typeof DROP_REASONS)[number];

export interface Advert {
  role: Role;
  priority: number;
  epoch: number;
  counter: number;
  timestampMs: number;
  /** The sender's heartbeat address as a 32-bit integer, and its port. */
  senderAddress: number;
  senderPort: number;
  intervalMs: number;
}

const ROLE_CODE: Record<Role, number> = { init: 1, backup: 2, master: 3, fault: 4 };

export function encodeAdvert(a: Advert, key: Buffer): Buffer {
  const buf = Buffer.alloc(PACKET_SIZE);
  buf.writeUInt32BE(HEARTBEAT_MAGIC, 0);
  buf.writeUInt8(HEARTBEAT_VERSION, 4);
  buf.writeUInt8(ROLE_CODE[a.role], 5);
  buf.writeUInt8(a.priority, 6);
  buf.writeUInt8(0, 7);
  buf.writeUInt32BE(a.epoch >>> 0, 8);
  buf.writeUInt32BE(a.counter >>> 0, 12);
  buf.writeBigUInt64BE(BigInt(Math.max(0, Math.floor(a.timestampMs))), 16);
  buf.writeUInt32BE(a.senderAddress >>> 0, 24);
  buf.writeUInt16BE(a.senderPort, 28);
  buf.writeUInt16BE(Math.min(0xffff, a.intervalMs), 30);
  mac(key, buf.subarray(0, MAC_OFFSET)).copy(buf, MAC_OFFSET);
  return buf;
}

function mac(key: Buffer, data: Buffer): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

/** Structure and authenticity only (no sender, time or replay checks: those need state). */
export function decodeAdvert(buf: Buffer, key: Buffer): Advert | DropReason {
  if (buf.length < PACKET_SIZE) return 'malformed';
  if (buf.length > PACKET_SIZE) return 'oversized';
  if (buf.readUInt32BE(0) !== HEARTBEAT_MAGIC) return 'bad_magic';
  if (buf.readUInt8(4) !== HEARTBEAT_VERSION) return 'bad_version';
  const expected = mac(key, buf.subarray(0, MAC_OFFSET));
  if (!timingSafeEqual(expected, buf.subarray(MAC_OFFSET, MAC_OFFSET + MAC_SIZE))) return 'bad_mac';
  const roleCode = buf.readUInt8(5);
  const priority = buf.readUInt8(6);
  const counter = buf.readUInt32BE(12);
  const intervalMs = buf.readUInt16BE(30);
  // Authentic but nonsensical: a peer with a bug, or a different build; never act on it.
  if (roleCode < 1 || roleCode > ROLES.length || priority > 254 || buf.readUInt8(7) !== 0 || counter === 0 || intervalMs === 0) return 'malformed';
  return {
    role: ROLES[roleCode - 1],
    priority,
    epoch: buf.readUInt32BE(8),
    counter,
    timestampMs: Number(buf.readBigUInt64BE(16)),
    senderAddress: buf.readUInt32BE(24),
    senderPort: buf.readUInt16BE(28),
    intervalMs,
  };
}

/**
 * How far a heartbeat's timestamp may be from our clock before it is dropped as stale.
 *
 * The timestamp guards what the sequence number cannot: replays after *this* instance restarts
 * (its replay state is gone) and replays of epochs it has forgotten. Two forces pull on the width:
 *  - narrower limits how long a captured packet stays usable: a replayed "master alive" advert
 *    can delay a takeover by at most the window;
 *  - wider tolerates wall clocks that disagree. If the two hosts' clocks differ by more than the
 *    window, *every* heartbeat is dropped as stale, each side thinks the other is dead, and both
 *    take the VIP: a split brain. That failure is far worse than a short replay window.
 * So: dead_after × advert_interval (a heartbeat older than that would not have kept the peer
 * alive anyway) plus ha.max_clock_skew (default 2 s; NTP keeps hosts within milliseconds). Stale
 * drops are logged as a warning with the measured offset so a drifting clock is seen early.
 */
export function staleWindowMs(deadAfter: number, advertIntervalMs: number, maxClockSkewMs: number): number {
  return deadAfter * advertIntervalMs + maxClockSkewMs;
}

/** How many epochs a receiver remembers having left (a restarting peer makes one per start). */
const RETIRED_EPOCHS = 64;

/**
 * Per-sender replay state: the current epoch, the last counter and timestamp accepted in it, and
 * the epochs we have moved away from. A new epoch (the peer restarted) is accepted once it is
 * fresh and not older than the last packet accepted; its predecessor is retired, so old packets
 * cannot flip us back to it.
 *
 * The timestamp order matters for epochs never seen: a run of the peer from before the one we
 * follow (captured while we were down or cut off, or held back by the network) is not in
 * `retired`, and taking it for a restart would retire the live epoch — every genuine heartbeat
 * after it dropped as replayed, the peer declared dead, both instances masters. A restarted
 * peer's packets are newer than everything its previous run sent. (A peer whose clock steps back
 * as it restarts is heard again once its clock passes its last packet: at most the stale window.)
 */
export class ReplayGuard {
  private epoch = -1;
  private lastCounter = 0;
  private lastTimestampMs = 0;
  private readonly retired = new Set<number>();

  check(a: Advert): 'ok' | 'replayed' {
    if (a.epoch === this.epoch) return a.counter > this.lastCounter ? 'ok' : 'replayed';
    if (this.retired.has(a.epoch)) return 'replayed';
    return this.epoch !== -1 && a.timestampMs < this.lastTimestampMs ? 'replayed' : 'ok';
  }

  /** Call only after every other check passed. */
  accept(a: Advert): void {
    if (a.epoch !== this.epoch) {
      if (this.epoch !== -1) {
        this.retired.add(this.epoch);
        if (this.retired.size > RETIRED_EPOCHS) this.retired.delete(this.retired.values().next().value as number);
      }
      this.epoch = a.epoch;
    }
    this.lastCounter = a.counter;
    this.lastTimestampMs = a.timestampMs;
  }
}

/** Reads the HMAC key from ha.secret_file (config/secrets.ts's rule), at least MIN_SECRET_BYTES long. */
export function readSecret(file: string): Buffer {
  const key = readSecretFileSync('ha.secret_file', file);
  if (key.length < MIN_SECRET_BYTES) throw new SecretFileError('ha.secret_file', file, `must hold at least ${MIN_SECRET_BYTES} bytes of key, has ${key.length}`);
  return key;
}

export interface HeartbeatOptions {
  bind: { host: string; port: number };
  peer: { host: string; port: number };
  /** bind.host and peer.host as 32-bit integers. */
  bindAddress: number;
  peerAddress: number;
  key: Buffer;
  advertIntervalMs: number;
  /** Width of the accepted timestamp window either side of now (see staleWindowMs). */
  staleWindowMs: number;
  logger: Logger;
  /** Wall clock (for timestamps); tests may shift it to play a skewed peer. */
  now?: () => number;
  /**
   * Go on with another process's sequence (`fulcrum upgrade`): its epoch, and the last counter it
   * sent; the next heartbeat carries counter + 1, which the peer's ReplayGuard accepts in the same
   * epoch. Without it: a new random epoch, as every start (the peer takes it for a restart).
   */
  sequence?: HeartbeatSequence;
}

/** Where a heartbeat's sequence stands: its epoch and the last counter sent (0: none yet). */
export interface HeartbeatSequence {
  epoch: number;
  counter: number;
}

export interface HeartbeatEvents {
  advert: [advert: Advert, from: RemoteInfo];
  drop: [reason: DropReason, from: RemoteInfo];
}

/**
 * The UDP endpoint: sends our heartbeats, validates the peer's and emits 'advert' only for those
 * that pass every check; everything else is counted in `dropped` and emitted as 'drop'.
 */
export class Heartbeat extends EventEmitter<HeartbeatEvents> {
  readonly dropped: Record<DropReason, number>;
  sent = 0;
  received = 0;
  readonly epoch: number;
  private counter = 0;
  private socket: Socket | null = null;
  private readonly guard = new ReplayGuard();
  private readonly opts: HeartbeatOptions;
  private readonly log: Logger;
  private readonly now: () => number;
  private lastStaleWarn = -Infinity;

  constructor(opts: HeartbeatOptions) {
    super();
    this.opts = opts;
    this.log = opts.logger;
    this.now = opts.now ?? Date.now;
    this.epoch = opts.sequence?.epoch ?? randomBytes(4).readUInt32BE(0);
    this.counter = opts.sequence?.counter ?? 0;
    this.dropped = Object.fromEntries(DROP_REASONS.map((r) => [r, 0])) as Record<DropReason, number>;
  }

  /** A reload's advert interval (carried in every heartbeat) and stale window; key and socket stay. */
  retime(advertIntervalMs: number, staleWindowMs: number): void {
    this.opts.advertIntervalMs = advertIntervalMs;
    this.opts.staleWindowMs = staleWindowMs;
  }

  async start(): Promise<void> {
    const socket = createSocket({ type: 'udp4' });
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(this.opts.bind.port, this.opts.bind.host, () => {
        socket.off('error', reject);
        resolve();
      });
    }).catch((err) => {
      socket.close();
      throw new HaBindError(formatHostPort(this.opts.bind), err);
    });
    socket.on('error', (err) => this.log.warn({ err: err.message }, 'heartbeat socket error'));
    socket.on('message', (msg, rinfo) => this.onMessage(msg, rinfo));
    this.socket = socket;
  }

  /** The epoch and the last counter sent: what a process that takes over this heartbeat goes on from. */
  sequence(): HeartbeatSequence {
    return { epoch: this.epoch, counter: this.counter };
  }

  /** The port actually bound (ha.bind may say 0 in tests). */
  port(): number {
    return this.socket?.address().port ?? this.opts.bind.port;
  }

  /** Sends one heartbeat now; resolves when handed to the kernel (errors are logged, not thrown). */
  send(role: Role, priority: number): Promise<void> {
    const socket = this.socket;
    if (!socket) return Promise.resolve();
    this.counter = (this.counter + 1) >>> 0;
    const packet = encodeAdvert({
      role, priority, epoch: this.epoch, counter: this.counter, timestampMs: this.now(),
      senderAddress: this.opts.bindAddress, senderPort: this.port(), intervalMs: this.opts.advertIntervalMs,
    }, this.opts.key);
    return new Promise((resolve) => {
      socket.send(packet, this.opts.peer.port, this.opts.peer.host, (err) => {
        if (err) this.log.debug({ err: err.message }, 'heartbeat send failed');
        else this.sent++;
        resolve();
      });
    });
  }

  close(): void {
    this.socket?.close();
    this.socket = null;
  }

  /** Every datagram that reaches the port goes through here; only valid adverts leave it. */
  private onMessage(msg: Buffer, from: RemoteInfo): void {
    const decoded = decodeAdvert(msg, this.opts.key);
    if (typeof decoded === 'string') return this.drop(decoded, from);
    const a = decoded;
    if (a.senderAddress !== this.opts.peerAddress || a.senderPort !== this.opts.peer.port || from.address !== intToIpv4(this.opts.peerAddress)) {
      return this.drop('wrong_sender', from);
    }
    const offset = a.timestampMs - this.now();
    if (Math.abs(offset) > this.opts.staleWindowMs) {
      const t = performance.now();
      if (t - this.lastStaleWarn > 10_000) {
        this.lastStaleWarn = t;
        this.log.warn({ offset_ms: offset, window_ms: this.opts.staleWindowMs, from: from.address },
          'heartbeat dropped as stale: its timestamp is outside the window; check both hosts\' clocks (NTP)');
      }
      return this.drop('stale', from);
    }
    if (this.guard.check(a) === 'replayed') return this.drop('replayed', from);
    this.guard.accept(a);
    this.received++;
    this.emit('advert', a, from);
  }

  private drop(reason: DropReason, from: RemoteInfo): void {
    this.dropped[reason]++;
    this.log.debug({ reason, from: `${from.address}:${from.port}`, size: from.size }, 'heartbeat dropped');
    this.emit('drop', reason, from);
  }
}
