/**
 * `fulcrum upgrade` (POST /api/upgrade, `fulcrum ctl upgrade`) and SIGUSR2: the running fulcrum
 * starts the next one from the current install and hands it its listening sockets, as HAProxy's
 * `expose-fd listeners` and nginx's USR2 do, so no connection is refused or reset on the way.
 *
 *   old                                             new (same node, same entry, same argv)
 *   spawn, detached, stdio inherited, + ipc ──────▶ cli `run` sees FULCRUM_UPGRADE_FROM
 *   per worker, per service: its listener's fd ───▶ collected (receiveHandover)
 *   the admin server's listening socket         ───▶ the admin server listens on it
 *   the carried state (./carry.ts)              ───▶ the balancer and health monitor start from it
 *                                                    workers adopt the sockets (same socket, same
 *                                                    queue), extra workers bind their own
 *                                                    (SO_REUSEPORT), first health round
 *                                               ◀─── with `ha`: its failover thread loaded, it asks
 *   abandon the failover: one last heartbeat,        for the failover (fulcrum-ha-request)
 *   then silent (no priority 0, VIP kept)  ───────▶ its failover continues: same role, heartbeat
 *                                                    epoch, next counter; first heartbeat at once
 *   stop accepting, drain up to shutdown_grace ◀─── ready
 *   exit, without resigning the pair or withdrawing routes (main.ts stop, `handover`)
 *
 * The failover moves last and in one step so the pair sees no gap and no second sender: the old
 * one's last heartbeat and the new one's first are a few messages apart (a thread, this channel,
 * a thread: milliseconds; the new thread was started before it asked), far inside the peer's
 * Master_Down_Interval (dead_after × advert_interval + skew), and the new counter follows the last
 * one the peer accepted. If the upgrade fails after that, the old failover resumes (a fresh epoch:
 * the peer takes it for a restart, and nothing of the failed process's sequence can shadow it).
 *
 * If the new process fails first (a broken config, a crash, no `ready` within READY_TIMEOUT_MS),
 * the old one keeps serving and the caller gets the reason (UpgradeError): nothing of the old was
 * touched, since both hold the same sockets and the new one's copies close with it; a failover it
 * had abandoned resumes once the new process is gone.
 *
 * How the descriptors travel: Node's IPC channel (the 'ipc' stdio of child_process.spawn) sends
 * a handle with SCM_RIGHTS (libuv's uv_write2), the only way Node itself has to pass an fd to
 * another process. The data plane's listeners are the workers' (each worker thread has its own
 * SO_REUSEPORT listener per service; on the relay path made in C), but descriptors belong to the
 * process: the workers report their fds, and this thread wraps each in a libuv handle of its own
 * (tcp_wrap / udp_wrap `open(fd)`, nothing polled) only to send it. A sendFds in the C addon would
 * need the relay built, and the JavaScript data path must upgrade without it; this one path serves both.
 *
 * Those wrapping handles are never closed (kept in `neverClosed`): the fd stays the worker's, which
 * closes it when it stops listening; closing the wrapper too would close whatever socket has that
 * number by then. On the receiving side the same holds for sockets a worker adopted; the ones no
 * worker took (fewer workers now, a service moved or paused) are closed once the new one is ready.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Server } from 'node:net';
import { FulcrumError } from '../errors.ts';
import type { Logger } from '../observability/log.ts';
import type { HandedListener } from '../proxy/messages.ts';
import type { FailoverCarry } from '../failover/index.ts';
import type { CarriedState } from './carry.ts';

/** Set in the new process's environment to the old one's pid: `fulcrum run` then waits for the hand-over first. */
export const UPGRADE_ENV = 'FULCRUM_UPGRADE_FROM';
/** How long the old process waits for the new one's `ready` (config load, listeners, first health round). */
export const READY_TIMEOUT_MS = 60_000;

export class UpgradeError extends FulcrumError {
  constructor(message: string) {
    super('FULCRUM_ERR_UPGRADE', message);
  }
}

interface HandleBinding {
  new (type?: number): { open(fd: number): number; close(): void; readonly fd: number };
}
const binding = (name: string): Record<string, unknown> => (process as unknown as { binding(n: string): Record<string, unknown> }).binding(name);
const tcpWrap = binding('tcp_wrap') as { TCP: HandleBinding; constants: { SERVER: number } };
const udpWrap = binding('udp_wrap') as { UDP: HandleBinding };

