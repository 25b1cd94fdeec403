/**
 * systemd's notify protocol (sd_notify(3)) for `fulcrum run` under a `Type=notify` unit
 * (packaging/fulcrum.service): READY=1 once started, RELOADING=1 … READY=1 around a SIGHUP
 * reload, STOPPING=1 when the stop begins, WATCHDOG=1 every half of $WATCHDOG_USEC, and
 * MAINPID=<pid> for a process that takes over from another (`fulcrum upgrade`).
 *
 * The protocol is one datagram per message on the AF_UNIX socket named by $NOTIFY_SOCKET (a path,
 * or "@name" for an abstract name). Node's dgram has no AF_UNIX sockets, so the datagram is sent:
 *  1. by the native relay's notify() (src/proxy/relay/relay.c, ~30 lines), from this process's
 *     own PID: systemd accepts it with any NotifyAccess, and a message costs one system call —
 *     the watchdog sends one every few seconds for the life of the process;
 *  2. without a relay (not built, FULCRUM_RELAY=off), by systemd-notify(1): a process per
 *     message, sent from that process's PID, so the unit needs NotifyAccess=all (ours has it, for
 *     `fulcrum upgrade` too). systemd-notify waits until the manager has read the message (its
 *     barrier), so systemd can still tell which unit the short-lived sender belonged to. Messages
 *     are sent one at a time, in order.
 * Neither: the problem is logged once, as an error (systemd will time out the start).
 *
 * The watchdog is fed from a timer on the main thread's event loop: a main thread that hangs
 * stops feeding it and systemd restarts the service (WatchdogSec=). Its interval comes from the
 * environment systemd sets ($WATCHDOG_USEC; $WATCHDOG_PID, when set, names the process meant).
 * Control-plane only: a handful of messages over the life of the process, and one per watchdog
 * tick; never on a hot path.
 */
import { execFile } from 'node:child_process';
import type { Logger } from '../observability/log.ts';
import { loadRelay } from '../proxy/relay.ts';

/** How a message is put on the socket: the relay's notify(), systemd-notify, or nothing. */
type Send = (message: string) => Promise<void>;

export interface Notifier {
  /** How messages are sent: 'relay' or 'systemd-notify' (for logs and tests). */
  readonly via: string;
  /** READY=1 (also after a reload: with RELOADING=1 before it). */
  ready(status?: string): void;
  /** RELOADING=1 (and the monotonic time, which Type=notify-reload wants). */
  reloading(): void;
  /** STOPPING=1; the watchdog stops with it. */
  stopping(): void;
  /**
   * MAINPID=<pid> (default: this process): a process that took over (`fulcrum upgrade`) names
   * itself as the unit's main process, and from then on feeds the watchdog (WATCHDOG_PID named
   * the old one).
   */
  mainPid(pid?: number): void;
  /** Stops the watchdog timer (a process handing over stops feeding it); no message is sent. */
  close(): void;
  /**
   * Resolves once every message asked for so far has been sent (or failed): a stop awaits it
   * before the process exits, so STOPPING=1 through systemd-notify, queued behind a watchdog
   * tick, is not lost with the process.
   */
  settled(): Promise<void>;
}

/** The watchdog period from the environment systemd sets, in ms: half of WATCHDOG_USEC; undefined when not meant for `pid`. */
export function watchdogIntervalMs(env: NodeJS.ProcessEnv, pid = process.pid): number | undefined {
  const usec = Number(env.WATCHDOG_USEC);
  if (!Number.isSafeInteger(usec) || usec <= 0) return undefined;
  if (env.WATCHDOG_PID !== undefined && env.WATCHDOG_PID !== '' && Number(env.WATCHDOG_PID) !== pid) return undefined;
  return Math.max(1, Math.floor(usec / 2000));
}

/** CLOCK_MONOTONIC in µs (process.hrtime reads that clock on Linux), as RELOADING=1's MONOTONIC_USEC. */
const monotonicUsec = (): bigint => process.hrtime.bigint() / 1000n;

/** The relay's notify() when the relay loads, else systemd-notify; with the reason when neither. */
function sender(socketPath: string, env: NodeJS.ProcessEnv, log: Logger): { via: string; send: Send } {
  const relay = loadRelay(env);
  if (typeof relay !== 'string') {
    return {
      via: 'relay',
      send: (message) => {
        const rc = relay.notify(socketPath, message);
        return rc === 0 ? Promise.resolve() : Promise.reject(new Error(`sendto ${socketPath}: errno ${-rc}`));
      },
    };
  }
  log.debug({ relay }, 'sd_notify through systemd-notify: the relay is not loaded');
  // One at a time, so RELOADING=1 never overtakes the READY=1 before it.
  let queue = Promise.resolve();
  return {
    via: 'systemd-notify',
    send: (message) => {
      const run = queue.then(() => new Promise<void>((resolve, reject) => {
        execFile('systemd-notify', message.split('\n'), { env: { ...env, NOTIFY_SOCKET: socketPath }, timeout: 5000 }, (err, _out, stderr) => {
          if (err) reject(new Error(`systemd-notify: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'not installed (apt-get install systemd)' : stderr.trim() || err.message}`));
          else resolve();
        });
      }));
      queue = run.catch(() => undefined);
      return run;
    },
  };
}

/**
 * The notifier for this process, or null when $NOTIFY_SOCKET is not set (not under a
 * Type=notify unit). Starts feeding the watchdog at once when $WATCHDOG_USEC is meant for us.
 */
export function systemdNotifier(logger: Logger, env: NodeJS.ProcessEnv = process.env): Notifier | null {
  const socketPath = env.NOTIFY_SOCKET;
  if (socketPath === undefined || socketPath === '') return null;
  const log = logger.child({ component: 'notify' });
  const { via, send } = sender(socketPath, env, log);
  let failed = false;
  // After STOPPING=1 only MAINPID may follow: a reload that ends during the stop says nothing.
  let stopping = false;
  let last: Promise<void> = Promise.resolve();
  const notify = (message: string): void => {
    if (stopping && !message.startsWith('MAINPID=')) return;
    last = send(message).then(() => void (failed = false), (err: Error) => {
      // Once per run of failures: a watchdog tick that fails would otherwise log every few seconds.
      if (failed) return;
      failed = true;
      log.error({ socket: socketPath, message: message.split('\n')[0], err: err.message }, 'cannot notify systemd (NOTIFY_SOCKET)');
    });
  };

  let timer: NodeJS.Timeout | undefined;
  const feed = (interval: number | undefined): void => {
    clearInterval(timer);
    if (interval === undefined) return;
    timer = setInterval(() => notify('WATCHDOG=1'), interval);
    // The watchdog must not keep a stopped fulcrum alive.
    timer.unref();
    notify('WATCHDOG=1');
  };
  feed(watchdogIntervalMs(env));
  log.debug({ socket: socketPath, via, watchdog_ms: watchdogIntervalMs(env) ?? null }, 'sd_notify enabled');

  return {
    via,
    ready: (status) => notify(status ? `READY=1\nSTATUS=${status}` : 'READY=1'),
    reloading: () => notify(`RELOADING=1\nMONOTONIC_USEC=${monotonicUsec()}`),
    stopping: () => {
      clearInterval(timer);
      notify('STOPPING=1');
      stopping = true;
    },
    mainPid: (pid = process.pid) => {
      notify(`MAINPID=${pid}`);
      if (pid === process.pid) feed(watchdogIntervalMs({ ...env, WATCHDOG_PID: String(pid) }));
    },
    close: () => clearInterval(timer),
    settled: () => last,
  };
}
