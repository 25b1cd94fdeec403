/**
 * A data-plane worker thread: its own engine instance over the shared memory, the session core
 * (core.ts) and its transports, and every listener of the worker, on both paths: one per service
 * (reusePort, so the kernel spreads accepts among workers; with the relay, a worker holding two
 * connections more than another hands new ones over: relay/handoff.c). A listener is the
 * relay's (`relay.listen`) or a Node server whose connections a transport takes as raw handles
 * (`acceptOn`): the JavaScript transport, or on the relay path for accept_proxy services,
 * the relay's lent clients — or, for a UDP service, a datagram socket: the relay's
 * (transport-relay-udp.ts, relay/udp.c) or node:dgram's on the JavaScript path (transport-udp.ts).
 * Started by pool.ts; everything it is told arrives as a MainToWorker message.
 */
import { lookup } from 'node:dns/promises';
import { createServer, isIP, type Server } from 'node:net';
import { getSystemErrorMessage, getSystemErrorName } from 'node:util';
import { parentPort, workerData } from 'node:worker_threads';
import { instantiateEngine } from '../balancer/engine.ts';
import { formatHostPort } from '../config/address.ts';
import { CONNECTION_LOG_MSG, connectionLineWriter, createLogger, LineForwarder, type Logger } from '../observability/log.ts';
import type { HandedListener, ListenProblem, MainToWorker, ServiceEntry, WorkerInit, WorkerToMain } from './messages.ts';
import { DataPath, type DataPathContext } from './core.ts';
import { loadRelay, quiesceFilter, type RelayBinding } from './relay.ts';
import type { CloseRecord, ServiceRuntime } from './session.ts';
import { JsTransport } from './transport-js.ts';
import { RelayTransport } from './transport-relay.ts';
import { RelayUdpTransport } from './transport-relay-udp.ts';
import { UdpTransport, type DatagramListener, type DatagramTransport } from './transport-udp.ts';
import { acceptOn, closeAfterDrain, type ServerTransport } from './transport.ts';
import { DescriptorGate } from './descriptors.ts';
import { keepAliveOnServer, serverFd } from './handles.ts';

const init = workerData as WorkerInit;
const port = parentPort!;
const post = (msg: WorkerToMain): void => port.postMessage(msg);

// The main thread writes every thread's lines, in time order (observability/log.ts): the worker
// sends its lines in batches, two messages per batch (one per LOG_BATCH_MS while it logs, more
// often when a busy worker fills them), each batch one string with its line ends and times.
const destination = new LineForwarder((log) => post({ type: 'log', log }));
const log: Logger = createLogger(init.logging.level as 'info', destination).child({ component: 'proxy', worker: init.workerId });

const engine = instantiateEngine(init.module, init.memory, init.workerId);

// One line per closed connection (HAProxy's option tcplog) while logging.connections is on;
// the function is made once, and a reload switches it in or out (setLogging).
// The line is pino's, written by hand from the record's fixed fields (log.ts connectionLineWriter).
const logConnection: (rec: CloseRecord) => void = connectionLineWriter(log);

// Local resource errors come in bursts (every connection while the open-files limit is reached):
// one log line per second at most, with how many connections failed since the last one.
let localFailures = 0;
let localLoggedAt = 0;
function onLocalError(errno: number, service: string, during: 'accept' | 'connect'): void {
  localFailures++;
  const now = Date.now();
  if (now - localLoggedAt < 1000) return;
  const code = getSystemErrorName(errno);
  const what = during === 'accept' ? 'accept failed' : 'cannot open a backend connection';
  const hint = code === 'EMFILE' || code === 'ENFILE' ? ': the open-files limit is reached (raise ulimit -n / LimitNOFILE)' : '';
  log.error({ service, code, during, failed: localFailures }, `${what} on service ${service}: ${code}${hint}`);
  localLoggedAt = now;
  localFailures = 0;
}

// The native relay makes the data path's system calls (relay.ts) when the pool says it loads;
// else Node's TCP handles do (the pool logged why, once).
const binding = init.relay ? loadRelay() : null;
if (typeof binding === 'string') throw new Error(`the native relay loaded in the main thread but not in worker ${init.workerId}: ${binding}`);

