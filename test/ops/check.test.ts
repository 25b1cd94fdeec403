/**
 * What `fulcrum check` says beyond validation, run as an operator runs it: a too-open secret
 * file of any kind — a probe's password too — fails the check with its setting, path and mode
 * (src/control/preflight.ts, which `fulcrum run` refuses by too); the capabilities the config
 * needs (src/ops/check.ts); an admin API beyond loopback.
 */
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = join(ROOT, 'bin', 'fulcrum');
const dir = mkdtempSync(join(tmpdir(), 'fulcrum-check-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function check(yaml: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const file = join(dir, `c${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, yaml);
  return new Promise((resolve) => {
    const child = spawn(BIN, ['check', '--config', file], { cwd: ROOT, env: { ...process.env, PATH: '/usr/bin:/bin:/usr/sbin:/sbin' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

const service = (health = '', listen = '127.0.0.1:15432'): string => `
services:
  - name: db
    listen: ${listen}
${health}    backends: [{ address: 127.0.0.1:5432 }]
`;

describe('fulcrum check', () => {
  it('refuses a probe password file others can read, naming the setting, the path and the mode', async () => {
    const password = join(dir, 'pg.password');
    writeFileSync(password, 'secret\n');
    chmodSync(password, 0o644);
    const yaml = service(`    health:\n      type: postgres\n      postgres: { password_file: ${password} }\n`);
    const r = await check(yaml);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`services[0].health.postgres.password_file: ${password}: is accessible by group or others (mode 0644)`);
    expect(r.stdout).not.toContain('config OK');
    chmodSync(password, 0o600);
    const ok = await check(yaml);
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
  });

  it('refuses every unusable secret file at once: a missing admin token, a too-open heartbeat key', async () => {
    const key = join(dir, 'ha.key');
    writeFileSync(key, 'k'.repeat(32));
    chmodSync(key, 0o640);
    const r = await check(`${service()}
admin:
  token_file: ${join(dir, 'missing.token')}
ha:
  vip: 10.0.0.100/24
  interface: lo
  bind: 127.0.0.1:17946
  peer: 127.0.0.2:17946
  priority: 100
  secret_file: ${key}
`);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('[FULCRUM_ERR_CONFIG_INVALID]');
    expect(r.stderr).toContain(`ha.secret_file: ${key}: is accessible by group or others (mode 0640)`);
    expect(r.stderr).toContain(`admin.token_file: ${join(dir, 'missing.token')}: cannot read (ENOENT)`);
  });

  it('says what capabilities the config needs and whether this process holds them', async () => {
    const r = await check(service('', '127.0.0.1:443'));
    expect(r.code).toBe(0);
    const held = process.getuid?.() === 0;
    expect(r.stdout).toContain(held
      ? 'note: CAP_NET_BIND_SERVICE is needed by services[db].listen 127.0.0.1:443 (ports below 1024); this process holds it'
      : 'warning: CAP_NET_BIND_SERVICE is needed by services[db].listen 127.0.0.1:443 (ports below 1024); this process lacks it');
    // Nothing to say of a config that needs none.
    expect((await check(service())).stdout).not.toMatch(/CAP_/);
  });

  it('says when the admin API listens beyond loopback, and warns when its reads need no token', async () => {
    const open = await check(`${service()}admin:\n  listen: 0.0.0.0:19900\n`);
    expect(open.code).toBe(0);
    expect(open.stdout).toContain('note: admin API listens on 0.0.0.0:19900, beyond loopback\n');
    expect(open.stdout).toContain('warning: admin API listens beyond loopback and serves reads (services, backends, metrics) without a token');
    const token = join(dir, 'admin.token');
    writeFileSync(token, 'a-token\n', { mode: 0o600 });
    const closed = await check(`${service()}admin:\n  listen: 0.0.0.0:19900\n  token_file: ${token}\n  auth_reads: true\n`);
    expect(closed.stdout).toContain('note: admin API listens on 0.0.0.0:19900, beyond loopback (reads and changes need the token)\n');
    expect(closed.stdout).not.toContain('warning:');
    const loopback = await check(`${service()}admin:\n  listen: 127.0.0.1:19900\n`);
    expect(loopback.stdout).not.toContain('admin API');
  });
});
