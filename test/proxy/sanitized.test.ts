/**
 * Proof that the relay-sanitized project (vitest.config.ts) really runs the proxy's tests against
 * the relay built with AddressSanitizer and UndefinedBehaviorSanitizer: the sanitizers' runtime is
 * in this process, the loaded relay says it was built with them, and a proxy started here uses it.
 * In the other projects this file checks nothing (it is excluded from js-path; in the relay
 * project it is skipped).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { RELAY_SANITIZED_NODE } from '../../build/relay.ts';
import { loadRelay } from '../../src/proxy/relay.ts';
import { connectClient, freePort, readLine, startNamedServer } from '../helpers/net.ts';
import { startProxy } from './harness.ts';

const sanitizedRun = process.env.FULCRUM_RELAY === RELAY_SANITIZED_NODE;

describe.skipIf(!sanitizedRun)('the relay-sanitized run', () => {
  it('has the sanitizers loaded and a relay built with them', () => {
    expect(readFileSync('/proc/self/maps', 'utf8')).toMatch(/libasan\.so/);
    const relay = loadRelay();
    expect(typeof relay).toBe('object');
    expect((relay as Exclude<typeof relay, string>).constants().sanitized).toBe(1);
  });

  it('a proxy started in it moves bytes through the sanitized relay', async () => {
    const backend = await startNamedServer('b', '127.3.99.2');
    const port = await freePort('127.3.99.1');
    const proxy = await startProxy(`
services:
  - name: s
    listen: 127.3.99.1:${port}
    backends: [ { address: ${backend.address} } ]
`);
    try {
      expect(proxy.pool.dataPath).toBe('relay');
      const c = await connectClient(port, '127.3.99.1');
      expect(await readLine(c)).toBe('b');
      c.destroy();
    } finally {
      await proxy.stop('test done');
      await backend.close();
    }
  });
});