let stopWaiter: (() => void) | null = null;
const descriptors = new DescriptorGate(init.descriptors, init.workerId, log);
const dataPath: DataPathContext = {
  engine,
  memory: init.memory,
  workerId: init.workerId,
  post,
  onClose: init.logging.connections ? logConnection : null,
  onIdle: () => stopWaiter?.(),
  onLocalError,
  descriptors,
};
const core = new DataPath(dataPath);
const relay = binding === null ? null : new RelayTransport(core, binding);
/** Who takes a Node server's connections: the JavaScript transport, or (relay path, accept_proxy) the relay's lent clients. */
const handles: ServerTransport = relay === null ? new JsTransport(core) : relay.lent;
/**
 * UDP services: the relay's datagram path, else node:dgram. FULCRUM_UDP_BATCH (1..64, default 64)
 * sets the relay's datagrams per recvmmsg / sendmmsg: 1 measures what the batching buys (bench).
 */
const udpBatch = Number(process.env.FULCRUM_UDP_BATCH ?? 0);
const udp: DatagramTransport = relay === null
  ? new UdpTransport(core)
  : new RelayUdpTransport(relay, core, binding as NonNullable<typeof binding>, udpBatch >= 1 && udpBatch <= 64 ? udpBatch : undefined);

/** A reload changed `logging`: the level applies to the next line, per-connection lines to the next close. */
function setLogging(level: string, connections: boolean): void {
  log.level = level;
  dataPath.onClose = connections ? logConnection : null;
}

/** One service's listener; the transport that accepts on it reads `rt` per connection (ListenerRef). */
interface Listener {
  rt: ServiceRuntime;
  /** Listening through Node (the JavaScript path, and accept_proxy services)… */
  server: Server | null;
  /** …or through the relay: its listener id, else -1… */
  lid: number;
  /** …or, protocol udp, a datagram socket. */
  udp: DatagramListener | null;
  /** Bumped by closeListener: a relay listen still resolving a host name then does not bind. */
  closes: number;
  /**
   * Its last bind failed (address in use, a VIP not held yet): the next service table or resume
   * tries again. The address alone says nothing then, as the table names the same one.
   */
  failed: boolean;
  address: string;
  paused: boolean;
  /** A Node listener the descriptor reserve closed (Node cannot stop accepting otherwise): reopened at its resume mark. */
  reserveClosed: boolean;
}

/**
 * The descriptor reserve's switch (descriptors.ts): the relay's listeners stop polling, so new
 * connections wait in the kernel's backlog. A Node listener cannot stop accepting short of
 * closing (libuv accepts whatever is ready), so it is closed and bound again at the resume mark:
 * while it is closed, new connections go to another worker's listener or are refused (README).
 */
const acceptSwitch = {
  stopAccepting(): void {
    if (relay !== null) relay.acceptStopped = true;
    for (const l of listeners.values()) {
      if (l.lid >= 0) relay!.pauseListener(l.lid, true);
      if (l.server !== null) {
        // At once, not drained: accepting what is queued would take the descriptors the reserve keeps.
        closeListener(l, false);
        l.reserveClosed = true;
      }
    }
  },
  startAccepting(): void {
    if (relay !== null) relay.acceptStopped = false;
    for (const l of listeners.values()) {
      if (l.lid >= 0) relay!.pauseListener(l.lid, false);
      if (l.reserveClosed) {
        l.reserveClosed = false;
        if (!l.paused && !isListening(l)) void listen(l).then((p) => { if (p !== null) log.error({ service: p.service, address: p.address }, `accepting again: cannot bind ${p.address}: ${p.message}`); });
      }
    }
  },
};

/** The relay accepts a service's connections unless a PROXY header must be read from them first. */
const relayAccepts = (e: ServiceEntry): boolean => relay !== null && !e.accept_proxy && e.protocol === 'tcp';
const isListening = (l: Listener): boolean => l.server !== null || l.lid >= 0 || l.udp !== null;

/** The relay's listener: the same address checks and error text as Node's listen. */
async function listenThroughRelay(l: Listener): Promise<ListenProblem | null> {
  const e = l.rt.entry;
  let ip = e.listen.host;
  let family = isIP(ip);
  if (family === 0) {
    const closes = l.closes;
    try {
      ({ address: ip, family } = await lookup(e.listen.host));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'ENOTFOUND';
      return { service: e.name, address: l.address, message: `listen ${code}: cannot resolve ${e.listen.host}`, code };
    }
    if (l.closes !== closes) return null; // paused, moved or removed meanwhile (as a Node server closed before it listened)
  }
  const lid = relay!.listen(l, ip, e.listen.port, family, init.reusePort, 1024);
  if (lid < 0) {
    const code = getSystemErrorName(lid);
    return { service: e.name, address: l.address, message: `listen ${code}: ${getSystemErrorMessage(lid)} ${l.address}`, code };
  }
  l.lid = lid;
  return null;
}
const listeners = new Map<string, Listener>();
const paused = new Set(init.paused);
/** Sockets handed over by the previous process (upgrade), by service: each is adopted once, by the first bind of a matching listener. */
const inherited = new Map((init.inherited ?? []).map((h) => [h.service, h]));

