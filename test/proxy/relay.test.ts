/**
 * The native relay's loader and address formatting (relay.ts). What the relay does with sockets
 * is tested through the real proxy by every other file here, which runs twice: with the relay
 * (the default) and on the JavaScript path (FULCRUM_RELAY=off, vitest.config.ts).
 */
import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { isIPv6 } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getSystemErrorName } from 'node:util';
import { describe, expect, it } from 'vitest';
import type { Socket } from 'node:net';
import { CONNECT_DONE, EV_CONNECTED, formatAddress, loadRelay, RELAY_EVENTS, RELAY_PATH, RELAY_VERSION, EV_FIELDS, STAT_FIELDS, type RelayBinding } from '../../src/proxy/relay.ts';
import { compileRelay } from '../../build/relay.ts';
import { connectClient, freePort, readLine, startEchoServer, waitFor } from '../helpers/net.ts';
import { startUdpBackend, UdpClient } from '../helpers/udp.ts';
import {
  backendAddr, backendCounterIndex, BACKEND_UP, BC_DGRAMS_IN, BC_DGRAMS_OUT, B_STATE, createSharedMemory, EV_UDP_NEW, SC_DGRAMS_IN, SC_DGRAMS_OUT, SC_DROP_LIMIT,
  serviceCounterIndex,
} from '../../src/shm/layout.ts';

/** connect's options: no propagate_reset, no keepalive. */
const NO_OPTS = new Int32Array(4);