/** Handles wrapping a worker's fd to send it: never closed (the header says why). */
const neverClosed: unknown[] = [];

// ── messages on the IPC channel ───────────────────────────────────────────────

type ToNew =
  | { type: 'fulcrum-listener'; worker: number; listener: HandedListener }
  | { type: 'fulcrum-admin-listener' }
  | { type: 'fulcrum-handle'; name: string }
  | { type: 'fulcrum-state'; state: CarriedState }
  | { type: 'fulcrum-handover-done' }
  | { type: 'fulcrum-ha'; ha: FailoverCarry }
  | { type: 'fulcrum-ha-refused'; reason: string };
type ToOld = { type: 'fulcrum-ready'; pid: number } | { type: 'fulcrum-failed'; reason: string } | { type: 'fulcrum-ha-request' };

/** What the old process gives for an upgrade. */
export interface UpgradeSource {
  /** The workers' listening sockets, by worker id (pool.listenerFds). */
  listeners(): Promise<HandedListener[][]>;
  /** The admin server's listening socket, if there is one (its libuv handle). */
  adminHandle(): object | undefined;
  state(): CarriedState;
  /** The failover (config.ha): abandoned when the new process asks for it, resumed if the upgrade fails after. */
  failover?: { abandon(): Promise<FailoverCarry>; resume(): Promise<void> };
  /**
   * Other descriptors the new process takes over, by name (bgp: gobgpd's liveness pipe and its
   * stderr, src/bgp/gobgp.ts): libuv handles, sent as they are. Asked right after state(), so both
   * describe the same moment.
   */
  handles?(): { name: string; handle: object }[];
  logger: Logger;
}

/**
 * Starts the new process and hands it everything; resolves with its pid once it reported ready
 * (then the caller stops accepting and drains). Rejects with UpgradeError saying why it did not,
 * after making sure the new process is gone.
 */
export async function startUpgrade(source: UpgradeSource, options: { timeoutMs?: number } = {}): Promise<{ pid: number }> {
  const log = source.logger.child({ component: 'upgrade' });
  const listeners = await source.listeners();
  // The same Node, its flags and the same entry and arguments: whatever is installed now at that
  // path (the new code) runs with the same config file.
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    detached: true, // its own session: a signal to the old one's process group does not reach it
    stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
    env: { ...process.env, [UPGRADE_ENV]: String(process.pid) },
  });
  log.info({ pid: child.pid, argv: process.argv.slice(1) }, `upgrade: started the new fulcrum (pid ${child.pid}), handing over ${listeners.flat().length} listening sockets`);
  const outcome = waitForReady(child, options.timeoutMs ?? READY_TIMEOUT_MS);
  // Awaited below, after the hand-over; a new process that dies during it rejects this first,
  // which must not count as unhandled (that would end this process, the one that keeps serving).
  outcome.catch(() => undefined);
  // The failover, when the new one asks (its thread is loaded by then): abandoned here, continued there.
  let abandoning: Promise<unknown> | null = null;
  const onHaRequest = (msg: ToOld): void => {
    if (msg?.type !== 'fulcrum-ha-request' || abandoning !== null) return;
    const failover = source.failover;
    // Settles with the abandon (bounded: FailoverThread.abandon's wait), not with the send: a new
    // process gone meanwhile is `outcome`'s to report.
    abandoning = (failover ? failover.abandon() : Promise.reject(new Error('this fulcrum runs no failover'))).then(
      (ha) => void send(child, { type: 'fulcrum-ha', ha }).catch(() => undefined),
      (err: Error) => void send(child, { type: 'fulcrum-ha-refused', reason: `the failover could not be handed over: ${err.message}` }).catch(() => undefined),
    );
  };
  child.on('message', onHaRequest);
  // Sent in order; not awaited as such: a new process that dies takes its pending messages with it
  // (their callbacks never run), and `outcome` says so.
  void (async () => {
    for (const [worker, list] of listeners.entries()) {
      for (const listener of list ?? []) {
        const handle = listener.protocol === 'udp' ? new udpWrap.UDP() : new tcpWrap.TCP(tcpWrap.constants.SERVER);
        const err = handle.open(listener.fd);
        if (err !== 0) throw new UpgradeError(`cannot wrap the listener of service ${listener.service} (fd ${listener.fd}): errno ${err}`);
        neverClosed.push(handle);
        await send(child, { type: 'fulcrum-listener', worker, listener }, handle);
      }
    }
    const admin = source.adminHandle();
    if (admin !== undefined) await send(child, { type: 'fulcrum-admin-listener' }, admin);
    const state = source.state();
    for (const h of source.handles?.() ?? []) await send(child, { type: 'fulcrum-handle', name: h.name }, h.handle);
    await send(child, { type: 'fulcrum-state', state });
    await send(child, { type: 'fulcrum-handover-done' });
  })().catch((err: Error) => {
    log.error({ pid: child.pid, err: err.message }, `upgrade: the hand-over failed: ${err.message}`);
    kill(child);
  });
  try {
    const pid = await outcome;
    log.info({ pid }, `upgrade: the new fulcrum (pid ${pid}) is ready; this one (pid ${process.pid}) stops accepting and drains`);
    return { pid };
  } catch (err) {
    log.error({ pid: child.pid, reason: (err as Error).message }, `upgrade failed, this fulcrum keeps serving: ${(err as Error).message}`);
    // The new process is gone (waitForReady made sure): a failover it was given runs here again.
    if (abandoning !== null) {
      await abandoning;
      await source.failover?.resume().catch((e: Error) => log.error({ err: e.message }, `upgrade failed and the failover did not resume: ${e.message}`));
    }
    throw err;
  } finally {
    child.off('message', onHaRequest);
    // The new one runs on its own from here: no channel, nothing of it keeps this process alive.
    if (child.connected) child.disconnect();
    child.unref();
  }
}

