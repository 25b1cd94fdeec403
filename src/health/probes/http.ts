/**
 * `type: http` — one HTTP/1.0 request written by hand (`Connection: close`, no body), and the
 * status line checked against `expect_status`. Only the status line is read: the body, however
 * large or slow, never matters.
 */
import { formatHostPort } from '../../config/address.ts';
import { excerpt, ProbeFailure, ProbeSocket, runProbe, type Probe } from './probe.ts';

const HTTP_PREFIX = Buffer.from('HTTP/');
const STATUS_LINE = /^HTTP\/\d(?:\.\d)? (\d{3})(?: ([^\r\n]*))?$/;

export const httpProbe: Probe = (target, settings, signal) =>
  runProbe(signal, settings, async (stage) => {
    const http = settings.http ?? { path: '/', method: 'GET' as const, expect_status: 200, host: undefined };
    const host = http.host ?? formatHostPort(target);
    const sock = await ProbeSocket.connect(target, signal);
    stage.socket = sock;
    try {
      stage.name = 'waiting for the status line';
      sock.write(`${http.method} ${http.path} HTTP/1.0\r\nHost: ${host}\r\nUser-Agent: fulcrum-health\r\nConnection: close\r\n\r\n`);
      const line = await sock.read((buf) => {
        // A status line is short and starts with "HTTP/"; anything else is not HTTP.
        const n = Math.min(buf.length, HTTP_PREFIX.length);
        if (!buf.subarray(0, n).equals(HTTP_PREFIX.subarray(0, n))) throw new ProbeFailure(`bad reply: not an HTTP status line ${excerpt(buf)}`);
        const eol = buf.indexOf('\r\n');
        if (eol < 0) {
          if (buf.length > 1024) throw new ProbeFailure(`bad reply: not an HTTP status line ${excerpt(buf)}`);
          return undefined;
        }
        return [buf.subarray(0, eol), eol + 2];
      });
      const m = STATUS_LINE.exec(line.toString('latin1'));
      if (!m) throw new ProbeFailure(`bad reply: not an HTTP status line ${excerpt(line)}`);
      const status = Number(m[1]);
      if (status !== http.expect_status) {
        return { ok: false, reason: `status ${status}${m[2] ? ' ' + m[2] : ''}, want ${http.expect_status}` };
      }
      return { reason: `status ${status}` };
    } finally {
      sock.destroy();
    }
  });
