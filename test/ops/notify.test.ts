/**
 * systemd's notify protocol as `fulcrum run` speaks it (src/ops/notify.ts), received on a
 * NOTIFY_SOCKET this test makes: an AF_UNIX datagram socket bound by python3 (Node has none),
 * which prints each message with the sender's PID (SO_PASSCRED) as one JSON line. Run once through
 * the relay's notify() (sent from fulcrum's own PID, to a path) and once without a relay, through
 * systemd-notify (another PID, to an abstract "@name" socket).
 * Addresses: 127.2.41.0/24.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectClient, freePort, readLine, waitFor } from '../helpers/net.ts';
import { haveBinary } from '../helpers/netns.ts';
import { createLogger } from '../../src/observability/log.ts';
import { systemdNotifier } from '../../src/ops/notify.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = join(ROOT, 'bin', 'fulcrum');
const HOST = '127.2.41.1';
/** The backend answers its first health probe this late: READY=1 must wait for it. */
const PROBE_DELAY_MS = 800;

/** Binds argv[1] (a path, or "@name": abstract), prints {pid, msg} per datagram; "bound" first. */
const RECEIVER = `
import socket, struct, sys, json, os
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
a = sys.argv[1]
s.bind('\\0' + a[1:] if a.startswith('@') else a)
print(json.dumps({'bound': True}), flush=True)
while True:
    data, anc, flags, _ = s.recvmsg(65536, 1024)
    pid = None
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack('iII', payload[:12])[0]
        elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            for fd in struct.unpack('%di' % (len(payload) // 4), payload[:len(payload) - len(payload) % 4]):
                os.close(fd)
    print(json.dumps({'pid': pid, 'msg': data.decode()}), flush=True)
`;

interface Message {
  pid: number;
  msg: string;
  /** Index in the test's own event log (see `events`). */
  at: number;
}

let tmp = '';
const children: ChildProcess[] = [];
/** What happened, in the order this test saw it: probe connections, replies, messages. */
const events: string[] = [];
let backend: Server;
let backendPort = 0;
let replies = 0;

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'fulcrum-notify-'));
  // The service's backend: its health check (send_expect) is answered PROBE_DELAY_MS late, the
  // first round therefore ends no sooner; a client's line is echoed at once.
  backend = createServer((s: Socket) => {
    s.setEncoding('utf8');
    s.on('error', () => undefined);
    s.once('data', (d: string) => {
      if (d.startsWith('PING')) {
        setTimeout(() => {
          replies++;
          events.push('probe-replied');
          s.end('PONG\n');
        }, PROBE_DELAY_MS);
      } else {
        s.end(`echo ${d}`);
      }
    });
  });
  await new Promise<void>((r) => backend.listen(0, HOST, r));
  backendPort = (backend.address() as { port: number }).port;
});

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  backend?.close();
  rmSync(tmp, { recursive: true, force: true });
});

/** Starts the receiver on `address`; the messages fill as datagrams arrive (BARRIER=1, systemd-notify's wait, only counted). */
async function receiver(address: string, barriers = { count: 0 }): Promise<Message[]> {
  const py = spawn('python3', ['-c', RECEIVER, address], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(py);
  const messages: Message[] = [];
  let buf = '';
  let bound = false;
  py.stdout!.setEncoding('utf8');
  py.stdout!.on('data', (d: string) => {
    buf += d;
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = JSON.parse(buf.slice(0, i)) as { bound?: boolean; pid: number; msg: string };
      buf = buf.slice(i + 1);
      if (line.bound) bound = true;
      else if (line.msg === 'BARRIER=1') barriers.count++;
      else {
        events.push(line.msg);
        messages.push({ pid: line.pid, msg: line.msg, at: events.length - 1 });
      }
    }
  });
  await waitFor(() => bound, 5000, 'the receiver bound its socket');
  return messages;
}

function configFile(port: number): string {
  const file = join(tmp, `fulcrum-${port}.yaml`);
  writeFileSync(file, `
services:
  - name: web
    listen: ${HOST}:${port}
    health:
      type: send_expect
      interval: 60s
      timeout: 5s
      rise: 1
      send_expect: { send: "PING\\n", expect: PONG }
    backends:
      - address: ${HOST}:${backendPort}
logging: { level: info, connections: false }
`);
  return file;
}

const count = (messages: Message[], msg: string): number => messages.filter((m) => m.msg === msg).length;

