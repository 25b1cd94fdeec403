/**
 * `fulcrum demo` (npm start): six tiny local backends, fulcrum in front of them with
 * examples/demo.yaml, and a list of things to try. Ctrl-C stops everything and exits 0.
 *
 * A demo config with an admin section and no token_file gets a token of its own: a random one in
 * a temporary folder (mode 0700, the file 0600) beside a copy of the config that names it, so the
 * status page's buttons and `fulcrum ctl --config COPY` work, and a reload of the copy keeps it.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer as createTcpServer, type Server as TcpServer } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseDocument } from 'yaml';
import { loadConfig, parseConfig } from '../config/load.ts';
import { formatHostPort, type Config } from '../config/schema.ts';
import { FulcrumError } from '../errors.ts';

export const DEMO_CONFIG = fileURLToPath(new URL('../../examples/demo.yaml', import.meta.url));

type AnyServer = HttpServer | TcpServer;

/** HTTP backend: says who it is; /health answers 200 unless switched off with /health/off. */
function httpBackend(name: string, host: string, port: number): HttpServer {
  let healthy = true;
  return createHttpServer((req, res) => {
    const url = req.url ?? '/';
    if (url === '/health/off' || url === '/health/on') {
      healthy = url === '/health/on';
      res.end(`${name}: health checks now ${healthy ? 'pass' : 'fail'}\n`);
    } else if (url === '/health') {
      res.statusCode = healthy ? 200 : 503;
      res.end(healthy ? 'ok\n' : 'switched off\n');
    } else {
      res.setHeader('connection', 'close');
      res.end(`${name} (${host}:${port}) served you\n`);
    }
  });
}

/** Raw TCP backend: greets with its name, then echoes every line. */
function tcpBackend(name: string, host: string, port: number): TcpServer {
  return createTcpServer((socket) => {
    socket.on('error', () => {});
    socket.write(`${name} (${host}:${port}) here; type a line, it comes back\n`);
    socket.pipe(socket);
  });
}

function listen(server: AnyServer, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      reject(new FulcrumError('FULCRUM_ERR_LISTEN', err.code === 'EADDRINUSE'
        ? `demo: ${host}:${port} is already in use (another demo running?); stop whatever holds it and try again`
        : `demo: cannot listen on ${host}:${port}: ${err.message}`, { cause: err }));
    });
    server.listen({ host, port }, () => resolve());
  });
}

function closeAll(servers: AnyServer[]): Promise<void> {
  return Promise.all(servers.map((s) => new Promise<void>((resolve) => {
    (s as HttpServer).closeAllConnections?.();
    s.close(() => resolve());
  }))).then(() => undefined);
}

/** Starts the demo backends named in the config's services "web" and "tcp". */
export async function startDemoBackends(config: Config): Promise<AnyServer[]> {
  const servers: AnyServer[] = [];
  try {
    for (const svc of config.services) {
      let n = 0;
      for (const b of svc.backends) {
        n++;
        const { host, port } = b.address;
        const server = svc.name === 'web' ? httpBackend(`backend-${n}`, host, port) : tcpBackend(`tcp-backend-${n}`, host, port);
        await listen(server, host, port);
        servers.push(server);
      }
    }
  } catch (err) {
    await closeAll(servers);
    throw err;
  }
  return servers;
}

