/**
 * checkListens against real sockets: two services on one address under two names, and new
 * addresses that another process holds or that do not resolve.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lookup } from 'node:dns/promises';
import { checkListens } from '../../src/config/listen.ts';
import { sameListens } from '../../src/control/diff.ts';
import { parseConfig } from '../../src/config/load.ts';
import { formatHostPort } from '../../src/config/schema.ts';
import { freePort, startServer, type TestServer } from '../helpers/net.ts';

const HOST = '127.5.7.1';
let taken: TestServer;

beforeAll(async () => {
  taken = await startServer((s) => s.destroy(), HOST);
});
afterAll(async () => {
  await taken?.close();
});

const config = (...listens: string[]) =>
  parseConfig(`services:\n${listens.map((l, i) => `  - { name: s${i}, listen: "${l}", backends: [{ address: ${HOST}:9 }] }\n`).join('')}`);

/** The error checkListens throws, or undefined. */
async function refusal(running: ReturnType<typeof config> | undefined, next: ReturnType<typeof config>, skip?: string): Promise<any> {
  try {
    await checkListens(running, next, { file: 'f.yaml', skipBind: (name) => name === skip });
    return undefined;
  } catch (err) {
    return err;
  }
}

describe('checkListens', () => {
  it('refuses two services on one address written two ways', async () => {
    const port = await freePort(HOST);
    // "localhost" and the address it resolves to: different text, one address.
    const ip = formatHostPort({ host: (await lookup('localhost')).address, port });
    const err = await refusal(undefined, config(ip, `${HOST}:${port}`, `localhost:${port}`));
    expect(err).toMatchObject({ code: 'FULCRUM_ERR_CONFIG_INVALID', file: 'f.yaml' });
    expect(err.problems).toEqual([{
      path: 'services[2].listen',
      message: `is the address of services[0].listen (${ip}): the two would share its connections, got "localhost:${port}"`,
    }]);
  });

  it('refuses a new address another process holds, naming the service and the address', async () => {
    const free = await freePort(HOST);
    const running = config(`${HOST}:${free}`);
    const err = await refusal(running, config(`${HOST}:${free}`, `${HOST}:${taken.port}`));
    expect(err).toMatchObject({ code: 'FULCRUM_ERR_LISTEN' });
    expect(err.message).toBe(`service s1: cannot listen on ${HOST}:${taken.port}: listen EADDRINUSE: address already in use ${HOST}:${taken.port}`);
    // What fulcrum listens on already is not bound again (its own workers hold it).
    expect(await refusal(config(`${HOST}:${taken.port}`), config(`${HOST}:${taken.port}`))).toBeUndefined();
    // Nor is a service the workers do not bind now (paused: bound to a VIP).
    expect(await refusal(running, config(`${HOST}:${free}`, `${HOST}:${taken.port}`), 's1')).toBeUndefined();
    // A free new address passes.
    expect(await refusal(running, config(`${HOST}:${free}`, `${HOST}:${await freePort(HOST)}`))).toBeUndefined();
  });

  it('refuses a new name that does not resolve', async () => {
    const err = await refusal(undefined, config('no-such-host.invalid:7000'));
    expect(err).toMatchObject({ code: 'FULCRUM_ERR_LISTEN' });
    expect(err.message).toMatch(/^service s0: cannot listen on no-such-host\.invalid:7000: listen E\w+: cannot resolve no-such-host\.invalid$/);
  });

  it('sameListens: nothing new to check', () => {
    expect(sameListens(config(`${HOST}:1`, `${HOST}:2`), config(`${HOST}:2`))).toBe(true);
    expect(sameListens(config(`${HOST}:1`), config(`${HOST}:1`, `${HOST}:2`))).toBe(false);
  });
});

describe('checkListens, protocol udp', () => {
  it('binds a UDP port that a TCP server holds (other protocol), and refuses one a UDP socket holds', async () => {
    const { createSocket } = await import('node:dgram');
    const udpConfig = (listen: string) => parseConfig(`services:\n  - { name: u, protocol: udp, listen: "${listen}", backends: [{ address: ${HOST}:9 }] }\n`);
    expect(await refusal(undefined, udpConfig(taken.address))).toBeUndefined();
    const held = createSocket('udp4');
    await new Promise<void>((r) => held.bind(0, HOST, r));
    try {
      const err = await refusal(undefined, udpConfig(`${HOST}:${held.address().port}`));
      expect(err).toMatchObject({ code: 'FULCRUM_ERR_LISTEN' });
      expect(err.message).toMatch(/EADDRINUSE/);
    } finally {
      held.close();
    }
  });
});
