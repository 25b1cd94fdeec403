/**
 * `fulcrum demo` (npm start): six tiny local backends, fulcrum in front of them with
 * examples/demo.yaml, and a list of things to try. Ctrl-C stops everything and exits 0.
 */
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer as createTcpServer, type Server as TcpServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { parseConfig } from '../config/load.ts';
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

export function demoInstructions(config: Config): string {
  const web = config.services.find((s) => s.name === 'web');
  const tcp = config.services.find((s) => s.name === 'tcp');
  const lines = ['', 'fulcrum demo is running. Try:', ''];
  if (web) {
    const at = formatHostPort(web.listen);
    lines.push(
      `  curl -s http://${at}/                      # which backend answered`,
      `  for i in $(seq 8); do curl -s http://${at}/; done`,
      `      (weighted round-robin 1:1:2: backend-3 answers every other request)`,
      `  curl -s http://${formatHostPort(web.backends[0].address)}/health/off   # fail backend-1's health checks:`,
      `      it is marked down after a few seconds and gets no more requests (/health/on brings it back)`,
    );
  }
  if (tcp) {
    lines.push(
      `  nc ${tcp.listen.host} ${tcp.listen.port}                       # raw TCP, maglev: the same client address`,
      `      always reaches the same backend`,
    );
  }
  if (config.admin) lines.push(`  open http://${formatHostPort(config.admin.listen)}/              # status page and runtime API`);
  lines.push('', 'Log lines (one per closed connection) follow. Ctrl-C stops the demo.', '');
  return lines.join('\n');
}

/** Runs the demo until SIGINT/SIGTERM; resolves with the exit code. */
export async function runDemo(file = DEMO_CONFIG): Promise<number> {
  const config = parseConfig(readFileSync(file, 'utf8'), file);
  const backends = await startDemoBackends(config);
  const { startFulcrum } = await import('../main.ts');
  let handle;
  try {
    handle = await startFulcrum(config, { configFile: file });
  } catch (err) {
    await closeAll(backends);
    throw err;
  }
  const h = handle;
  let stopRequested!: () => void;
  const stop = new Promise<void>((resolve) => (stopRequested = resolve));
  process.once('SIGINT', () => stopRequested());
  process.once('SIGTERM', () => stopRequested());
  // The start-up lines first (the log holds lines a moment to order them: observability/log.ts), then the banner.
  await new Promise<void>((resolve) => h.logger.flush(() => resolve()));
  process.stdout.write(demoInstructions(config));
  await stop;
  process.stdout.write('\nstopping the demo…\n');
  await Promise.all([h.stop('demo stopped'), closeAll(backends)]);
  await new Promise<void>((resolve) => h.logger.flush(() => resolve()));
  return 0;
}
