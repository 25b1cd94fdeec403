/**
 * Fuzzing the admin API's request handling (src/admin/server.ts) over real sockets: raw HTTP
 * requests — the corpus' valid ones (with the token: state, weight, add, remove, status,
 * metrics; without it; pipelined; chunked), mutated, spliced or random — sent to a running
 * fulcrum. Every request gets an answer that is not a server error, or a clean close, within a
 * few seconds; afterwards the API and the proxy still work.
 */
import { connect } from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, startStack, type Stack } from '../admin/stack.ts';
import { connectClient, readLine } from '../helpers/net.ts';
import { corpus, FUZZ_RUNS, inputs, rounds } from './fuzz.ts';

let stack: Stack;
let seeds: Buffer[];

/** The corpus' placeholders filled for this stack: host, backends, and the bodies' lengths. */
function fill(raw: Buffer): Buffer {
  let text = raw.toString('latin1')
    .replaceAll('{HOST}', `${stack.host}:${stack.adminPort}`)
    .replaceAll('{B0}', stack.backends[0].address)
    .replaceAll('{B1}', stack.backends[1].address);
  const head = text.indexOf('\r\n\r\n');
  const body = text.slice(head + 4);
  text = text.replace('{LEN}', String(Buffer.byteLength(body, 'latin1')));
  const chunk = /^\{CHUNK\}\r\n([^\r]*)\r\n/.exec(body);
  if (chunk) text = text.replace('{CHUNK}', chunk[1].length.toString(16));
  return Buffer.from(text, 'latin1');
}

interface Answer {
  /** The first response's status, or 0 when the server closed without one. */
  status: number;
  hung: boolean;
}

/** Sends `raw`, half-closes, and reads until the server closes (or 5 s pass: a hang). */
function send(raw: Buffer): Promise<Answer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const s = connect({ host: stack.host, port: stack.adminPort });
    const done = (hung: boolean): void => {
      clearTimeout(timer);
      s.destroy();
      const text = Buffer.concat(chunks).toString('latin1');
      const m = /^HTTP\/1\.1 (\d{3}) /.exec(text);
      resolve({ status: m ? Number(m[1]) : 0, hung });
    };
    const timer = setTimeout(() => done(true), 5000);
    s.on('connect', () => s.end(raw));
    s.on('data', (d) => chunks.push(d));
    s.on('error', () => done(false));
    s.on('close', () => done(false));
  });
}

describe('fuzz: admin API requests', () => {
  beforeAll(async () => {
    stack = await startStack({ host: '127.5.77.1', backends: 3 });
    seeds = corpus('admin').map(fill);
  });
  afterAll(() => stack?.close());

  it('the seeds are answered as meant (else the mutations below prove little)', async () => {
    const statuses = [];
    for (const s of seeds) statuses.push((await send(s)).status);
    expect(statuses.filter((st) => st >= 200 && st < 300).length).toBeGreaterThanOrEqual(6);
    expect(statuses).toContain(401);
  });

  it('every request: an answer below 500 or a clean close, never a hang; the API and the proxy work after', async () => {
    const seen = new Map<number, number>();
    await fc.assert(fc.asyncProperty(inputs(seeds, 1024), async (raw) => {
      const a = await send(raw);
      seen.set(a.status, (seen.get(a.status) ?? 0) + 1);
      expect(a.hung).toBe(false);
      expect(a.status < 500).toBe(true);
    }), rounds(Math.ceil(FUZZ_RUNS / 10)));
    expect([...seen.keys()].some((st) => st >= 200 && st < 300)).toBe(true);
    expect((await api(stack.admin, 'GET', '/api/status', undefined, null)).status).toBe(200);
    // Whatever the fuzzed requests set (drain, maint, weights), one backend stays or is made ready.
    await api(stack.admin, 'POST', `/api/services/web/backends/${stack.backends[2].address}/state`, { state: 'ready' });
    const client = await connectClient(stack.servicePort, stack.host);
    expect(await readLine(client)).toMatch(/^b\d$/);
    client.destroy();
  });
});
