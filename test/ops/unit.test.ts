/**
 * packaging/fulcrum.service: systemd's own checker finds nothing to say about it (installed at
 * this checkout instead of /opt/fulcrum, so its ExecStart= names a real executable), and its
 * settings match what fulcrum does: notify with the watchdog, SIGHUP reloads, a stop timeout
 * that covers the default shutdown_grace and bgp.drain, the capabilities src/ops/capabilities.ts
 * checks for.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { bgpSchema, configSchema } from '../../src/config/schema.ts';
import { CAPABILITIES } from '../../src/ops/capabilities.ts';
import { haveBinary } from '../helpers/netns.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, '');
const UNIT = readFileSync(join(ROOT, 'packaging', 'fulcrum.service'), 'utf8');
const tmp = mkdtempSync(join(tmpdir(), 'fulcrum-unit-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** The [Service] section's settings (a key given twice keeps its last value, as systemd does). */
function serviceSettings(unit: string): Map<string, string> {
  const settings = new Map<string, string>();
  let section = '';
  for (const raw of unit.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) section = header[1];
    else if (section === 'Service') {
      const eq = line.indexOf('=');
      settings.set(line.slice(0, eq), line.slice(eq + 1));
    }
  }
  return settings;
}

/** systemd-analyze verify on `unit` saved as fulcrum.service: its exit code and everything it printed. */
function verify(unit: string): { status: number | null; output: string } {
  const file = join(tmp, 'fulcrum.service');
  writeFileSync(file, unit.replaceAll('/opt/fulcrum', ROOT));
  const r = spawnSync('systemd-analyze', ['verify', file], { encoding: 'utf8', env: { ...process.env, SYSTEMD_LOG_COLOR: '0' } });
  return { status: r.status, output: `${r.stdout}${r.stderr}`.trim() };
}

describe('packaging/fulcrum.service', () => {
  it.skipIf(!haveBinary('systemd-analyze'))('passes systemd-analyze verify without a word (and a broken copy does not)', () => {
    expect(verify(UNIT)).toEqual({ status: 0, output: '' });
    // What verify says of a mistake: a setting it cannot parse is reported, though it exits 0.
    expect(verify(UNIT.replace('Type=notify', 'Type=notfy')).output).toMatch(/Failed to parse service type/);
  });

  it('is a notify service with the watchdog, SIGHUP reloads and a graceful SIGTERM', () => {
    const s = serviceSettings(UNIT);
    expect(s.get('Type')).toBe('notify');
    expect(s.get('NotifyAccess')).toBe('all');
    expect(s.get('WatchdogSec')).toMatch(/^\d+s$/);
    expect(s.get('Restart')).toBe('on-failure');
    expect(s.get('ExecReload')).toBe('/bin/kill -HUP $MAINPID');
    expect(s.get('ExecStart')).toBe('/opt/fulcrum/bin/fulcrum run --config /etc/fulcrum/fulcrum.yaml');
    expect(s.get('KillSignal')).toBe('SIGTERM');
    expect(s.get('KillMode')).toBe('mixed');
    // The stop timeout: the default shutdown_grace, plus bgp.drain's default, plus 10 s of margin.
    const grace = configSchema.parse({ services: [{ name: 'a', listen: '127.0.0.1:1', backends: [{ address: '127.0.0.1:2' }] }] }).shutdown_grace;
    const drain = bgpSchema.parse({ speaker: 'command', vips: ['10.0.0.1'], announce: 'true', withdraw: 'true' }).drain;
    expect(s.get('TimeoutStopSec')).toBe(`${(grace + drain) / 1000 + 10}s`);
  });

  it('runs as the fulcrum user with exactly the capabilities fulcrum checks for, and a read-only system', () => {
    const s = serviceSettings(UNIT);
    expect(s.get('User')).toBe('fulcrum');
    const caps = Object.keys(CAPABILITIES).sort();
    expect(s.get('AmbientCapabilities')?.split(' ').sort()).toEqual(caps);
    expect(s.get('CapabilityBoundingSet')?.split(' ').sort()).toEqual(caps);
    expect(s.get('NoNewPrivileges')).toBe('yes');
    expect(s.get('ProtectSystem')).toBe('strict');
    expect(s.get('ProtectHome')).toBe('yes');
    expect(s.get('PrivateTmp')).toBe('yes');
    expect(Number(s.get('LimitNOFILE'))).toBeGreaterThanOrEqual(65_536);
    // V8 writes machine code at run time: MemoryDenyWriteExecute would kill fulcrum at start.
    expect(s.has('MemoryDenyWriteExecute')).toBe(false);
  });
});