describe.skipIf(!haveBinary('python3'))('sd_notify (NOTIFY_SOCKET)', () => {
  for (const via of ['relay', 'systemd-notify'] as const) {
    it.skipIf(via === 'systemd-notify' && !haveBinary('systemd-notify'))(`through ${via}: READY=1 once listening and probed, WATCHDOG=1 repeatedly, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM`, async () => {
      // The relay sends to a path, systemd-notify to an abstract name: both forms of NOTIFY_SOCKET.
      const address = via === 'relay' ? join(tmp, 'notify.sock') : `@fulcrum-notify-test-${process.pid}`;
      const barriers = { count: 0 };
      const messages = await receiver(address, barriers);
      const port = await freePort(HOST);
      const file = configFile(port);
      const env: NodeJS.ProcessEnv = { ...process.env, PATH: '/usr/bin:/bin', NOTIFY_SOCKET: address, WATCHDOG_USEC: '400000' };
      if (via === 'systemd-notify') env.FULCRUM_RELAY = 'off';
      else delete env.FULCRUM_RELAY;
      delete env.WATCHDOG_PID;
      const repliesBefore = replies;
      const start = events.length;
      const child = spawn(BIN, ['run', '--config', file], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
      children.push(child);
      let output = '';
      child.stdout!.on('data', (d) => (output += d));
      child.stderr!.on('data', (d) => (output += d));
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));

      await waitFor(() => count(messages, 'READY=1') === 1, 20_000, `READY=1 (fulcrum said: ${output})`);
      const ready = messages.find((m) => m.msg === 'READY=1')!;
      // After the first health round: the probe's late reply came before READY=1.
      expect(replies).toBe(repliesBefore + 1);
      expect(events.lastIndexOf('probe-replied', ready.at)).toBeGreaterThanOrEqual(start);
      // And the listener accepts and serves at once.
      const client = await connectClient(port, HOST);
      client.write('hello\n');
      expect(await readLine(client)).toBe('echo hello');
      client.destroy();

      // The watchdog: every WATCHDOG_USEC/2 = 200 ms, from the first moments on.
      const watchdogs = count(messages, 'WATCHDOG=1');
      await waitFor(() => count(messages, 'WATCHDOG=1') >= watchdogs + 3, 5000, 'three more WATCHDOG=1');

      // SIGHUP: RELOADING=1 (with the monotonic clock), then READY=1 once the reload is done.
      const before = messages.length;
      child.kill('SIGHUP');
      await waitFor(() => count(messages, 'READY=1') === 2, 10_000, 'READY=1 after the reload');
      const around = messages.slice(before).filter((m) => m.msg !== 'WATCHDOG=1').map((m) => m.msg);
      expect(around).toHaveLength(2);
      expect(around[0]).toMatch(/^RELOADING=1\nMONOTONIC_USEC=\d+$/);
      expect(around[1]).toBe('READY=1');

      // SIGTERM: STOPPING=1, and a clean exit.
      child.kill('SIGTERM');
      await waitFor(() => count(messages, 'STOPPING=1') === 1, 10_000, 'STOPPING=1');
      expect(await exited).toBe(0);
      const stopping = messages.findIndex((m) => m.msg === 'STOPPING=1');
      expect(messages.slice(stopping + 1).map((m) => m.msg)).not.toContain('WATCHDOG=1');

      // Who sent them: fulcrum itself through the relay, nothing else; systemd-notify follows
      // each message with its barrier (it waits until the manager has read it). Run by a user
      // without CAP_SYS_ADMIN, systemd-notify's messages carry its own PID, not fulcrum's: the
      // unit has NotifyAccess=all for them.
      if (via === 'relay') {
        expect([...new Set(messages.map((m) => m.pid))]).toEqual([child.pid]);
        expect(barriers.count).toBe(0);
      } else {
        expect(barriers.count).toBeGreaterThanOrEqual(messages.length);
      }
    });
  }

  it('a process that takes over (fulcrum upgrade) names itself with MAINPID and only then feeds the watchdog meant for the old one', async () => {
    const address = join(tmp, 'takeover.sock');
    const messages = await receiver(address);
    // systemd set WATCHDOG_PID to the process it started, not this one.
    const notifier = systemdNotifier(createLogger('silent'), { ...process.env, NOTIFY_SOCKET: address, WATCHDOG_USEC: '100000', WATCHDOG_PID: '1' })!;
    try {
      expect(notifier.via).toBe(process.env.FULCRUM_RELAY === 'off' ? 'systemd-notify' : 'relay');
      notifier.ready();
      await waitFor(() => count(messages, 'READY=1') === 1, 5000, 'READY=1');
      expect(count(messages, 'WATCHDOG=1')).toBe(0);
      notifier.mainPid();
      await waitFor(() => count(messages, 'WATCHDOG=1') >= 3, 5000, 'WATCHDOG=1 once this process is the main one');
      expect(messages[1].msg).toBe(`MAINPID=${process.pid}`);
      // The old process, handing over, stops feeding it and says nothing more.
      notifier.close();
      const fed = count(messages, 'WATCHDOG=1');
      notifier.stopping();
      await waitFor(() => count(messages, 'STOPPING=1') === 1, 5000, 'STOPPING=1');
      expect(count(messages, 'WATCHDOG=1')).toBe(fed);
    } finally {
      notifier.close();
    }
  });
});
