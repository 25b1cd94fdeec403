/**
 * Local errors (src/local-errors.ts) are fulcrum's problem, not the backend's: a fulcrum out of
 * file descriptors keeps a healthy backend up. The monitor and its probe thread run in a child
 * process under `prlimit --nofile` (fixtures/emfile-monitor.ts), which fills its own descriptor
 * table while the probes go on.
 */
import { execFile } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LOCAL_ERRORS, localErrorCode } from '../../src/local-errors.ts';

const HOST = '127.3.9.1';
let server: net.Server;
let address: string;

beforeAll(async () => {
  server = net.createServer((s) => s.on('error', () => {}).end());
  await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
  address = `${HOST}:${(server.address() as net.AddressInfo).port}`;
});
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

describe('local errors', () => {
  it('knows the codes on an error and on its cause', () => {
    expect([...LOCAL_ERRORS].sort()).toEqual(['EADDRNOTAVAIL', 'EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM', 'ENOSPC']);
    expect(localErrorCode(Object.assign(new Error('connect EMFILE'), { code: 'EMFILE' }))).toBe('EMFILE');
    expect(localErrorCode(new Error('wrapped', { cause: Object.assign(new Error('x'), { code: 'ENFILE' }) }))).toBe('ENFILE');
    expect(localErrorCode(Object.assign(new Error('refused'), { code: 'ECONNREFUSED' }))).toBeUndefined();
    expect(localErrorCode(undefined)).toBeUndefined();
  });

  it('a monitor whose probes hit EMFILE skips them and never marks a healthy backend down', async () => {
    const fixture = new URL('./fixtures/emfile-monitor.ts', import.meta.url).pathname;
    const [out, log] = await new Promise<[string, string]>((resolve, reject) => {
      execFile('prlimit', ['--nofile=256:256', process.execPath, fixture, address], { timeout: 30_000 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`${err.message}\n${stderr}`));
        else resolve([stdout, stderr]);
      });
    });
    const r = { ...JSON.parse(out.trim().split('\n').pop()!), log: log.split('\n').filter((l) => l && !l.includes('"probe failed"')).map((l) => l.slice(0, 300)) };
    expect(r.held).toBeGreaterThan(100);
    expect(r.up).toBe(true);
    expect(r.transitions).toEqual([]);
    expect(r.failed).toEqual([]);
    expect(r.skipped, JSON.stringify(r)).toBeGreaterThanOrEqual(10);
    expect(r.reasons.filter((x: string) => x !== 'connected')).toEqual(['not probed: EMFILE here (fulcrum is out of files, memory or local ports)']);
    expect(r.okAfter).toBeGreaterThanOrEqual(3);
  }, 40_000);

  it('a probe whose password file cannot be opened for want of descriptors is skipped, not failed', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fulcrum-emfile-'));
    const file = join(dir, 'redis.pw');
    writeFileSync(file, 'pw\n');
    chmodSync(file, 0o600);
    const fixture = new URL('./fixtures/emfile-secret.ts', import.meta.url).pathname;
    try {
      const out = await new Promise<string>((resolve, reject) => {
        execFile('prlimit', ['--nofile=128:128', process.execPath, fixture, file], { timeout: 30_000 }, (err, stdout, stderr) => {
          if (err) reject(new Error(`${err.message}\n${stderr}`));
          else resolve(stdout);
        });
      });
      const r = JSON.parse(out.trim().split('\n').pop()!);
      expect(r.held).toBeGreaterThan(50);
      // The reader hands the local error on as it came (not as a SecretFileError naming the file)…
      expect(r.thrown).toEqual({ name: 'Error', code: 'EMFILE' });
      // …so the probe is skipped: the file is fine, this process is out of descriptors.
      expect(r.during).toMatchObject({ ok: false, skipped: 'EMFILE' });
      // With descriptors again, the same probe reads its password and fails where it should.
      expect(r.after.ok).toBe(false);
      expect(r.after.skipped).toBeUndefined();
      expect(r.after.reason).toMatch(/ECONNREFUSED|refused/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 40_000);
});