const NUMBER_WORDS = ['no', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten', 'eleven', 'twelve'];
const count = (n: number, what: string): string => `${NUMBER_WORDS[n] ?? n} ${what}${n === 1 ? '' : 's'}`;

/**
 * What the demo runs, in words, read from the demo's own config: `fulcrum --help` prints it, so
 * the help and the demo cannot disagree ("six local backends (web: 3 HTTP, tcp: 3 raw TCP)").
 */
export function describeDemo(file = DEMO_CONFIG): string {
  const config = parseConfig(readFileSync(file, 'utf8'), file);
  const total = config.services.reduce((n, s) => n + s.backends.length, 0);
  const parts = config.services.map((s) => `${s.name}: ${s.backends.length} ${s.name === 'web' ? 'HTTP' : 'raw TCP'}`);
  return `run ${count(total, 'local backend')} (${parts.join(', ')}) behind fulcrum and show what to try`;
}

/**
 * The command the banner suggests for a look at the raw TCP service: bash's /dev/tcp, which every
 * Debian machine has (nc and socat are not installed by default). Reads the backend's greeting.
 */
export const tcpTryCommand = (host: string, port: number): string => `bash -c 'exec 3<>/dev/tcp/${host}/${port}; head -n1 <&3'`;

/** Where the demo's admin token is, and the config copy that names it (see the header). */
export interface DemoToken {
  /** The config file fulcrum runs from (a reload re-reads it). */
  configFile: string;
  tokenFile: string;
  token: string;
  /** Removes the temporary folder. */
  remove(): void;
}

/**
 * The demo's admin token, when its config has an admin section without token_file; undefined
 * otherwise (the config names its own token, or has no admin server).
 */
export function demoToken(file: string, config: Config): DemoToken | undefined {
  if (!config.admin || config.admin.token_file) return undefined;
  const dir = mkdtempSync(join(tmpdir(), 'fulcrum-demo-'));
  try {
    const token = randomBytes(18).toString('base64url');
    const tokenFile = join(dir, 'admin.token');
    writeFileSync(tokenFile, token + '\n', { mode: 0o600 });
    // The copy keeps the file's comments; only admin.token_file is added.
    const doc = parseDocument(readFileSync(file, 'utf8'));
    doc.setIn(['admin', 'token_file'], tokenFile);
    const configFile = join(dir, basename(file));
    writeFileSync(configFile, doc.toString(), { mode: 0o600 });
    return { configFile, tokenFile, token, remove: () => rmSync(dir, { recursive: true, force: true }) };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/** `bin/fulcrum` as the reader can type it from where they are. */
function fulcrumCommand(): string {
  const bin = fileURLToPath(new URL('../../bin/fulcrum', import.meta.url));
  const rel = relative(process.cwd(), bin);
  return rel.startsWith('..') ? bin : rel;
}

export function demoInstructions(config: Config, token?: DemoToken): string {
  const web = config.services.find((s) => s.name === 'web');
  const tcp = config.services.find((s) => s.name === 'tcp');
  const lines = ['', 'fulcrum demo is running. Try:', ''];
  if (web) {
    const at = formatHostPort(web.listen);
    const weights = web.backends.map((b) => b.weight);
    const total = weights.reduce((a, b) => a + b, 0);
    const heaviest = weights.indexOf(Math.max(...weights));
    lines.push(
      `  curl -s http://${at}/                      # which backend answered`,
      `  for i in $(seq ${total * 2}); do curl -s http://${at}/; done`,
      `      (${web.balance === 'roundrobin' ? 'weighted round-robin' : web.balance} ${weights.join(':')}: backend-${heaviest + 1} answers ${weights[heaviest]} of every ${total} requests)`,
      `  curl -s http://${formatHostPort(web.backends[0].address)}/health/off   # fail backend-1's health checks:`,
      `      it is marked down after a few seconds and gets no more requests (/health/on brings it back)`,
    );
  }
  if (tcp) {
    lines.push(
      `  ${tcpTryCommand(tcp.listen.host, tcp.listen.port)}`,
      `      raw TCP, ${tcp.balance}: the greeting names the backend; from one client address it is always`,
      `      the same one (to type lines and see them echoed: socat - TCP:${formatHostPort(tcp.listen)}, if installed)`,
    );
  }
  if (config.admin) {
    const admin = `http://${formatHostPort(config.admin.listen)}/`;
    if (token) {
      // The fragment never leaves the browser; the page keeps the token for the tab (status.html).
      lines.push(
        `  ${admin}#token=${token.token}`,
        `      the status page (open it in a browser), with the admin token filled in: its Drain/Maint buttons work`,
        `  ${fulcrumCommand()} ctl --config ${token.configFile} list`,
        `  ${fulcrumCommand()} ctl --config ${token.configFile} state web ${formatHostPort(web?.backends[0].address ?? config.services[0].backends[0].address)} drain`,
        `      the runtime API from the command line; the admin token is in`,
        `      ${token.tokenFile}, mode 0600 (removed when the demo stops)`,
      );
    } else {
      lines.push(`  ${admin}              # the status page and runtime API (open it in a browser)`);
    }
  }
  lines.push('', 'Log lines (one per closed connection) follow. Ctrl-C stops the demo.', '');
  return lines.join('\n');
}

/** Runs the demo until SIGINT/SIGTERM; resolves with the exit code. */
export async function runDemo(file = DEMO_CONFIG): Promise<number> {
  const parsed = loadConfig(file);
  const token = demoToken(file, parsed);
  // Run from the copy that names the token, so a reload (SIGHUP, `fulcrum ctl reload`) keeps it.
  const configFile = token?.configFile ?? file;
  let backends: AnyServer[] = [];
  let handle;
  try {
    const config = token ? loadConfig(configFile) : parsed;
    backends = await startDemoBackends(config);
    const { startFulcrum } = await import('../main.ts');
    handle = await startFulcrum(config, { configFile });
  } catch (err) {
    await closeAll(backends);
    token?.remove();
    throw err;
  }
  const config = handle.config;
  const h = handle;
  let stopRequested!: () => void;
  const stop = new Promise<void>((resolve) => (stopRequested = resolve));
  process.once('SIGINT', () => stopRequested());
  process.once('SIGTERM', () => stopRequested());
  // The start-up lines first (the log holds lines a moment to order them: observability/log.ts), then the banner.
  await new Promise<void>((resolve) => h.logger.flush(() => resolve()));
  process.stdout.write(demoInstructions(config, token));
  await stop;
  process.stdout.write('\nstopping the demo…\n');
  await Promise.all([h.stop('demo stopped'), closeAll(backends)]);
  token?.remove();
  await new Promise<void>((resolve) => h.logger.flush(() => resolve()));
  return 0;
}