/** The handed-over socket for this listener, if its address and protocol are still the same; taken (a later bind makes its own). */
function takeInherited(l: Listener): HandedListener | undefined {
  const h = inherited.get(l.rt.entry.name);
  if (h === undefined) return undefined;
  inherited.delete(l.rt.entry.name);
  return h.address === l.address && h.protocol === l.rt.entry.protocol ? h : undefined;
}

/** A stream listener's socket, whichever kind listens (a Node server or the relay), or -1 when none is bound. */
function tcpListenerFd(l: Listener): number {
  return l.server !== null ? serverFd(l.server) : l.lid >= 0 ? relay!.listenerFd(l.lid) : -1;
}

/** Who owns the listener's socket now, by fd: what an upgrade hands to the next process. */
function listenerFds(): HandedListener[] {
  const out: HandedListener[] = [];
  for (const [name, l] of listeners) {
    const fd = l.udp !== null ? udp.fdOf(l.udp) : tcpListenerFd(l);
    if (fd >= 0) out.push({ service: name, address: l.address, protocol: l.rt.entry.protocol, fd });
  }
  return out;
}

/** Services whose listeners drop new SYNs (a BGP drain, src/bgp/index.ts): set by `quiesce`, applied at each bind too. */
let quiesced = new Set(init.quiesced);
/** The filter's setsockopt (relay.ts quiesceFilter), or why there is none; loaded at the first quiesce. */
let holdSyns: RelayBinding['quiesce'] | string | null = null;

/**
 * Puts the quiesce filter on a TCP listener's socket (on) or takes it off: new SYNs go
 * unanswered, so their clients retransmit (to another node once the router moved them) while
 * handshakes under way and open connections go on. A UDP service has no handshake to hold back;
 * a listener not bound now gets it at its bind (listen). Per `quiesce` message and per bind.
 */
function quiesceListener(l: Listener, on: boolean): ListenProblem | null {
  if (l.rt.entry.protocol !== 'tcp') return null;
  const fd = tcpListenerFd(l);
  if (fd < 0) return null;
  holdSyns ??= binding !== null && typeof binding !== 'string' ? (f, o) => binding.quiesce(f, o) : quiesceFilter();
  const e = l.rt.entry;
  if (typeof holdSyns === 'string') return { service: e.name, address: l.address, message: `cannot hold new connections back: the quiesce filter is in the native relay, which cannot be loaded (${holdSyns})`, code: 'ENOSYS' };
  const rc = holdSyns(fd, on);
  if (rc < 0) return { service: e.name, address: l.address, message: `${on ? 'quiesce' : 'unquiesce'}: ${getSystemErrorName(rc)}: ${getSystemErrorMessage(rc)}`, code: getSystemErrorName(rc) };
  return null;
}

/** `quiesce`: the set of quiesced services becomes `services`; every listener whose part changed follows. */
function setQuiesced(services: string[]): ListenProblem[] {
  const next = new Set(services);
  const problems: ListenProblem[] = [];
  for (const [name, l] of listeners) {
    if (next.has(name) === quiesced.has(name)) continue;
    const p = quiesceListener(l, next.has(name));
    if (p !== null) problems.push(p);
  }
  quiesced = next;
  return problems;
}

function listen(l: Listener): Promise<ListenProblem | null> {
  l.failed = false;
  // The descriptor reserve has stopped accepting: a Node listener opens when it starts again
  // (startAccepting); the relay's binds now and is paused at once.
  if (descriptors.paused && l.rt.entry.protocol === 'tcp' && !relayAccepts(l.rt.entry)) {
    l.reserveClosed = true;
    return Promise.resolve(null);
  }
  return bind(l).then((problem) => {
    if (problem !== null) l.failed = true;
    else keepAlive(l);
    if (problem === null && quiesced.has(l.rt.entry.name)) {
      // Bound while the node is drained (a worker started by a resize or a restart, a moved
      // listener): it holds new SYNs back like the others. A failure is said, not fatal: the
      // listener serves, and the drain's connection count shows what it accepts.
      const q = quiesceListener(l, true);
      if (q !== null) log.error({ service: q.service, address: q.address, code: q.code }, q.message);
    }
    if (problem === null && l.lid >= 0 && descriptors.paused) relay!.pauseListener(l.lid, true);
    return problem;
  });
}

/**
 * The service's tcp_keepalive on its listening socket: the kernel gives it to every connection
 * accepted there, so clients cost no call each. After a bind, and when a reload changes it.
 */
