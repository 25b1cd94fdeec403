/**
 * `type: tcp` — the backend accepts a TCP connection within the timeout. The connection is
 * closed at once; nothing is sent.
 */
import { ProbeSocket, runProbe, type Probe } from './probe.ts';

export const tcpProbe: Probe = (target, settings, signal) =>
  runProbe(signal, settings, async () => {
    const sock = await ProbeSocket.connect(target, signal);
    sock.destroy();
    return { reason: 'connected' };
  });
