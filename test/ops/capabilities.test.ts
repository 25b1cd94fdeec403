/**
 * src/ops/capabilities.ts: what a config needs, read against /proc status texts (this process's
 * and `ip`'s, given here), and the real `ip -batch -` probe run as root and as nobody.
 * test/ops/unprivileged.test.ts runs fulcrum itself without them.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.ts';
import {
  CapabilityError, capabilityNeeds, checkCapabilities, childCapabilities, has, parseStatus, requireCapabilities, requireReloadCapabilities, unprivilegedPortStart,
  type ProcessCapabilities,
} from '../../src/ops/capabilities.ts';
import { haveBinary, isRoot } from '../helpers/netns.ts';

const config = (extra = '', listen = '127.0.0.1:80'): ReturnType<typeof parseConfig> => parseConfig(`
services:
  - name: web
    listen: ${listen}
    backends: [{ address: 127.0.0.1:9000 }]
  - name: high
    listen: 127.0.0.1:8080
    backends: [{ address: 127.0.0.1:9000 }]
${extra}`, 'test.yaml');

const HA = `
ha:
  vip: 10.0.0.100/24
  interface: eth0
  bind: 10.0.1.1:7946
  peer: 10.0.1.2:7946
  priority: 100
  secret_file: /etc/fulcrum/ha.key
`;
const BGP = `
bgp:
  speaker: command
  vips: [10.0.100.10]
  announce: "true"
  withdraw: "true"
`;

const caps = (...bits: number[]): bigint => bits.reduce((set, b) => set | (1n << BigInt(b)), 0n);
const FULL = parseStatus('CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nNoNewPrivs:\t0\n');
const NONE: ProcessCapabilities = { effective: 0n, bounding: caps(10, 12, 13), noNewPrivs: false };

describe('capabilityNeeds', () => {
  it('asks CAP_NET_BIND_SERVICE for each port below ip_unprivileged_port_start, naming the setting and address', () => {
    expect(capabilityNeeds(config(), 1024)).toEqual([
      { capability: 'CAP_NET_BIND_SERVICE', what: 'services[web].listen 127.0.0.1:80 (ports below 1024)', reloadable: true },
    ]);
    // A sysctl that opens low ports to everyone: nothing needed.
    expect(capabilityNeeds(config(), 80)).toEqual([]);
    expect(capabilityNeeds(config(), 0)).toEqual([]);
    expect(capabilityNeeds(config('admin:\n  listen: 127.0.0.1:443\n', '127.0.0.1:8000'), 1024)).toEqual([
      { capability: 'CAP_NET_BIND_SERVICE', what: 'admin.listen 127.0.0.1:443 (ports below 1024)', reloadable: true },
    ]);
  });

  it('asks CAP_NET_ADMIN and CAP_NET_RAW for ha, CAP_NET_ADMIN for bgp', () => {
    expect(capabilityNeeds(config(HA, '127.0.0.1:8000'), 1024)).toEqual([
      { capability: 'CAP_NET_ADMIN', what: 'ha (ip addr add 10.0.0.100/24 dev eth0)', reloadable: false },
      { capability: 'CAP_NET_RAW', what: 'ha (arping, the gratuitous ARP for 10.0.0.100/24)', reloadable: false },
    ]);
    expect(capabilityNeeds(config(BGP, '127.0.0.1:8000'), 1024)).toEqual([
      { capability: 'CAP_NET_ADMIN', what: 'bgp (ip addr add 10.0.100.10 dev lo)', reloadable: false },
    ]);
  });

  it('reads the sysctl of this namespace', () => {
    expect(unprivilegedPortStart()).toBe(Number(readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8')));
  });
});

describe('checkCapabilities', () => {
  it('passes root with its full set', async () => {
    const r = await checkCapabilities(config(HA), { self: FULL, ip: async () => FULL, portStart: 1024 });
    expect(r.missing).toEqual([]);
    expect(r.uncertain).toEqual([]);
    expect(r.needs).toHaveLength(3);
  });

  it('names what is missing: the bind from this process, CAP_NET_ADMIN from what ip holds', async () => {
    const r = await checkCapabilities(config(HA), { self: { ...NONE, effective: caps(13) }, ip: async () => NONE, portStart: 1024 });
    expect(r.missing.map((m) => m.capability)).toEqual(['CAP_NET_BIND_SERVICE', 'CAP_NET_ADMIN']);
    // The process holds CAP_NET_ADMIN, but ip drops it (not inheritable): still missing.
    const dropped = await checkCapabilities(config(HA), { self: { ...FULL, effective: caps(10, 12, 13) }, ip: async () => NONE, portStart: 1024 });
    expect(dropped.missing.map((m) => m.capability)).toEqual(['CAP_NET_ADMIN']);
    const err = await requireCapabilities(config(HA), { self: NONE, ip: async () => NONE, portStart: 1024 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CapabilityError);
    expect((err as CapabilityError).code).toBe('FULCRUM_ERR_CAPABILITY');
    expect((err as CapabilityError).message).toContain('  CAP_NET_ADMIN: needed by ha (ip addr add 10.0.0.100/24 dev eth0)');
  });

  it('CAP_NET_RAW: uncertain where a file capability on arping could give it, missing under no_new_privs or outside the bounding set', async () => {
    const ip = async (): Promise<ProcessCapabilities> => ({ ...NONE, effective: caps(12) });
    const withFileCaps = await checkCapabilities(config(HA, '127.0.0.1:8000'), { self: NONE, ip, portStart: 1024 });
    expect(withFileCaps.missing).toEqual([]);
    expect(withFileCaps.uncertain.map((m) => m.capability)).toEqual(['CAP_NET_RAW']);
    const nnp = await checkCapabilities(config(HA, '127.0.0.1:8000'), { self: { ...NONE, noNewPrivs: true }, ip, portStart: 1024 });
    expect(nnp.missing.map((m) => m.capability)).toEqual(['CAP_NET_RAW']);
    const bounded = await checkCapabilities(config(HA, '127.0.0.1:8000'), { self: { ...NONE, bounding: caps(12) }, ip, portStart: 1024 });
    expect(bounded.missing.map((m) => m.capability)).toEqual(['CAP_NET_RAW']);
  });

  it('says when ip cannot be run at all', async () => {
    const r = await checkCapabilities(config(BGP, '127.0.0.1:8000'), { self: FULL, ip: () => childCapabilities('/nonexistent/ip'), portStart: 1024 });
    expect(r.missing).toEqual([{ capability: 'CAP_NET_ADMIN', what: 'bgp (ip addr add 10.0.100.10 dev lo); cannot run ip (ENOENT): install iproute2', reloadable: false }]);
  });
});

describe('requireReloadCapabilities', () => {
  const noBind: ProcessCapabilities = { ...NONE, effective: caps(12, 13) };
  it('refuses a reload that adds a listen port below 1024 without CAP_NET_BIND_SERVICE, naming it', async () => {
    const err = await requireReloadCapabilities(config('', '127.0.0.1:8000'), config(), { self: noBind, portStart: 1024 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CapabilityError);
    expect((err as CapabilityError).missing).toEqual([{ capability: 'CAP_NET_BIND_SERVICE', what: 'services[web].listen 127.0.0.1:80 (ports below 1024)', reloadable: true }]);
    // With the capability: passes.
    await requireReloadCapabilities(config('', '127.0.0.1:8000'), config(), { self: FULL, portStart: 1024 });
  });

  it('asks nothing of what is already in force, nor of ha or bgp (a reload does not bring them in: they wait for a restart)', async () => {
    // The same low port as before: it is bound already (the capability may have been dropped since).
    await requireReloadCapabilities(config(), config(), { self: NONE, portStart: 1024 });
    // ha and bgp added: reported as needing a restart by the reload, checked at that restart.
    const ip = async (): Promise<ProcessCapabilities> => { throw new Error('ip must not be probed'); };
    await requireReloadCapabilities(config('', '127.0.0.1:8000'), config(HA, '127.0.0.1:8000'), { self: NONE, ip, portStart: 1024 });
    await requireReloadCapabilities(config('', '127.0.0.1:8000'), config(BGP, '127.0.0.1:8000'), { self: NONE, ip, portStart: 1024 });
  });
});

describe.skipIf(!isRoot() || !haveBinary('setpriv'))('the ip probe', () => {
  it('reads what ip holds: everything as root, CAP_NET_ADMIN as nobody only when it is ambient', async () => {
    expect(has((await childCapabilities()).effective, 'CAP_NET_ADMIN')).toBe(true);
    // As nobody, through setpriv: the status read is ip's, once setpriv has exec'd it.
    const nobody = ['--reuid=nobody', '--regid=nogroup', '--clear-groups'];
    const without = await childCapabilities('setpriv', [...nobody, 'ip', '-batch', '-']);
    expect(has(without.effective, 'CAP_NET_ADMIN')).toBe(false);
    const ambient = await childCapabilities('setpriv', [...nobody, '--inh-caps=+net_admin', '--ambient-caps=+net_admin', 'ip', '-batch', '-']);
    expect(has(ambient.effective, 'CAP_NET_ADMIN')).toBe(true);
  });
});