function keepAlive(l: Listener): void {
  const ka = l.rt.entry.tcp_keepalive;
  if (l.server !== null) keepAliveOnServer(l.server, ka?.idle ?? 0);
  else if (l.lid >= 0) relay!.keepAlive(l.lid, ka);
}

const sameKeepAlive = (a: ServiceEntry['tcp_keepalive'], b: ServiceEntry['tcp_keepalive']): boolean =>
  a === b || (a !== null && b !== null && a.idle === b.idle && a.interval === b.interval && a.count === b.count);

function bind(l: Listener): Promise<ListenProblem | null> {
  const e = l.rt.entry;
  const handed = takeInherited(l);
  if (e.protocol === 'udp') return listenUdp(l, handed?.fd);
  if (relayAccepts(e)) return handed === undefined ? listenThroughRelay(l) : Promise.resolve(adoptThroughRelay(l, handed.fd));
  // The server only listens: its connections go to a transport as raw handles (accept), so
  // net.Socket options (allowHalfOpen, noDelay) would not apply; the transport sets both itself.
  const server = createServer();
  acceptOn(server, l, handles);
  l.server = server;
  return new Promise((resolve) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      server.off('close', onClosedFirst);
      if (l.server === server) l.server = null;
      server.close();
      resolve({ service: e.name, address: l.address, message: err.message, code: err.code });
    };
    // Paused, moved or removed while Node was still resolving the host name: Node then never
    // listens and says nothing but 'close'; without this the pause/reload waiting here would hang.
    const onClosedFirst = (): void => resolve(null);
    server.once('error', onError);
    server.once('close', onClosedFirst);
    // A socket handed over by the previous process is listened on as it is (same queue, same address).
    const where = handed === undefined ? { host: e.listen.host, port: e.listen.port, reusePort: init.reusePort } : { fd: handed.fd };
    server.listen({ ...where, backlog: 1024 }, () => {
      server.off('error', onError);
      server.off('close', onClosedFirst);
      server.on('error', (err) => log.error({ err, service: e.name }, 'listener error'));
      resolve(null);
    });
  });
}

/** The relay polls a listening socket handed over by the previous process (upgrade). */
function adoptThroughRelay(l: Listener, fd: number): ListenProblem | null {
  const lid = relay!.adopt(l, fd);
  if (lid < 0) return { service: l.rt.entry.name, address: l.address, message: `adopting the listener handed over: ${getSystemErrorName(lid)}: ${getSystemErrorMessage(lid)}`, code: getSystemErrorName(lid) };
  l.lid = lid;
  return null;
}

async function listenUdp(l: Listener, fd?: number): Promise<ListenProblem | null> {
  const closes = l.closes;
  const r = await udp.listen(l, l.address, init.reusePort, fd);
  if (!('ref' in r)) return r;
  if (l.closes !== closes) udp.closeListener(r); // paused, moved or removed while resolving
  else l.udp = r;
  return null;
}

/** Resolves once the listener accepts no more (a Node listener drains its queue first: transport.ts closeAfterDrain). */
function closeListener(l: Listener, drain = true): Promise<void> {
  l.closes++;
  let closed: Promise<void> = Promise.resolve();
  if (l.udp !== null) {
    udp.closeListener(l.udp);
    l.udp = null;
  }
  if (l.server !== null) {
    // Drained first (transport.ts closeAfterDrain): what the kernel queued on it is served, not reset.
    if (drain) closed = closeAfterDrain(l.server);
    else l.server.close();
    l.server = null;
  }
  if (l.lid >= 0) {
    relay!.closeListener(l.lid);
    l.lid = -1;
  }
  return closed;
}

