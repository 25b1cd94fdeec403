/**
 * Real redis-server processes for tests: each in its own temp dir, bound to one loopback
 * address, no persistence (`--save '' --appendonly no`), killed and removed by stop().
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { freePort, waitFor } from './net.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeCommand, parseReply, type RespValue } from '../../src/health/probes/resp.ts';

export interface RedisServer {
  host: string;
  port: number;
  /** "host:port" */
  address: string;
  dir: string;
  /** Runs one command on a fresh connection and returns the parsed reply. */
  command(...args: string[]): Promise<RespValue>;
  stop(): Promise<void>;
}

/** Sends one RESP command over a new connection; rejects after 2 s. */
export function redisCommand(host: string, port: number, args: string[]): Promise<RespValue> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host, port });
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => { sock.destroy(); reject(new Error(`redis ${host}:${port} ${args[0]}: no reply in 2s`)); }, 2000);
    sock.on('connect', () => sock.write(encodeCommand(args)));
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      try {
        const r = parseReply(buf);
        if (r) { clearTimeout(timer); sock.destroy(); resolve(r[0]); }
      } catch (err) { clearTimeout(timer); sock.destroy(); reject(err); }
    });
    sock.on('error', (err) => { clearTimeout(timer); reject(err); });
  });
}

export async function startRedis(opts: { host: string; port?: number; args?: string[] }): Promise<RedisServer> {
  const { host } = opts;
  const port = opts.port ?? await freePort(host);
  const dir = await mkdtemp(join(tmpdir(), 'fulcrum-redis-'));
  return runRedisProcess('redis-server', [
    '--bind', host, '--port', String(port), '--dir', dir, '--save', '', '--appendonly', 'no',
    '--protected-mode', 'no', '--daemonize', 'no', '--logfile', join(dir, 'redis.log'), ...(opts.args ?? []),
  ], host, port, dir);
}

/** Runs a redis-server or redis-sentinel in `dir` until it answers PING; stop() kills it and removes the dir. */
async function runRedisProcess(bin: string, args: string[], host: string, port: number, dir: string): Promise<RedisServer> {
  const child: ChildProcess = spawn(bin, args, { stdio: 'ignore' });
  let exited = false;
  const exitPromise = new Promise<void>((resolve) => child.once('exit', () => { exited = true; resolve(); }));
  const stop = async () => {
    if (!exited) {
      child.kill('SIGKILL');
      await exitPromise;
    }
    await rm(dir, { recursive: true, force: true });
  };
  // Any reply will do: with requirepass the answer is a NOAUTH error, and that means "up". An exit ends the wait.
  const answers = () => redisCommand(host, port, ['PING']).then(() => true, () => false);
  const up = await waitFor(async () => exited || (await answers()), 10_000, `${bin} to answer`, 50).then(() => !exited, () => false);
  if (!up) {
    await stop();
    throw new Error(`${bin} on ${host}:${port} did not start (is ${bin} installed?)`);
  }
  return { host, port, address: `${host}:${port}`, dir, command: (...args) => redisCommand(host, port, args), stop };
}

/** A long-lived RESP connection (through fulcrum, usually): one command at a time. */
export interface RespSession {
  socket: net.Socket;
  command(...args: string[]): Promise<RespValue>;
  /** Resolves when the connection closes (by either side). */
  closed: Promise<void>;
  close(): void;
}

export function respSession(host: string, port: number): Promise<RespSession> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    let buf = Buffer.alloc(0);
    let waiter: { resolve(v: RespValue): void; reject(e: Error): void } | null = null;
    const closed = new Promise<void>((r) => socket.once('close', () => {
      waiter?.reject(new Error('connection closed'));
      waiter = null;
      r();
    }));
    socket.on('error', () => {});
    socket.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      const r = parseReply(buf);
      if (r && waiter) {
        buf = buf.subarray(r[1]);
        const w = waiter;
        waiter = null;
        w.resolve(r[0]);
      }
    });
    socket.once('error', reject);
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve({
        socket,
        closed,
        close: () => socket.destroy(),
        command: (...args) => new Promise<RespValue>((res, rej) => {
          if (socket.destroyed) return rej(new Error('connection closed'));
          const timer = setTimeout(() => { waiter = null; rej(new Error(`no reply to ${args[0]} in 3s`)); }, 3000);
          waiter = { resolve: (v) => { clearTimeout(timer); res(v); }, reject: (e) => { clearTimeout(timer); rej(e); } };
          socket.write(encodeCommand(args));
        }),
      });
    });
  });
}

/** The port a Redis server says it listens on (INFO server's tcp_port): who answered. */
export function tcpPortOf(info: RespValue): number {
  const m = typeof info === 'string' ? /^tcp_port:(\d+)/m.exec(info) : null;
  if (!m) throw new Error(`no tcp_port in INFO reply ${JSON.stringify(info)}`);
  return Number(m[1]);
}

/**
 * A real Redis Sentinel (Debian's redis-sentinel) watching `master` as `name`: its config file in a
 * temp dir (Sentinel rewrites it), announcing its own address so the sentinels find each other on
 * loopback, a short down-after so a failover starts within a second. stop() kills it.
 */
export async function startSentinel(opts: { host: string; name: string; master: { host: string; port: number }; quorum: number; downAfterMs?: number }): Promise<RedisServer> {
  const { host, name } = opts;
  const port = await freePort(host);
  const dir = await mkdtemp(join(tmpdir(), 'fulcrum-sentinel-'));
  const conf = join(dir, 'sentinel.conf');
  await writeFile(conf, [
    `port ${port}`, `bind ${host}`, 'daemonize no', 'protected-mode no', `dir ${dir}`, `logfile ${join(dir, 'sentinel.log')}`,
    `sentinel announce-ip ${host}`,
    `sentinel monitor ${name} ${opts.master.host} ${opts.master.port} ${opts.quorum}`,
    `sentinel down-after-milliseconds ${name} ${opts.downAfterMs ?? 500}`,
    `sentinel failover-timeout ${name} 5000`,
    `sentinel parallel-syncs ${name} 1`,
    '',
  ].join('\n'));
  return runRedisProcess('redis-sentinel', [conf], host, port, dir);
}
