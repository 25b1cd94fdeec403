/**
 * The one reader of secret files (config/secrets.ts) and its rule: one trailing line ending
 * stripped, nothing else; empty refused; a file group or others may access refused with its path
 * and mode, as ssh refuses a private key; not a regular file refused (a FIFO would block); relative
 * paths in a config file resolved against its folder. And each reader of a secret uses it.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readToken } from '../../src/admin/server.ts';
import { loadConfig } from '../../src/config/load.ts';
import { readSecretFile, readSecretFileSync, type SecretSetting } from '../../src/config/secrets.ts';
import { readSecret as readHaKey } from '../../src/failover/heartbeat.ts';
import { readSecret as readProbePassword } from '../../src/health/probes/probe.ts';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'fulcrum-secrets-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
/** A file holding `content` with `mode` (chmod after writing: the umask does not decide). */
function secret(content: string | Buffer, mode = 0o600): string {
  const f = join(dir, `s${n++}`);
  writeFileSync(f, content);
  chmodSync(f, mode);
  return f;
}

/** Both readers (start-up's sync one and the probes' async one) on the same file. */
async function readBoth(setting: SecretSetting, file: string): Promise<string> {
  const sync = readSecretFileSync(setting, file).toString('latin1');
  const async = (await readSecretFile(setting, file)).toString('latin1');
  expect(async).toBe(sync);
  return sync;
}

async function refusal(setting: SecretSetting, file: string): Promise<{ code: string; message: string }> {
  let syncErr: { code: string; message: string } | undefined;
  try {
    readSecretFileSync(setting, file);
  } catch (err) {
    syncErr = err as { code: string; message: string };
  }
  if (!syncErr) throw new Error(`${file} was not refused`);
  await expect(readSecretFile(setting, file)).rejects.toMatchObject({ code: syncErr.code, message: syncErr.message });
  return { code: syncErr.code, message: syncErr.message };
}

describe('the secret file rule', () => {
  it('strips one trailing "\\n" or "\\r\\n" and nothing else', async () => {
    expect(await readBoth('admin.token_file', secret('tok\n'))).toBe('tok');
    expect(await readBoth('admin.token_file', secret('tok\r\n'))).toBe('tok');
    expect(await readBoth('admin.token_file', secret('tok'))).toBe('tok');
    expect(await readBoth('admin.token_file', secret(' a b \n'))).toBe(' a b ');
    expect(await readBoth('admin.token_file', secret('tok\n\n'))).toBe('tok\n');
    expect(await readBoth('admin.token_file', secret('tok\r'))).toBe('tok\r');
    expect((await readSecretFile('ha.secret_file', secret(Buffer.from([0, 1, 0xff, 0x0a])))).equals(Buffer.from([0, 1, 0xff]))).toBe(true);
  });

  it('refuses an empty secret', async () => {
    for (const content of ['', '\n', '\r\n']) {
      const f = secret(content);
      expect(await refusal('health.redis.password_file', f)).toEqual({ code: 'FULCRUM_ERR_PROBE_SECRET', message: `health.redis.password_file ${f}: is empty` });
    }
  });

  it('refuses a file group or others may access, naming the path and the mode; 0600 and 0400 are fine', async () => {
    for (const mode of [0o644, 0o640, 0o604, 0o620, 0o601, 0o666]) {
      const f = secret('pw\n', mode);
      const { code, message } = await refusal('admin.token_file', f);
      expect(code).toBe('FULCRUM_ERR_ADMIN_TOKEN');
      expect(message).toBe(`admin.token_file ${f}: is accessible by group or others (mode 0${mode.toString(8)}); a secret file must be 0600 or 0400: chmod 600 it`);
    }
    expect(await readBoth('admin.token_file', secret('pw\n', 0o600))).toBe('pw');
    expect(await readBoth('admin.token_file', secret('pw\n', 0o400))).toBe('pw');
  });

  it('refuses what is not a regular file (a FIFO would block the reader), and a missing file', async () => {
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', ['-m', '600', fifo]);
    expect(await refusal('ha.secret_file', fifo)).toEqual({ code: 'FULCRUM_ERR_HA_SECRET', message: `ha.secret_file ${fifo}: is not a regular file` });
    const sub = join(dir, 'a-directory');
    mkdirSync(sub, { mode: 0o700 });
    expect((await refusal('ha.secret_file', sub)).message).toBe(`ha.secret_file ${sub}: is not a regular file`);
    const missing = join(dir, 'missing');
    expect(await refusal('health.mysql.password_file', missing)).toEqual({ code: 'FULCRUM_ERR_PROBE_SECRET', message: `health.mysql.password_file ${missing}: cannot read (ENOENT)` });
  });
});

