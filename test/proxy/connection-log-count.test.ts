/**
 * The connection log of a real `fulcrum run` with two data-plane workers under load: thousands
 * of connections, 64 at a time, so both workers send full batches whose times overlap and the
 * main thread merges them (src/observability/log.ts LogOutput). Every connection's line is on
 * stdout exactly once (each connection sends a byte count of its own, so its line is known by
 * bytes_in), every line is intact JSON, and the lines are in the order they were logged.
 * Runs on both data paths (the relay's and the JavaScript one).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectClient, freePort, readAll, startEchoServer, waitFor, type TestServer } from '../helpers/net.ts';

const HOST = '127.5.42.1';
const ROOT = new URL('../../', import.meta.url).pathname;
/** Connections: several full batches (512 lines) per worker. */
const N = 3000;
const PARALLEL = 64;

let dir: string;
let child: ChildProcess;
let backend: TestServer;
let port: number;
let exited: Promise<number | null>;
let stdout = '';

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fulcrum-log-count-'));
  backend = await startEchoServer(HOST);
  port = await freePort(HOST);
  await writeFile(join(dir, 'fulcrum.yaml'), `workers: 2
shutdown_grace: 500ms
logging: { level: info, connections: true, format: json }
services:
  - name: echo
    listen: ${HOST}:${port}
    backends: [{ address: ${backend.address} }]
`);
  child = spawn(process.execPath, [join(ROOT, 'src/cli.ts'), 'run', '--config', join(dir, 'fulcrum.yaml')], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (d: string) => { stdout += d; });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString('utf8'); });
  exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  await waitFor(() => {
    if (child.exitCode !== null) throw new Error(`fulcrum exited ${child.exitCode}: ${stderr}`);
    return stdout.includes('data plane ready');
  }, 15_000, 'fulcrum run to start');
});

afterAll(async () => {
  if (child && child.exitCode === null) child.kill('SIGKILL');
  await backend?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Connection i sends i + 1 bytes, half-closes, and reads the echo to the end. */
async function traffic(): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: PARALLEL }, async () => {
    while (next < N) {
      const size = ++next;
      const c = await connectClient(port, HOST);
      const echoed = readAll(c, 10_000);
      c.end(Buffer.alloc(size, 0x61));
      expect((await echoed).length).toBe(size);
      c.destroy();
    }
  }));
}

describe('the connection log of two workers under load', () => {
  it('has every connection\'s line exactly once, intact and in time order', async () => {
    await traffic();
    const connectionLines = (): number => stdout.split('\n').filter((l) => l.includes('"msg":"connection"')).length;
    await waitFor(() => connectionLines() >= N, 10_000, `${N} connection lines`);
    // Stopped: whatever was still held is written by now, so a line written twice would show.
    child.kill('SIGTERM');
    expect(await exited).toBe(0);

    const lines = stdout.split('\n');
    expect(lines.pop()).toBe(''); // the output ends with a whole line
    const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    for (let i = 1; i < parsed.length; i++) {
      if (Date.parse(parsed[i].time as string) < Date.parse(parsed[i - 1].time as string)) {
        throw new Error(`line ${i} was logged before the line written ahead of it:\n  ${lines[i - 1]}\n  ${lines[i]}`);
      }
    }
    const conns = parsed.filter((o) => o.msg === 'connection');
    expect(conns).toHaveLength(N);
    const sizes = conns.map((o) => o.bytes_in as number).sort((a, b) => a - b);
    expect(sizes).toEqual(Array.from({ length: N }, (_, i) => i + 1));
    for (const o of conns) expect(o.bytes_out).toBe(o.bytes_in);
    expect(new Set(conns.map((o) => o.worker)).size).toBe(2); // both workers' batches were merged
    expect(parsed.at(-1)).toMatchObject({ msg: 'stopped' });
  });
});
