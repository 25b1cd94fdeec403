/**
 * The log of a real `fulcrum run` with three data-plane workers, under traffic that makes every
 * worker log connection lines at the same moments: the lines of all threads come out in the order
 * they were logged, each within a second, in the text format (local time, level name, message,
 * key=value fields) and, after a reload that switches logging.format, in JSON.
 *
 * (Before LogOutput each worker wrote its own 4 KiB batches straight to stdout, flushed once a
 * second: one worker's second of lines came out after another's, and this test failed.)
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectClient, freePort, startServer, waitClose, waitFor, type TestServer } from '../helpers/net.ts';

const HOST = '127.5.40.1';
const ROOT = new URL('../../', import.meta.url).pathname;
/** The README's promise: a line is on stdout within a second of being logged. */
const WITHIN_MS = 1000;

let dir: string;
let child: ChildProcess;
let backend: TestServer;
let port: number;
let exited: Promise<number | null>;
/** Every complete stdout line, with when the test read it (epoch ms). */
const lines: { text: string; readAt: number }[] = [];

const config = (format: 'text' | 'json'): string => `workers: 3
shutdown_grace: 500ms
logging: { level: info, connections: true, format: ${format} }
services:
  - name: web
    listen: ${HOST}:${port}
    backends: [{ address: ${backend.address} }]
`;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fulcrum-log-order-'));
  backend = await startServer((s) => s.end('bye\n'), HOST);
  port = await freePort(HOST);
  await writeFile(join(dir, 'fulcrum.yaml'), config('text'));
  child = spawn(process.execPath, [join(ROOT, 'src/cli.ts'), 'run', '--config', join(dir, 'fulcrum.yaml')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let partial = '';
  child.stdout!.on('data', (d: Buffer) => {
    const readAt = Date.now();
    const parts = (partial + d.toString('utf8')).split('\n');
    partial = parts.pop()!;
    for (const text of parts) lines.push({ text, readAt });
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString('utf8'); });
  exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  await waitFor(() => {
    if (child.exitCode !== null) throw new Error(`fulcrum exited ${child.exitCode}: ${stderr}`);
    return lines.some((l) => l.text.includes('data plane ready'));
  }, 15_000, 'fulcrum run to start');
});

afterAll(async () => {
  if (child && child.exitCode === null) child.kill('SIGKILL');
  await backend?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** `n` connections, `parallel` at a time, each closed by the backend after its greeting. */
async function traffic(n: number, parallel: number): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (next < n) {
      next++;
      const c = await connectClient(port, HOST);
      await waitClose(c);
      c.destroy();
    }
  }));
}

/** "2026-12-06 09:05:42.123 INFO  message key=value …" → its parts; the time is local, as the text format writes it. */
const TEXT_LINE = /^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{3}) (TRACE|DEBUG|INFO|WARN|ERROR|FATAL) +(.*)$/;
function parseText(text: string): { at: number; level: string; rest: string } {
  const m = TEXT_LINE.exec(text);
  if (!m) throw new Error(`not a text log line: ${JSON.stringify(text)}`);
  const [y, mo, d, h, mi, s, ms] = m.slice(1, 8).map(Number);
  return { at: new Date(y, mo - 1, d, h, mi, s, ms).getTime(), level: m[8], rest: m[9] };
}

/** The key=value fields of a text line (values bare, or JSON-quoted). */
function fields(rest: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of rest.matchAll(/ ([\w.]+)=("(?:[^"\\]|\\.)*"|\S+)/g)) out[m[1]] = m[2].startsWith('"') ? JSON.parse(m[2]) : m[2];
  return out;
}

function expectInOrder(entries: { at: number; readAt: number; text: string }[]): void {
  for (let i = 1; i < entries.length; i++) {
    if (entries[i].at < entries[i - 1].at) {
      throw new Error(`line ${i} was logged before the line written ahead of it:\n  ${entries[i - 1].text}\n  ${entries[i].text}`);
    }
  }
  console.log(`${entries.length} lines in order; the latest was read ${Math.max(...entries.map((e) => e.readAt - e.at))} ms after it was logged`);
  const late = entries.filter((e) => e.readAt - e.at > WITHIN_MS);
  expect(late.map((e) => `${e.readAt - e.at}ms: ${e.text}`)).toEqual([]);
}

describe('log lines of several workers', () => {
  let textCount = 0;

  it('come out in time order within a second, as readable text lines', async () => {
    await traffic(300, 24);
    await waitFor(() => lines.filter((l) => l.text.includes(' INFO  connection ')).length >= 300, 10_000, '300 connection lines');
    textCount = lines.length;
    const parsed = lines.map((l) => ({ ...parseText(l.text), readAt: l.readAt, text: l.text }));
    expectInOrder(parsed);
    const conns = parsed.filter((p) => p.rest.startsWith('connection ')).map((p) => fields(p.rest));
    expect(conns).toHaveLength(300);
    // Every worker served some: their lines were interleaved in time, not written worker by worker.
    expect(new Set(conns.map((c) => c.worker)).size).toBe(3);
    for (const c of conns) {
      expect(c).toMatchObject({ component: 'proxy', service: 'web', backend: backend.address, reason: 'server_closed', bytes_in: '0', bytes_out: '4', retries: '0' });
      expect(c.client).toMatch(new RegExp(`^${HOST.replace(/\./g, '\\.')}:\\d+$|^127\\.0\\.0\\.1:\\d+$`));
      for (const k of ['connect_ms', 'queue_ms', 'duration_ms']) expect(Number.isFinite(Number(c[k])), k).toBe(true);
    }
    // The main thread's own lines are among them, in the same form.
    expect(parsed.some((p) => p.rest.startsWith('data plane ready ') && fields(p.rest).workers === '3')).toBe(true);
  });

  it('switch to JSON on a reload and stay in time order', async () => {
    await writeFile(join(dir, 'fulcrum.yaml'), config('json'));
    child.kill('SIGHUP');
    await waitFor(() => lines.slice(textCount).some((l) => l.text.startsWith('{') && l.text.includes('reload')), 5000, 'the reload in JSON');
    const from = lines.findIndex((l, i) => i >= textCount && l.text.startsWith('{'));
    await traffic(300, 24);
    await waitFor(() => lines.slice(from).filter((l) => l.text.includes('"msg":"connection"')).length >= 300, 10_000, '300 JSON connection lines');
    const parsed = lines.slice(from).map((l) => {
      const o = JSON.parse(l.text);
      return { o, at: Date.parse(o.time), readAt: l.readAt, text: l.text };
    });
    expectInOrder(parsed);
    const conns = parsed.filter((p) => p.o.msg === 'connection');
    expect(conns).toHaveLength(300);
    expect(new Set(conns.map((c) => c.o.worker)).size).toBe(3);
    expect(conns[0].o).toMatchObject({ level: 30, app: 'fulcrum', component: 'proxy', service: 'web', reason: 'server_closed', bytes_out: 4 });

    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(JSON.parse(lines.at(-1)!.text)).toMatchObject({ msg: 'stopped' });
  });
});