describe('every reader of a secret uses the rule', () => {
  it('the heartbeat key (ha.secret_file, FULCRUM_ERR_HA_SECRET; at least 16 bytes)', () => {
    expect(readHaKey(secret('0123456789abcdef \n')).toString()).toBe('0123456789abcdef ');
    const open = secret('0123456789abcdef\n', 0o644);
    expect(() => readHaKey(open)).toThrow(expect.objectContaining({ code: 'FULCRUM_ERR_HA_SECRET', message: expect.stringContaining(`${open}: is accessible by group or others (mode 0644)`) }));
  });

  it('the admin token (admin.token_file, FULCRUM_ERR_ADMIN_TOKEN)', () => {
    expect(readToken(secret('s3cret\n'))).toBe('s3cret');
    const open = secret('s3cret\n', 0o640);
    expect(() => readToken(open)).toThrow(expect.objectContaining({ code: 'FULCRUM_ERR_ADMIN_TOKEN', message: expect.stringContaining(`${open}: is accessible by group or others (mode 0640)`) }));
  });

  it('the probes\' passwords (health.*.password_file): the probe fails with the reader\'s words', async () => {
    expect(await readProbePassword(secret('pw \r\n'), 'health.postgres.password_file')).toBe('pw ');
    const open = secret('pw\n', 0o644);
    await expect(readProbePassword(open, 'health.postgres.password_file')).rejects.toMatchObject({
      name: 'ProbeFailure',
      message: `health.postgres.password_file ${open}: is accessible by group or others (mode 0644); a secret file must be 0600 or 0400: chmod 600 it`,
    });
  });
});

describe('relative secret paths in a config file', () => {
  it('are resolved against the config file\'s folder, not the working directory', () => {
    const folder = join(dir, 'etc');
    mkdirSync(folder);
    const file = join(folder, 'fulcrum.yaml');
    writeFileSync(file, `
admin: { listen: 127.0.0.1:9000, token_file: admin.token }
ha:
  vip: 198.51.100.10/24
  interface: eth0
  bind: 10.0.0.1:5999
  peer: 10.0.0.2:5999
  priority: 100
  secret_file: ./keys/ha.secret
services:
  - name: db
    listen: 127.0.0.1:6000
    health: { type: redis, redis: { password_file: ../pw/redis } }
    backends: [{ address: 127.0.0.1:6001 }]
  - name: pg
    listen: 127.0.0.1:6002
    health: { type: postgres, postgres: { password_file: /abs/pg.pw, tls: verify-full, ca_file: tls/ca.pem } }
    backends: [{ address: 127.0.0.1:6003 }]
  - name: cache
    listen: 127.0.0.1:6004
    health: { type: mysql, mysql: { tls: verify-full, ca_file: /abs/ca.pem } }
    discover: { redis_sentinel: { sentinels: [127.0.0.1:26379], master: m, password_file: sentinel.pw } }
    backends: []
`);
    const c = loadConfig(file);
    expect(c.admin?.token_file).toBe(join(folder, 'admin.token'));
    expect(c.ha?.secret_file).toBe(join(folder, 'keys', 'ha.secret'));
    expect(c.services[0].health?.redis?.password_file).toBe(join(dir, 'pw', 'redis'));
    expect(c.services[1].health?.postgres?.password_file).toBe('/abs/pg.pw');
    // Every other path a config holds: the probes' CA files and Sentinel's password.
    expect(c.services[1].health?.postgres?.ca_file).toBe(join(folder, 'tls', 'ca.pem'));
    expect(c.services[2].health?.mysql?.ca_file).toBe('/abs/ca.pem');
    expect(c.services[2].discover?.redis_sentinel?.password_file).toBe(join(folder, 'sentinel.pw'));
  });
});
