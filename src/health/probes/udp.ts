/**
 * `type: udp` — send one datagram, match the reply datagram (keepalived's UDP_CHECK with a
 * payload; the matcher is send_expect's, so `send` and `expect` read alike for TCP and UDP):
 *
 *   send:   the datagram, text with escapes or "hex:…" (Quake 3's getstatus:
 *           "hex:ffffffff676574737461747573"; Source's A2S_INFO: "hex:ffffffff54536f7572636520456e67696e6520517565727900").
 *   expect: text the reply must contain, "hex:…" bytes it must start with, or "regex:…".
 *
 * A datagram is whole: each reply either matches or fails the probe. One exception: a server
 * that answers with a challenge (Source's A2S_INFO since 2020: "\xff\xff\xff\xffA" and four
 * bytes) gets the query once more with the challenge appended, as real clients do.
 * No reply within `timeout` fails ("timeout … waiting for …"); ICMP port unreachable
 * (ECONNREFUSED on the connected socket) fails at once ("port unreachable (ICMP)").
 */
import { createSocket } from 'node:dgram';
import { isIP } from 'node:net';
import type { HealthConfig } from '../../config/schema.ts';
import { ProbeFailure, runProbe, type Probe } from './probe.ts';
import { checkReply, decodeSend, parseExpect } from './send-expect.ts';

/** A2S challenge reply: 0xffffffff 'A' and a 4-byte challenge. */
const isChallenge = (b: Buffer): boolean => b.length === 9 && b.readInt32LE(0) === -1 && b[4] === 0x41;

export const udpProbe: Probe = (target, settings: HealthConfig, signal) =>
  runProbe(signal, settings, (stage) => {
    const payload = decodeSend(settings.send ?? '', 'health.send');
    const exp = parseExpect(settings.expect ?? '', 'health.expect');
    stage.name = `waiting for ${exp.label}`;
    const socket = createSocket(isIP(target.host) === 6 ? 'udp6' : 'udp4');
    return new Promise<{ reason: string }>((resolve, reject) => {
      let challenged = false;
      let settled = false;
      const done = (err: Error | null): void => {
        if (settled) return;
        settled = true;
        signal.removeEventListener('abort', onAbort);
        socket.close();
        if (err === null) resolve({ reason: `matched ${exp.label}` });
        else reject(err);
      };
      const onAbort = (): void => done(new Error('aborted'));
      signal.addEventListener('abort', onAbort, { once: true });
      socket.on('error', (err: NodeJS.ErrnoException) => done(err.code === 'ECONNREFUSED' ? new ProbeFailure('port unreachable (ICMP)') : err));
      socket.on('message', (msg) => {
        if (!challenged && isChallenge(msg)) {
          challenged = true;
          socket.send(Buffer.concat([payload, msg.subarray(5)]));
          return;
        }
        try {
          checkReply(exp, msg, true);
          done(null);
        } catch (err) {
          done(err as ProbeFailure);
        }
      });
      // Connected, so an ICMP port unreachable comes back to this socket as ECONNREFUSED.
      socket.connect(target.port, target.host, () => socket.send(payload));
    });
  });
