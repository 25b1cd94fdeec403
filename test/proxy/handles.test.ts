/**
 * The data path's use of Node internals (src/proxy/handles.ts): the bindings exist on the pinned
 * Node, and a listener's connections arrive as raw handles that read into a caller's buffer and
 * write without net.Socket. A Node upgrade that renames any of it fails here first, by name.
 * Addresses: 127.2.11.0/24.
 */
import { createServer, type Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import {
  acceptRaw, K_NREAD, K_WRITE_ASYNC, rawHandlesMissing, streamState, UV_EOF, WriteWrap, type TcpHandle,
} from '../../src/proxy/handles.ts';
import { connectClient, readAll } from '../helpers/net.ts';

const HOST = '127.2.11.1';
const servers: Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
});

describe('raw TCP handles', () => {
  it('finds every binding the data path uses on this Node', () => {
    expect(rawHandlesMissing()).toBeNull();
  });

  it('accepts as a raw handle, reads into our buffer, writes back, and sees EOF', async () => {
    const server = createServer();
    servers.push(server);
    let connectionEvents = 0;
    server.on('connection', () => connectionEvents++);
    const seen: string[] = [];
    acceptRaw(server, function (err, handle) {
      expect(err).toBe(0);
      const h = handle!;
      const buf = Buffer.alloc(64);
      h.onread = function (this: TcpHandle) {
        const n = streamState[K_NREAD];
        if (n > 0) {
          seen.push(buf.toString('latin1', 0, n));
          // Echo upper-cased: one writeBuffer, taken by the kernel at once on loopback.
          const out = Buffer.from(buf.toString('latin1', 0, n).toUpperCase(), 'latin1');
          expect(h.writeBuffer(new WriteWrap(), out)).toBe(0);
          expect(streamState[K_WRITE_ASYNC]).toBe(0);
        } else if (n === UV_EOF) {
          h.close();
        }
        return undefined;
      } as TcpHandle['onread'];
      h.useUserBuffer(buf);
      h.readStart();
    });
    await new Promise<void>((resolve) => server.listen({ host: HOST, port: 0 }, resolve));
    const port = (server.address() as { port: number }).port;
    const client = await connectClient(port, HOST);
    const reply = readAll(client);
    client.end('hello raw');
    expect((await reply).toString()).toBe('HELLO RAW');
    expect(seen.join('')).toBe('hello raw');
    expect(connectionEvents).toBe(0); // no net.Socket was made
  });
});