/** Applies a whole service table: new listeners bound, removed ones closed, changed ones moved. */
async function applyServices(services: ServiceEntry[]): Promise<ListenProblem[]> {
  core.setBackends(services);
  const seen = new Set<string>();
  const binds: Promise<ListenProblem | null>[] = [];
  for (const e of services) {
    seen.add(e.name);
    const address = formatHostPort(e.listen);
    const l = listeners.get(e.name);
    if (l === undefined) {
      const fresh: Listener = {
        rt: core.runtime(e), server: null, lid: -1, udp: null, closes: 0, failed: false, address, paused: paused.has(e.name), reserveClosed: false,
      };
      listeners.set(e.name, fresh);
      if (!fresh.paused) binds.push(listen(fresh));
      continue;
    }
    // Same name: the session code reads `rt.entry` at each use, so updating it is enough.
    const keepAliveChanged = !sameKeepAlive(l.rt.entry.tcp_keepalive, e.tcp_keepalive);
    if (l.rt.index !== e.index) {
      // The engine moved the service to another slot: a fresh runtime (new counters, queue); the
      // transports read `l.rt` per accept, so its listener takes it at once.
      core.dropQueue(l.rt);
      l.rt = core.runtime(e);
    } else {
      l.rt.entry = e;
    }
    // accept_proxy switched: the other kind of listener serves it (the relay cannot read headers).
    // Or the protocol switched: a datagram socket in place of a stream listener, or back.
    const kindChanged = isListening(l) && ((l.lid >= 0) !== relayAccepts(e) || (l.udp !== null) !== (e.protocol === 'udp'));
    if (address !== l.address || kindChanged || (l.failed && !l.paused)) {
      closeListener(l);
      l.address = address;
      if (!l.paused) binds.push(listen(l));
    } else if (keepAliveChanged) {
      keepAlive(l);
    }
    if (l.udp !== null && !kindChanged) udp.configure(l.udp); // max_datagram, responses, counters; removed backends' flows move
  }
  for (const [name, l] of listeners) {
    if (seen.has(name)) continue;
    closeListener(l);
    core.dropQueue(l.rt);
    listeners.delete(name);
  }
  const results = await Promise.all(binds);
  return results.filter((r): r is ListenProblem => r !== null);
}

async function shutdown(grace: number, seq: number): Promise<void> {
  const closing: Promise<void>[] = [];
  for (const l of listeners.values()) {
    closing.push(closeListener(l));
    l.paused = true; // for good: the descriptor reserve's resume must not bind it again
  }
  // What a Node listener had queued is accepted before it closes: those sessions count below.
  await Promise.all(closing);
  core.beginShutdown();
  // Accepting no more: a retiring worker's pool goes on (its reload answers) once this is said.
  post({ type: 'ack', seq, errors: [] });
  // A connection another worker's relay handed over just before the listeners closed is still in
  // this relay's inbox: it is accepted already, so it is served like the open ones, not dropped with the thread.
  const sessions = core.sessions;
  const idle = (): boolean => sessions.size === 0 && (relay === null || relay.handedOver() === 0);
  if (!idle()) {
    await new Promise<void>((resolve) => {
      stopWaiter = () => {
        if (idle()) resolve();
      };
      const timer = setTimeout(() => {
        log.info({ open: sessions.size, grace }, 'shutdown grace over: closing open connections');
        core.killAll();
        // Closes are asynchronous; onIdle resolves once the last one is accounted.
      }, grace);
      timer.unref();
      const poll = setInterval(() => {
        if (idle()) resolve();
      }, 50);
      poll.unref();
    });
  }
  destination.flush(); // before 'stopped': the port delivers the lines first
  post({ type: 'stopped', workerId: init.workerId });
}

port.on('message', async (msg: MainToWorker) => {
  switch (msg.type) {
    case 'services':
      post({ type: 'ack', seq: msg.seq, errors: await applyServices(msg.services) });
      break;
    case 'kill-backend':
      post({ type: 'ack', seq: msg.seq, errors: [], killed: core.killBackend(msg.backend) });
      break;
    case 'pause': {
      paused.add(msg.service);
      const l = listeners.get(msg.service);
      if (l !== undefined) {
        l.paused = true;
        await closeListener(l);
      }
      post({ type: 'ack', seq: msg.seq, errors: [] });
      break;
    }
    case 'resume': {
      paused.delete(msg.service);
      const l = listeners.get(msg.service);
      let problem: ListenProblem | null = null;
      if (l !== undefined && (l.paused || l.failed)) {
        l.paused = false;
        if (!isListening(l)) problem = await listen(l);
      }
      post({ type: 'ack', seq: msg.seq, errors: problem ? [problem] : [] });
      break;
    }
    case 'quiesce':
      post({ type: 'ack', seq: msg.seq, errors: setQuiesced(msg.services) });
      break;
    case 'logging':
      setLogging(msg.level, msg.connections);
      post({ type: 'ack', seq: msg.seq, errors: [] });
      break;
    case 'shutdown':
      await shutdown(msg.grace, msg.seq);
      break;
    case 'listeners':
      post({ type: 'ack', seq: msg.seq, errors: [], listeners: listenerFds() });
      break;
  }
});

const errors = await applyServices(init.services);
// Handed-over sockets no service here took (a listener paused at start, or moved by the new config):
// the main thread closes its own copies once the old process has stopped (src/control/upgrade.ts).
inherited.clear();
descriptors.attach(acceptSwitch);
post({ type: 'ack', seq: 0, errors });