function send(child: ChildProcess, msg: ToNew, handle?: object): Promise<void> {
  return new Promise((resolve, reject) => {
    // keepOpen: a net.Server sent (the admin server's) stays open here until the old one stops.
    child.send(msg, handle as Server | undefined, { keepOpen: true }, (err) => (err ? reject(err) : resolve()));
  });
}

function kill(child: ChildProcess): void {
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
}

/** The new process's pid once it says ready; rejects with why not (it failed, exited, or took too long). */
function waitForReady(child: ChildProcess, timeoutMs: number): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    let reason = '';
    const done = (err: UpgradeError | null): void => {
      clearTimeout(timer);
      child.off('message', onMessage);
      child.off('exit', onExit);
      child.off('error', onError);
      if (err === null) resolve(child.pid!);
      else {
        kill(child);
        reject(err);
      }
    };
    const onMessage = (msg: ToOld): void => {
      if (msg?.type === 'fulcrum-ready') done(null);
      else if (msg?.type === 'fulcrum-failed') reason = msg.reason;
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      const how = signal !== null ? `was killed by ${signal}` : `exited with code ${code}`;
      done(new UpgradeError(`the new fulcrum (pid ${child.pid}) ${how} before it was ready${reason ? `: ${reason}` : ' (its log says why)'}`));
    };
    const onError = (err: Error): void => done(new UpgradeError(`the new fulcrum could not be started: ${err.message}`));
    const timer = setTimeout(() => done(new UpgradeError(`the new fulcrum (pid ${child.pid}) was not ready within ${timeoutMs} ms${reason ? `: ${reason}` : ''}; it was stopped`)), timeoutMs);
    child.on('message', onMessage);
    child.once('exit', onExit);
    child.once('error', onError);
  });
}

// ── the new process's side ────────────────────────────────────────────────────

/** What the new process received. */
export interface Handover {
  fromPid: number;
  /** By worker id, as the old workers listened (fds in this process). */
  listeners: HandedListener[][];
  /** The admin server's listening socket (a libuv handle for server.listen), if one was handed. */
  admin: object | undefined;
  /** UpgradeSource.handles, by name (libuv handles in this process). */
  handles: ReadonlyMap<string, object>;
  state: CarriedState;
  /**
   * Asks the old process for its failover (it abandons it) and resolves with what this one
   * continues from (also kept as state.ha); rejects with the reason it was not handed over.
   */
  takeFailover(): Promise<FailoverCarry>;
  /** Closes the handed sockets no worker adopted (`inUse`: the fds the workers listen on now). */
  closeUnused(inUse: Set<number>): number;
}

/** This process was started by `fulcrum upgrade`: the old one's pid, else null. Read once (a later upgrade sets its own). */
export function upgradeParent(): number | null {
  const from = process.env[UPGRADE_ENV];
  delete process.env[UPGRADE_ENV];
  if (from === undefined || typeof process.send !== 'function') return null;
  return Number(from);
}

