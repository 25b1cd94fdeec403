/**
 * A config's listen addresses checked against this machine, before anything of it is applied
 * (start-up, and every reload that brings a new address: src/control/reload.ts calls it when
 * the reload's diff lists new listen addresses):
 *
 * - Two services on one address written two ways ("localhost:6380" and "127.0.0.1:6380") are
 *   refused: the workers listen with SO_REUSEPORT, so the kernel would bind both and share the
 *   address's connections between the two services. The loader's own duplicate check compares
 *   the text; this one compares what the names resolve to.
 * - A new address must be bindable: a reload that moves a service onto a port another process
 *   holds (or a name that does not resolve) is refused whole, as an admin address in use is.
 *   Without this the workers closed the old listener first and the service stopped accepting.
 */
import { createSocket } from 'node:dgram';
import { lookup } from 'node:dns/promises';
import { createServer, isIP } from 'node:net';
import { ConfigInvalidError, FulcrumError, ListenError } from '../errors.ts';
import { formatHostPort, type Config } from './schema.ts';

/** What Node's listen and the relay resolve a host to: the first address dns.lookup gives. */
export async function resolveHost(host: string): Promise<string> {
  return isIP(host) !== 0 ? host : (await lookup(host)).address;
}

/** Binds `host:port` for a moment, as a worker will (errors are Node's: EADDRINUSE, EADDRNOTAVAIL…). */
function tryBind(host: string, port: number, protocol: 'tcp' | 'udp'): Promise<void> {
  return new Promise((resolve, reject) => {
    if (protocol === 'udp') {
      const socket = createSocket(isIP(host) === 6 ? 'udp6' : 'udp4');
      socket.once('error', (err) => {
        socket.close();
        reject(err);
      });
      socket.bind({ address: host, port, exclusive: true }, () => socket.close(() => resolve()));
      return;
    }
    const server = createServer();
    server.once('error', reject);
    server.listen({ host, port, exclusive: true, backlog: 1 }, () => server.close(() => resolve()));
  });
}

/** A set of keys that is known to need no check: what the running config already listens on. */
const listenKeys = (config: Config | undefined): Set<string> => new Set(config?.services.map((s) => `${s.protocol} ${formatHostPort(s.listen)}`) ?? []);

export interface ListenCheckOptions {
  /** Named in a ConfigInvalidError. */
  file?: string;
  /** Services the workers do not bind now (paused, or bound to a VIP that failover adds). */
  skipBind?: (service: string) => boolean;
}

/**
 * Throws ConfigInvalidError when two services of `next` resolve to one address, and ListenError
 * (FULCRUM_ERR_LISTEN) when an address `running` does not hold cannot be resolved or bound.
 */
export async function checkListens(running: Config | undefined, next: Config, options: ListenCheckOptions = {}): Promise<void> {
  const runningKeys = listenKeys(running);
  const runningResolved = new Set<string>();
  await Promise.all((running?.services ?? []).map(async (s) => {
    // A name that no longer resolves is the new config's business, checked below.
    const ip = await resolveHost(s.listen.host).catch(() => undefined);
    if (ip !== undefined) runningResolved.add(`${s.protocol} ${formatHostPort({ host: ip, port: s.listen.port })}`);
  }));

  const resolved = await Promise.all(next.services.map(async (s) => {
    try {
      return { ip: await resolveHost(s.listen.host) };
    } catch (err) {
      return { err: err as NodeJS.ErrnoException };
    }
  }));

  const duplicates: { path: string; message: string }[] = [];
  const seen = new Map<string, number>();
  const cannotListen: FulcrumError[] = [];
  const binds: Promise<void>[] = [];
  next.services.forEach((s, i) => {
    const text = formatHostPort(s.listen);
    const r = resolved[i];
    if (r.ip === undefined) {
      // Bound already under this name (it resolved when it was bound): the workers keep it.
      if (!runningKeys.has(`${s.protocol} ${text}`)) cannotListen.push(new ListenError(`service ${s.name}`, text, new Error(`listen ${r.err?.code ?? 'ENOTFOUND'}: cannot resolve ${s.listen.host}`)));
      return;
    }
    // A UDP and a TCP service may share a port number: the kernel keeps the protocols apart.
    const address = formatHostPort({ host: r.ip, port: s.listen.port });
    const key = `${s.protocol} ${address}`;
    const first = seen.get(key);
    if (first !== undefined) {
      duplicates.push({
        path: `services[${i}].listen`,
        message: `is the address of services[${first}].listen (${address}): the two would share its ${s.protocol === 'udp' ? 'datagrams' : 'connections'}, got ${JSON.stringify(text)}`,
      });
      return;
    }
    seen.set(key, i);
    if (runningKeys.has(`${s.protocol} ${text}`) || runningResolved.has(key) || options.skipBind?.(s.name)) return;
    binds.push(tryBind(r.ip, s.listen.port, s.protocol).catch((err: Error) => {
      cannotListen.push(new ListenError(`service ${s.name}`, text, err));
    }));
  });
  if (duplicates.length > 0) throw new ConfigInvalidError(options.file ?? '<config>', duplicates);
  await Promise.all(binds);
  if (cannotListen.length === 1) throw cannotListen[0];
  if (cannotListen.length > 1) throw new FulcrumError('FULCRUM_ERR_LISTEN', cannotListen.map((e) => e.message).join('; '));
}
