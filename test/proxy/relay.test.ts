/**
 * The native relay's loader and address formatting (relay.ts). What the relay does with sockets
 * is tested through the real proxy by every other file here, which runs twice: with the relay
 * (the default) and on the JavaScript path (FULCRUM_RELAY=off, vitest.config.ts).
 */
import { isIPv6 } from 'node:net';
import { describe, expect, it } from 'vitest';
import { formatAddress, loadRelay, RELAY_EVENTS, EV_FIELDS } from '../../src/proxy/relay.ts';

describe('loadRelay', () => {
  it('loads the relay that npm test built, whose constants match relay.ts', () => {
    const r = loadRelay({});
    expect(typeof r).toBe('object');
    expect(typeof (r as { connect: unknown }).connect).toBe('function');
  });

  it('says why it is not used: turned off, a bad setting, not built', () => {
    expect(loadRelay({ FULCRUM_RELAY: 'off' })).toBe('FULCRUM_RELAY=off');
    expect(loadRelay({ FULCRUM_RELAY: 'yes' })).toBe('FULCRUM_RELAY=yes is neither on nor off');
    expect(loadRelay({}, '/nonexistent/relay.node')).toMatch(/relay\.node is not built \(npm install builds it with the C compiler/);
  });

  it('names the differing constants of a relay built from another relay.c', () => {
    // A module that loads but is not the relay: every constant differs.
    const r = loadRelay({}, new URL('../../build/out/engine.wasm', import.meta.url).pathname);
    expect(r).toMatch(/did not load|built from another relay\.c/);
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