describe('loadRelay', () => {
  it('loads the relay that npm test built, whose constants match relay.ts', () => {
    const r = loadRelay({});
    expect(typeof r).toBe('object');
    expect(typeof (r as { connect: unknown }).connect).toBe('function');
  });

  it('says why it is not used: turned off, a bad setting, not built', () => {
    expect(loadRelay({ FULCRUM_RELAY: 'off' })).toBe('FULCRUM_RELAY=off');
    expect(loadRelay({ FULCRUM_RELAY: 'yes' })).toBe('FULCRUM_RELAY=yes is neither on, off nor the path of a relay build (….node)');
    expect(loadRelay({ FULCRUM_RELAY: '/nonexistent/other.node' })).toMatch(/other\.node is not built/);
    expect(loadRelay({}, '/nonexistent/relay.node')).toMatch(/relay\.node is not built \(npm install builds it with the C compiler/);
  });

  it('refuses a relay built from another relay.c, naming what differs', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fulcrum-relay-'));
    const out = join(dir, 'relay.node');
    try {
      expect(compileRelay(out, ['RELAY_VERSION=99'])).toEqual({ ok: true });
      expect(loadRelay({}, out)).toBe(`${out} was built from another relay.c (version 99 ≠ ${RELAY_VERSION}): run npm run build`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a relay built for another Node ABI (it uses libuv\'s API, which N-API\'s promise does not cover), naming both', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fulcrum-relay-'));
    const out = join(dir, 'relay.node');
    try {
      expect(compileRelay(out, [], { abi: 1, version: 'v0.0.1' })).toEqual({ ok: true });
      expect(loadRelay({}, out)).toBe(`${out} was built for Node ABI 1 (v0.0.1), but this is Node ABI ${process.versions.modules} (${process.version}): run npm run build:relay with this Node`);
      // The relay npm test built records this Node.
      const here = loadRelay({}) as RelayBinding;
      expect(here.constants()).toMatchObject({ nodeAbi: Number(process.versions.modules), nodeVersion: process.version });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('says so when the file is not a loadable addon', () => {
    expect(loadRelay({}, new URL('../../build/out/engine.wasm', import.meta.url).pathname)).toMatch(/engine\.wasm did not load: /);
  });
});

describe('the relay API, called directly (this test process is its worker)', () => {
  const relay = loadRelay({}) as RelayBinding;
  const events: number[][] = [];
  const ev = new Int32Array(RELAY_EVENTS * EV_FIELDS);
  relay.init(new Float64Array(16 * STAT_FIELDS), ev, (n) => {
    for (let i = 0; i < n; i++) events.push([...ev.subarray(i * EV_FIELDS, i * EV_FIELDS + 3)]);
  });
  const code = (errno: number): string => getSystemErrorName(errno);

  it('init is once per thread', () => {
    expect(() => relay.init(new Float64Array(16), new Int32Array(RELAY_EVENTS * EV_FIELDS), () => undefined)).toThrow(/init\(\) was called twice/);
  });

  it('a bad address is an errno (EINVAL), not an exception: a listen or connect that failed', () => {
    expect(code(relay.listen('300.1.1.1', 5000, 4, false, 16))).toBe('EINVAL');
    expect(code(relay.listen('::1', 5000, 4, false, 16))).toBe('EINVAL');
    expect(code(relay.listen('fe80::1%no-such-interface', 5000, 6, false, 16))).toBe('EINVAL');
    expect(code(relay.connect(0, 0, false, 'not an address', 80, 4, null, false, NO_OPTS))).toBe('EINVAL');
  });

  it('an address in use is EADDRINUSE, and arguments of the wrong type throw', async () => {
    const busy = await startEchoServer('127.2.12.1');
    expect(code(relay.listen('127.2.12.1', busy.port, 4, false, 16))).toBe('EADDRINUSE');
    await busy.close();
    expect(() => relay.listen(1 as unknown as string, 80, 4, false, 16)).toThrow(/listen\(ip, port, family, reusePort, backlog\) expected/);
    expect(() => relay.stop('x' as unknown as number, true)).toThrow(/stop\(slot, keepClient\) expected/);
    expect(relay.stop(7, false)).toBe(false); // nothing in that slot
  });

  /** A socket of this process's own (a Node handle's), connected to an echo server: its fd and a check that it still works. */
  async function nodeSocket(host: string): Promise<{ fd: number; socket: Socket; echoes(): Promise<boolean>; close(): Promise<void> }> {
    const echo = await startEchoServer(host);
    const socket = await connectClient(echo.port, host);
    const fd = (socket as unknown as { _handle: { fd: number } })._handle.fd;
    return {
      fd,
      socket,
      async echoes() {
        socket.write('still mine\n');
        return (await readLine(socket)) === 'still mine';
      },
      async close() {
        socket.destroy();
        await echo.close();
      },
    };
  }

  it('a connect to a closed port reports EV_CONNECT_FAILED with ECONNREFUSED, and keeps the client socket', async () => {
    // A Node handle's socket serves as "the client" here: it is lent (ownClient false), never read.
    const client = await nodeSocket('127.2.12.4');
    const r = relay.connect(3, client.fd, false, '127.2.12.3', 1, 4, null, false, NO_OPTS);
    expect(r).toBe(0);
    await waitFor(() => events.some((e) => e[1] === 3), 3000, 'an event for slot 3', 10);
    expect(events.find((e) => e[1] === 3)?.slice(0, 2)).toEqual([4 /* EV_CONNECT_FAILED */, 3]);
    expect(code(events.find((e) => e[1] === 3)![2])).toBe('ECONNREFUSED');
    await client.close();
  });

  it('a connect to a listening port completes within the call (CONNECT_DONE, no EV_CONNECTED follows) or a wake later (EV_CONNECTED)', async () => {
    const backend = await startEchoServer('127.2.12.7');
    const client = await nodeSocket('127.2.12.8');
    try {
      const r = relay.connect(6, client.fd, false, '127.2.12.7', backend.port, 4, null, false, NO_OPTS);
      // On loopback the handshake is usually over when connect(2) returns; under load the kernel
      // may finish it a little later, and then the event says so.
      expect([0, CONNECT_DONE]).toContain(r);
      if (r === 0) await waitFor(() => events.some((e) => e[1] === 6), 3000, 'EV_CONNECTED for slot 6', 10);
      // A round trip through another socket of the relay's: any event for slot 6 has arrived by now.
      const other = await nodeSocket('127.2.12.9');
      expect(relay.connect(7, other.fd, false, '127.2.12.3', 1, 4, null, false, NO_OPTS)).toBe(0);
      await waitFor(() => events.some((e) => e[1] === 7), 3000, 'an event for slot 7', 10);
      expect(events.filter((e) => e[1] === 6).map((e) => e[0])).toEqual(r === 0 ? [EV_CONNECTED] : []);
      await other.close();
      // The relay holds a session for the slot (relaying); stopping it gives the lent client back, unclosed.
      expect(relay.stop(6, true)).toBe(true);
      expect(await client.echoes()).toBe(true);
    } finally {
      await client.close();
      await backend.close();
    }
  });

  it('closeFd closes only a client the relay accepted: a Node socket\'s fd is refused (EBADF) and stays open', async () => {
    const client = await nodeSocket('127.2.12.5');
    expect(code(relay.closeFd(client.fd))).toBe('EBADF');
    expect(await client.echoes()).toBe(true);
    await client.close();
  });

  it('listenerFd names a listener\'s fd; adopt refuses what is not a listening socket of someone else\'s, and leaves it alone', async () => {
    // Adopting a socket another process made is test/ops/upgrade.test.ts's (a relay adopts what the old one's listened on).
    const lid = relay.listen('127.2.12.7', 0, 4, true, 16);
    expect(lid).toBeGreaterThanOrEqual(0);
    const fd = relay.listenerFd(lid);
    expect(fd).toBeGreaterThan(2);
    expect(code(relay.adopt(fd))).toBe('EBADF'); // already this relay's
    relay.closeListener(lid);
    expect(code(relay.listenerFd(lid))).toBe('EBADF');
    const other = await nodeSocket('127.2.12.8');
    expect(code(relay.adopt(other.fd))).toBe('EINVAL'); // connected, not listening
    expect(await other.echoes()).toBe(true);
    const file = openSync(RELAY_PATH, 'r');
    try {
      expect(code(relay.adopt(file))).toBe('ENOTSOCK');
    } finally {
      closeSync(file);
    }
    await other.close();
    expect(() => relay.adopt(-1)).toThrow(/adopt\(fd\) expected/);
  });

  it('closing a listener accepts what the kernel queued on it first: reported on its id, served, not reset', async () => {
    const port = await freePort('127.2.12.9');
    const lid = relay.listen('127.2.12.9', port, 4, true, 64);
    expect(lid).toBeGreaterThanOrEqual(0);
    relay.pause(lid); // not polled: connections wait in the kernel's queue
    const clients = await Promise.all(Array.from({ length: 20 }, () => connectClient(port, '127.2.12.9')));
    const resets: string[] = [];
    for (const c of clients) c.on('error', (err: NodeJS.ErrnoException) => resets.push(err.code ?? err.message));
    const before = events.length;
    relay.closeListener(lid);
    await waitFor(() => events.slice(before).filter((e) => e[0] === 1 /* EV_ACCEPT */ && e[1] === lid).length === 20, 3000, '20 accepts on the closed listener', 10);
    expect(relay.handedOver()).toBe(0);
    expect(resets).toEqual([]);
    // JS holds them now (FD_HELD): closing each is JS's call, as for any accepted client.
    for (const e of events.slice(before)) if (e[0] === 1 && e[1] === lid) expect(relay.closeFd(e[2])).toBe(0);
    for (const c of clients) c.destroy();
  });

  it('connect takes only a client JavaScript may give it: an fd the relay did not accept as its own, or no stream socket, is refused', async () => {
    const client = await nodeSocket('127.2.12.6');
    // ownClient true: the relay would close it at the end; it never accepted it.
    expect(code(relay.connect(4, client.fd, true, '127.2.12.3', 1, 4, null, false, NO_OPTS))).toBe('EBADF');
    expect(code(relay.watch(4, client.fd))).toBe('EBADF');
    expect(relay.stop(4, false)).toBe(false); // nothing was kept
    expect(await client.echoes()).toBe(true);
    // ownClient false (lent by a Node handle): a file is not a client.
    const file = openSync(RELAY_PATH, 'r');
    try {
      expect(code(relay.connect(5, file, false, '127.2.12.3', 1, 4, null, false, NO_OPTS))).toBe('ENOTSOCK');
    } finally {
      closeSync(file);
    }
    expect(relay.stop(5, false)).toBe(false);
    await client.close();
  });

  it('UDP: udp* calls need udpInit first; then a datagram of a new client waits (EV_UDP_NEW) until udpConnect names its backend, and the echo comes back', async () => {
    expect(() => relay.udpListen('127.2.12.20', 0, 4, false, -1)).toThrow(/udpInit\(\) first/);
    const memory = createSharedMemory();
    const f64 = new Float64Array(memory.buffer);
    expect(() => relay.udpInit(f64, 0)).toThrow(/udpInit\(memory: Float64Array, batch 1\.\.UDP_MAX_BATCH\) expected/);
    relay.udpInit(f64, 64);
    expect(() => relay.udpInit(f64, 64)).toThrow(/udpInit\(\) was called twice/);
    expect(code(relay.udpListen('300.1.1.1', 5000, 4, false, -1))).toBe('EINVAL');
    expect(relay.udpClose(0, 12345)).toBe(false); // no such pending flow
    expect(code(relay.udpConnect(10, 12345, '127.2.12.21', 9, 4, null, 0, 0))).toBe('ENOENT');
    const backend = await startUdpBackend('b', '127.2.12.21');
    const port = await freePort('127.2.12.20');
    const lid2 = relay.udpListen('127.2.12.20', port, 4, false, -1);
    expect(lid2).toBeGreaterThanOrEqual(0);
    const sc = serviceCounterIndex(0, 0, 0);
    const bc = backendCounterIndex(0, 0, 0);
    relay.udpConfigure(lid2, 1000, 0, sc);
    new Int32Array(memory.buffer)[(backendAddr(0) + B_STATE) >> 2] = BACKEND_UP;
    const client = await UdpClient.open('127.2.12.22');
    try {
      const before = events.length;
      client.send('one', port, '127.2.12.20');
      client.send('two', port, '127.2.12.20');
      await waitFor(() => events.slice(before).some((e) => e[0] === EV_UDP_NEW), 3000, 'EV_UDP_NEW', 10);
      const e = events.slice(before).find((x) => x[0] === EV_UDP_NEW)!;
      expect(e[1]).toBe(lid2);
      expect(backend.received).toBe(0); // held: nothing goes out before udpConnect
      // Slot 11, the pending id the event named: the relay sends what it held, then relays.
      expect(relay.udpConnect(11, e[2], '127.2.12.21', backend.port, 4, null, (backendAddr(0) + B_STATE) >> 2, bc)).toBe(0);
      expect((await client.next())?.toString()).toBe('b|one');
      expect((await client.next())?.toString()).toBe('b|two');
      expect(await client.ask('three', port, '127.2.12.20')).toBe('b|three');
      expect([f64[sc + SC_DGRAMS_IN], f64[sc + SC_DGRAMS_OUT], f64[bc + BC_DGRAMS_IN], f64[bc + BC_DGRAMS_OUT]]).toEqual([3, 3, 3, 3]);
      expect(relay.udpClose(11, -1)).toBe(true);
      expect(relay.udpClose(11, -1)).toBe(false);

      // A new client's burst while its flow waits: up to a batch (64) is held, in order; the rest
      // is dropped and counted (limit). Another client's first datagram, read after the burst from
      // the same socket, says the relay has read it all.
      const burst = await UdpClient.open('127.2.12.23');
      const marker = await UdpClient.open('127.2.12.24');
      try {
        const from = events.length;
        for (let i = 0; i < 70; i++) burst.send(`b${i}`, port, '127.2.12.20');
        await waitFor(() => events.slice(from).some((x) => x[0] === EV_UDP_NEW), 3000, 'the burst\'s EV_UDP_NEW', 10);
        marker.send('m', port, '127.2.12.20');
        await waitFor(() => events.slice(from).filter((x) => x[0] === EV_UDP_NEW).length === 2, 3000, 'the marker\'s EV_UDP_NEW', 10);
        const [first, second] = events.slice(from).filter((x) => x[0] === EV_UDP_NEW);
        expect(f64[sc + SC_DROP_LIMIT]).toBe(6);
        expect(relay.udpConnect(12, first[2], '127.2.12.21', backend.port, 4, null, (backendAddr(0) + B_STATE) >> 2, bc)).toBe(0);
        const got: string[] = [];
        for (let i = 0; i < 64; i++) got.push((await burst.next())?.toString() ?? 'none');
        expect(got).toEqual(Array.from({ length: 64 }, (_, i) => `b|b${i}`));
        expect(relay.udpClose(0, second[2])).toBe(true); // the marker's flow, refused
        expect(relay.udpClose(12, -1)).toBe(true);
      } finally {
        await burst.close();
        await marker.close();
      }
    } finally {
      relay.udpCloseListener(lid2);
      await client.close();
      await backend.close();
    }
  });

  it('slots out of range (≥ 2^29: the epoll key keeps 29 bits; negative, 2^31, 2^32 − 1) are refused, without wrapping around', () => {
    // In a process of its own: a slot that wraps around made the relay loop for ever.
    const script = `
      const relay = require(${JSON.stringify(RELAY_PATH)});
      relay.init(new Float64Array(16 * ${STAT_FIELDS}), new Int32Array(${RELAY_EVENTS * EV_FIELDS}), () => {});
      const out = [];
      for (const slot of [2 ** 32 - 1, 2 ** 31, -1, 2 ** 30, 2 ** 29, 1.5]) {
        for (const call of [() => relay.connect(slot, 0, false, '127.0.0.1', 1, 4, null, false, new Int32Array(4)), () => relay.watch(slot, 0), () => relay.stop(slot, false)]) {
          try { out.push(String(call())); } catch (err) { out.push(err.message); }
        }
      }
      console.log(JSON.stringify(out));
    `;
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20_000 });
    expect(run.status).toBe(0);
    const results = JSON.parse(run.stdout) as string[];
    expect(results).toHaveLength(18);
    for (let i = 0; i < results.length; i += 3) {
      expect(results[i]).toBe('relay: connect(slot, clientFd, ownClient, ip, port, family, prefix, clientEnded, opts: Int32Array(4)) expected');
      expect(results[i + 1]).toBe('relay: watch(slot, clientFd) expected');
      expect(results[i + 2]).toBe('relay: stop(slot, keepClient) expected');
    }
  });

  it('a slot in range but beyond the stats array is ERANGE', () => {
    expect(code(relay.connect(16, 0, false, '127.2.12.3', 1, 4, null, false, NO_OPTS))).toBe('ERANGE');
  });

  it('notify (sd_notify\'s datagram; test/ops/notify.test.ts sends real ones): a bad socket name is an errno, wrong types throw', () => {
    expect(code(relay.notify('relative/notify.sock', 'READY=1'))).toBe('EINVAL');
    expect(code(relay.notify('@', 'READY=1'))).toBe('EINVAL');
    expect(code(relay.notify(`/${'x'.repeat(107)}`, 'READY=1'))).toBe('ENAMETOOLONG');
    expect(code(relay.notify(`@${'x'.repeat(108)}`, 'READY=1'))).toBe('ENAMETOOLONG');
    expect(code(relay.notify('/nonexistent/notify.sock', 'READY=1'))).toBe('ENOENT');
    expect(code(relay.notify(`@fulcrum-nobody-listens-${process.pid}`, 'READY=1'))).toBe('ECONNREFUSED');
    expect(() => relay.notify(1 as unknown as string, 'READY=1')).toThrow(/notify\(socketPath: string, message: string\) expected/);
    expect(() => relay.notify('/run/x', undefined as unknown as string)).toThrow(/notify\(socketPath: string, message: string\) expected/);
  });
});

describe('formatAddress', () => {
  /** The text of `bytes` as the relay would hand them over: written into an event's address words. */
  function format(family: number, bytes: number[]): string {
    const words = new Int32Array(RELAY_EVENTS * EV_FIELDS);
    new Uint8Array(words.buffer).set(bytes, 4 * 4);
    return formatAddress(family, words, 4);
  }
  const v6 = (text: string): number[] => {
    // The 16 bytes of an IPv6 text (a test-only expander: '::' fills the missing zero groups).
    const [head, tail = ''] = text.split('::');
    const h = head === '' ? [] : head.split(':');
    const t = tail === '' ? [] : tail.split(':');
    const groups = text.includes('::') ? [...h, ...Array(8 - h.length - t.length).fill('0'), ...t] : h;
    return groups.flatMap((g) => [parseInt(g, 16) >> 8, parseInt(g, 16) & 0xff]);
  };

  it('IPv4 as dotted quads', () => {
    expect(format(4, [127, 2, 1, 77])).toBe('127.2.1.77');
    expect(format(4, [0, 0, 0, 0])).toBe('0.0.0.0');
  });

  it('IPv6 as RFC 5952 text, as Node prints it', () => {
    for (const text of ['::1', '::', '2001:db8::1', '2001:db8:0:1:1:1:1:1', '2001:db8::1:0:0:1', 'fe80::1:2', '1:0:0:2::3', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff']) {
      const out = format(6, v6(text));
      expect(out).toBe(text);
      expect(isIPv6(out)).toBe(true);
    }
    // A single zero group is not shortened; the first of two equal runs is.
    expect(format(6, v6('2001:db8:0:1:1:1:1:1'))).toBe('2001:db8:0:1:1:1:1:1');
    expect(format(6, v6('1:0:0:2:0:0:3:4'))).toBe('1::2:0:0:3:4');
  });

  it('an IPv4-mapped IPv6 address as ::ffff:a.b.c.d (a dual-stack listener)', () => {
    expect(format(6, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1])).toBe('::ffff:192.0.2.1');
  });
});