/** Collects what the old process sends, up to its `done`; rejects if the channel closes first or nothing comes in time. */
export function receiveHandover(fromPid: number, timeoutMs = READY_TIMEOUT_MS): Promise<Handover> {
  return new Promise((resolve, reject) => {
    const listeners: HandedListener[][] = [];
    const handles = new Map<number, { close(): void }>();
    let admin: object | undefined;
    const named = new Map<string, object>();
    let state: CarriedState | undefined;
    const finish = (err: Error | null): void => {
      clearTimeout(timer);
      process.off('message', onMessage);
      process.off('disconnect', onDisconnect);
      if (err !== null) return reject(err);
      resolve({
        fromPid, listeners, admin, handles: named, state: state!,
        async takeFailover() {
          const ha = await requestFailover(fromPid, timeoutMs);
          state!.ha = ha;
          return ha;
        },
        closeUnused(inUse) {
          let closed = 0;
          for (const [fd, handle] of handles) {
            if (inUse.has(fd)) continue; // a worker's now (the header says why it is not closed here)
            handle.close();
            closed++;
          }
          handles.clear();
          return closed;
        },
      });
    };
    const onMessage = (msg: ToNew, handle?: { fd: number; close(): void }): void => {
      switch (msg?.type) {
        case 'fulcrum-listener':
          if (handle === undefined) return;
          // Its number here, not in the old process: what the workers adopt.
          (listeners[msg.worker] ??= []).push({ ...msg.listener, fd: handle.fd });
          handles.set(handle.fd, handle);
          neverClosed.push(handle);
          break;
        case 'fulcrum-admin-listener':
          admin = handle;
          break;
        case 'fulcrum-handle':
          if (handle !== undefined) named.set(msg.name, handle);
          break;
        case 'fulcrum-state':
          state = msg.state;
          break;
        case 'fulcrum-handover-done':
          if (state === undefined) finish(new UpgradeError('the old fulcrum sent no state'));
          else finish(null);
          break;
      }
    };
    const onDisconnect = (): void => finish(new UpgradeError(`the old fulcrum (pid ${fromPid}) closed the channel before the hand-over was complete`));
    const timer = setTimeout(() => finish(new UpgradeError(`no hand-over from the old fulcrum (pid ${fromPid}) within ${timeoutMs} ms`)), timeoutMs);
    process.on('message', onMessage);
    process.once('disconnect', onDisconnect);
  });
}

/** The old process's failover, asked for once this one's failover thread waits for it. */
function requestFailover(fromPid: number, timeoutMs: number): Promise<FailoverCarry> {
  return new Promise((resolve, reject) => {
    const finish = (err: Error | null, ha?: FailoverCarry): void => {
      clearTimeout(timer);
      process.off('message', onMessage);
      process.off('disconnect', onDisconnect);
      if (err !== null) reject(err);
      else resolve(ha!);
    };
    const onMessage = (msg: ToNew): void => {
      if (msg?.type === 'fulcrum-ha') finish(null, msg.ha);
      else if (msg?.type === 'fulcrum-ha-refused') finish(new UpgradeError(msg.reason));
    };
    const onDisconnect = (): void => finish(new UpgradeError(`the old fulcrum (pid ${fromPid}) closed the channel before it handed over its failover`));
    const timer = setTimeout(() => finish(new UpgradeError(`the old fulcrum (pid ${fromPid}) did not hand over its failover within ${timeoutMs} ms`)), timeoutMs);
    process.on('message', onMessage);
    process.once('disconnect', onDisconnect);
    process.send?.({ type: 'fulcrum-ha-request' } satisfies ToOld);
  });
}

/** Tells the old process this one serves (it then stops accepting); the channel is not needed after. */
export function reportReady(): void {
  process.send?.({ type: 'fulcrum-ready', pid: process.pid } satisfies ToOld, () => process.disconnect?.());
}

/** Tells the old process why this one could not start (it keeps serving and reports it). */
export function reportFailed(reason: string): Promise<void> {
  return new Promise((resolve) => {
    if (typeof process.send !== 'function' || !process.connected) return resolve();
    process.send({ type: 'fulcrum-failed', reason } satisfies ToOld, () => resolve());
  });
}
