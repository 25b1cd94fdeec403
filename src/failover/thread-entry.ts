/**
 * The failover thread (thread.ts says why it is one, and what crosses): runs the Failover of
 * index.ts with what the main thread sent, and answers in messages. Its log lines go to the main
 * thread, which writes them to its own destination; its status goes there on every role change
 * and STATUS_PER_INTERVAL times an advert interval.
 */
import { constants, setPriority } from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import type { LevelWithSilent } from 'pino';
import { createLogger, loggedAt } from '../observability/log.ts';
import { Failover, type FailoverCarry } from './index.ts';
import type { FailoverThreadData, FromFailoverThread, ToFailoverThread } from './thread.ts';

/**
 * How long a start/stop-accepting request waits for the main thread. Past it the actions go on
 * (the VIP is removed, adverts are sent) and the answer, when it comes, is dropped: a main thread
 * stuck for this long must not keep a resigning master's VIP on this host.
 */
const ACCEPTING_WAIT_MS = 2000;

/**
 * This thread's nice value, as keepalived's vrrp_priority raises its VRRP process's: on a loaded
 * host an advert waits for a core behind the main thread, the data-plane workers and everything
 * else. On Linux the nice value is per thread (setpriority(2) with who 0 is the calling thread),
 * so only the heartbeat gains. Needs CAP_SYS_NICE (or root); without it the thread runs at the
 * process's priority.
 */
const THREAD_NICE = constants.priority.PRIORITY_HIGH;

/**
 * Status reports per advert interval. The main thread ages the last report (the peer's
 * last_advert_ms_ago grows with the time since it); an advert that arrived after it shows only in
 * the next one, so the age it gives can be too old by up to one report period: a quarter of an
 * interval, not a whole one (what the admin API shows, and what a watcher of gaps measures).
 */
const STATUS_PER_INTERVAL = 4;
const STATUS_MIN_MS = 10;

const port = parentPort!;
const data = workerData as FailoverThreadData;
const post = (m: FromFailoverThread): void => port.postMessage(m);

// Each line is posted as it is logged (a few a minute), with its time: the main thread's LogOutput orders it among the others.
const logger = createLogger(data.level as LevelWithSilent, { write: (line: string) => post({ type: 'log', line, at: loggedAt() }) }, data.bindings);
const log = logger.child({ component: 'failover' });
try {
  setPriority(THREAD_NICE);
} catch (err) {
  log.info({ err: (err as Error).message, nice: THREAD_NICE }, 'the failover thread runs at the process\'s priority (raising it needs CAP_SYS_NICE)');
}
let backendsUp = data.backendsUp;
let acceptSeq = 0;
const waiting = new Map<number, () => void>();

const failover = new Failover({
  config: data.config,
  logger,
  commands: data.commands,
  backendsUp: backendsUp === null ? undefined : () => backendsUp ?? 0,
  setAccepting: (on) => new Promise<void>((resolve) => {
    const id = ++acceptSeq;
    const timer = setTimeout(() => {
      waiting.delete(id);
      log.warn({ accepting: on, waited_ms: ACCEPTING_WAIT_MS }, `the main thread did not ${on ? 'start' : 'stop'} accepting on the VIP in time; going on`);
      resolve();
    }, ACCEPTING_WAIT_MS);
    waiting.set(id, () => {
      clearTimeout(timer);
      resolve();
    });
    post({ type: 'accepting', id, on });
  }),
});

function sendStatus(): void {
  post({ type: 'status', status: failover.status(), at: performance.timeOrigin + performance.now() });
}

let statusTimer: NodeJS.Timeout | null = null;
function armStatus(): void {
  if (statusTimer) clearInterval(statusTimer);
  statusTimer = setInterval(sendStatus, Math.max(STATUS_MIN_MS, failover.settings.advert_interval / STATUS_PER_INTERVAL));
}

failover.on('role', (change) => {
  post({ type: 'role', change });
  sendStatus();
});

port.on('message', (m: ToFailoverThread) => {
  switch (m.type) {
    case 'backends-up':
      backendsUp = m.count;
      return;
    case 'accepting-done':
      waiting.get(m.id)?.();
      waiting.delete(m.id);
      sendStatus();
      return;
    case 'reconfigure': {
      const interval = failover.settings.advert_interval;
      failover.reconfigure(m.config);
      if (failover.settings.advert_interval !== interval && statusTimer) armStatus();
      sendStatus();
      return;
    }
    case 'log-level':
      logger.level = m.level;
      return;
    case 'carried':
      begin(m.ha);
      return;
    case 'abandon':
      failover.abandon().then(
        (ha) => {
          sendStatus();
          post({ type: 'abandoned', ha });
        },
        (err: Error) => post({ type: 'abandon-failed', message: err.message }),
      );
      return;
    case 'resume':
      failover.resume().then(
        () => post({ type: 'resumed', error: null }),
        (err: Error) => post({ type: 'resumed', error: err.message }),
      );
      return;
    case 'stop':
      void failover.stop().then(() => {
        if (statusTimer) clearInterval(statusTimer);
        statusTimer = null;
        sendStatus();
        post({ type: 'stopped' });
      });
      return;
  }
});

function begin(carried?: FailoverCarry): void {
  failover.start(carried).then(
    () => {
      sendStatus();
      armStatus();
      post({ type: 'started' });
    },
    (err: Error & { code?: string }) => post({ type: 'start-failed', code: typeof err.code === 'string' ? err.code : null, message: err.message }),
  );
}

// Started by `fulcrum upgrade`: loaded and ready, this thread waits for the old process's
// failover (FailoverThread.start's `carried`) before it sends or hears a heartbeat.
if (data.awaitCarried) post({ type: 'waiting' });
else begin();
