/**
 * The bgp section: its fields validated with errors naming them, the cross-checks (what each
 * speaker needs, duplicates, a VIP under both bgp and ha), and the speaker's binaries checked at
 * start and by `fulcrum check`, a missing one named.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkSpeakerBinaries } from '../../src/bgp/index.ts';
import { firstWord, substitute } from '../../src/bgp/command.ts';
import { gobgpdConfig } from '../../src/bgp/gobgp.ts';
import { parseConfig } from '../../src/config/load.ts';
import { describeChanges } from '../../src/control/diff.ts';
import { ConfigInvalidError } from '../../src/errors.ts';

const services = `
services:
  - name: web
    listen: 10.0.100.10:80
    backends: [{ address: 127.0.0.1:7001 }]
`;

const gobgp = `${services}bgp:
  speaker: gobgp
  asn: 65001
  router_id: 10.0.1.11
  neighbors: [ { address: 10.0.1.1, asn: 65000 } ]
  vips: [ 10.0.100.10/32 ]
`;

function problemsOf(text: string): string[] {
  try {
    parseConfig(text, 'test.yaml');
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigInvalidError);
    return (err as ConfigInvalidError).problems.map((p) => `${p.path}: ${p.message}`);
  }
  throw new Error('expected the config to be refused');
}

describe('config: bgp', () => {
  it('takes the issue\'s example with its defaults', () => {
    const c = parseConfig(gobgp);
    expect(c.bgp).toEqual({
      speaker: 'gobgp', asn: 65001, router_id: '10.0.1.11', neighbors: [{ address: '10.0.1.1', asn: 65000 }],
      vips: ['10.0.100.10'], announce_when: { min_backends_up: 1 }, drain: 5000, hold_time: 3000, liveness: 1000,
    });
    // A bare address is a /32 too.
    expect(parseConfig(gobgp.replace('10.0.100.10/32', '10.0.100.10')).bgp?.vips).toEqual(['10.0.100.10']);
  });

  it('names each bad field and its value', () => {
    expect(problemsOf(gobgp.replace('asn: 65001', 'asn: 0').replace('router_id: 10.0.1.11', 'router_id: 10.0.1')
      .replace('address: 10.0.1.1, asn: 65000', 'address: 10.0.1.300, asn: 4294967295')
      .replace('10.0.100.10/32', '10.0.100.0/24').replace('speaker: gobgp', 'speaker: gobgp\n  drain: soon\n  hold_time: 1s'))).toEqual([
      'bgp.asn: must be an AS number 1–4294967294, got 0',
      'bgp.router_id: must be an IPv4 address like 10.0.1.1, got "10.0.1"',
      'bgp.neighbors[0].address: must be an IPv4 address like 10.0.1.1, got "10.0.1.300"',
      'bgp.neighbors[0].asn: must be an AS number 1–4294967294, got 4294967295',
      'bgp.vips[0]: must be an IPv4 address, optionally with /32, like 10.0.100.10/32, got "10.0.100.0/24"',
      'bgp.drain: must be a duration like 500ms, 2s, 30m or 1h, got "soon"',
      'bgp.hold_time: must be a duration like 500ms, 2s, 30m or 1h (at least 3000ms), got "1s"',
    ]);
    expect(problemsOf(gobgp.replace('speaker: gobgp', 'speaker: bird'))).toEqual(['bgp.speaker: must be one of gobgp | command, got "bird"']);
    expect(problemsOf(gobgp.replace('vips: [ 10.0.100.10/32 ]', 'vips: []'))).toEqual(['bgp.vips: must list at least one VIP, got []']);
    expect(problemsOf(gobgp.replace('speaker: gobgp', 'speaker: gobgp\n  annouce: x'))).toEqual(['bgp.annouce: unknown key; did you mean "announce"?']);
  });

  it('asks each speaker for what it needs, and nothing it does not use', () => {
    expect(problemsOf(`${services}bgp:\n  speaker: gobgp\n  vips: [ 10.0.100.10 ]\n`)).toEqual([
      'bgp.asn: is required with speaker: gobgp',
      'bgp.router_id: is required with speaker: gobgp',
      'bgp.neighbors: must list at least one neighbor with speaker: gobgp',
    ]);
    expect(problemsOf(gobgp.replace('speaker: gobgp', 'speaker: gobgp\n  announce: "birdc enable vip"'))).toEqual([
      'bgp.announce: is only used with speaker: command, got "birdc enable vip" with speaker: gobgp',
    ]);
    expect(problemsOf(`${services}bgp:\n  speaker: command\n  vips: [ 10.0.100.10 ]\n  announce: "birdc enable vip"\n`)).toEqual([
      'bgp.withdraw: is required with speaker: command (a shell command; {vip} is replaced by the address)',
    ]);
    const c = parseConfig(`${services}bgp:\n  speaker: command\n  vips: [ 10.0.100.10 ]\n  announce: "exabgpcli announce route {prefix} next-hop self"\n  withdraw: "exabgpcli withdraw route {prefix}"\n`);
    expect(c.bgp?.speaker).toBe('command');
  });

  it('refuses duplicates, and a VIP under both bgp and ha with a message that says so', () => {
    expect(problemsOf(gobgp.replace('vips: [ 10.0.100.10/32 ]', 'vips: [ 10.0.100.10/32, 10.0.100.10 ]')
      .replace('neighbors: [ { address: 10.0.1.1, asn: 65000 } ]', 'neighbors: [ { address: 10.0.1.1, asn: 65000 }, { address: 10.0.1.1, asn: 65002 } ]'))).toEqual([
      'bgp.neighbors[1].address: duplicates bgp.neighbors[0].address, got "10.0.1.1"',
      'bgp.vips[1]: duplicates bgp.vips[0], got "10.0.100.10"',
    ]);
    expect(problemsOf(`${gobgp}ha:
  vip: 10.0.100.10/24
  interface: eth0
  bind: 192.0.2.1:7946
  peer: 192.0.2.2:7946
  priority: 100
  secret_file: /nonexistent
`)).toEqual([
      'bgp.vips[0]: is also under ha.vip: a VIP is held either by bgp (announced by every node) or by ha (moved between a pair), not both, got "10.0.100.10"',
    ]);
  });

  it('names a speaker binary that is missing (at start and in fulcrum check)', () => {
    const path = process.env.PATH;
    const empty = mkdtempSync(join(tmpdir(), 'fulcrum-empty-path-'));
    try {
      process.env.PATH = empty;
      expect(() => checkSpeakerBinaries(parseConfig(gobgp).bgp!)).toThrow(
        expect.objectContaining({ code: 'FULCRUM_ERR_BGP_SPEAKER', message: 'bgp.speaker gobgp (Debian package gobgpd): gobgpd not found on PATH' }),
      );
      const command = parseConfig(`${services}bgp:\n  speaker: command\n  vips: [ 10.0.100.10 ]\n  announce: "/bin/true {vip}"\n  withdraw: "no-such-birdc disable vip"\n`).bgp!;
      expect(() => checkSpeakerBinaries(command)).toThrow(
        expect.objectContaining({ code: 'FULCRUM_ERR_BGP_SPEAKER', message: 'bgp.withdraw: no-such-birdc not found on PATH' }),
      );
    } finally {
      process.env.PATH = path;
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it('fulcrum check reports the missing binary with its code', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fulcrum-check-bgp-'));
    const file = join(dir, 'c.yaml');
    writeFileSync(file, `${services}bgp:\n  speaker: command\n  vips: [ 10.0.100.10 ]\n  announce: "no-such-exabgpcli announce route {prefix}"\n  withdraw: "true"\n`);
    const bin = new URL('../../bin/fulcrum', import.meta.url).pathname;
    const r = await new Promise<{ code: number; out: string }>((resolve) =>
      execFile(bin, ['check', '--config', file], (err, stdout, stderr) => resolve({ code: err ? (err as { code?: number }).code ?? 1 : 0, out: stdout + stderr })));
    expect(r.code).not.toBe(0);
    expect(r.out).toContain('bgp.announce: no-such-exabgpcli not found on PATH');
    expect(r.out).toContain('FULCRUM_ERR_BGP_SPEAKER');
    rmSync(dir, { recursive: true, force: true });
  });

  it('substitutes {vip} and {prefix}; finds the binary a command runs', () => {
    expect(substitute('birdc enable "vip{vip}" # {prefix}', '10.0.100.10')).toBe('birdc enable "vip10.0.100.10" # 10.0.100.10/32');
    expect(firstWord('  LANG=C birdc -s /run/bird.ctl enable vip')).toBe('birdc');
    expect(firstWord('/usr/sbin/birdc disable vip')).toBe('/usr/sbin/birdc');
    expect(firstWord('(echo x)')).toBeUndefined();
  });

  it('writes gobgpd a config with the hold time, quick retries and no listener of its own', () => {
    const text = gobgpdConfig({ asn: 65001, routerId: '10.0.1.11', neighbors: [{ address: '10.0.1.1', asn: 65000 }], holdTimeMs: 3000 });
    expect(text).toContain('as = 65001\n  router-id = "10.0.1.11"\n  port = -1');
    expect(text).toContain('neighbor-address = "10.0.1.1"\n    peer-as = 65000');
    expect(text).toContain('hold-time = 3\n    keepalive-interval = 1\n    connect-retry = 1');
  });

  it('a reload that changes the section reports it as needing a restart', () => {
    const prev = parseConfig(gobgp);
    expect(describeChanges(prev, parseConfig(gobgp.replace('drain: 5s', '').replace('asn: 65001', 'asn: 65002'))).restart_required).toEqual(['bgp']);
    expect(describeChanges(prev, parseConfig(services)).restart_required).toEqual(['bgp (removed)']);
    expect(describeChanges(prev, parseConfig(gobgp)).restart_required).toEqual([]);
  });
});
