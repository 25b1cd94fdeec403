/**
 * `type: send_expect` — send a few bytes, check the reply (HAProxy's tcp-check send/expect).
 *
 *   send:   text with \r \n \t \\ \0 and \xNN escapes, or "hex:0d0a…"; empty sends nothing
 *           (for servers that speak first, like SSH or SMTP).
 *   expect: text the reply must contain; "hex:…" bytes the reply must start with; or
 *           "regex:…" a JavaScript regular expression matched against the reply as latin1.
 */
import type { HealthConfig } from '../../config/schema.ts';
import { excerpt, ProbeFailure, ProbeSocket, runProbe, type Probe } from './probe.ts';

/** Decodes the `send` setting. Throws a message naming the setting for a bad hex string. */
export function decodeSend(text: string, setting = 'health.send_expect.send'): Buffer {
  if (text.startsWith('hex:')) return decodeHex(text.slice(4), setting);
  const out: number[] = [];
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch !== '\\' || i + 1 >= text.length) {
      out.push(...Buffer.from(ch));
      continue;
    }
    const next = text[++i];
    if (next === 'r') out.push(0x0d);
    else if (next === 'n') out.push(0x0a);
    else if (next === 't') out.push(0x09);
    else if (next === '0') out.push(0x00);
    else if (next === '\\') out.push(0x5c);
    else if (next === 'x' && /^[0-9a-fA-F]{2}$/.test(text.slice(i + 1, i + 3))) {
      out.push(parseInt(text.slice(i + 1, i + 3), 16));
      i += 2;
    } else out.push(0x5c, ...Buffer.from(next));
  }
  return Buffer.from(out);
}

export function decodeHex(hex: string, setting: string): Buffer {
  const clean = hex.replace(/\s+/g, '');
  if (!/^(?:[0-9a-fA-F]{2})*$/.test(clean)) {
    throw new ProbeFailure(`${setting}: hex: needs pairs of hex digits, got "${hex}"`);
  }
  return Buffer.from(clean, 'hex');
}

export type Expectation =
  | { kind: 'text'; text: Buffer; label: string }
  | { kind: 'hex'; bytes: Buffer; label: string }
  | { kind: 'regex'; re: RegExp; label: string };

export function parseExpect(expect: string, setting = 'health.send_expect.expect'): Expectation {
  if (expect.startsWith('hex:')) return { kind: 'hex', bytes: decodeHex(expect.slice(4), setting), label: expect };
  if (expect.startsWith('regex:')) {
    try {
      return { kind: 'regex', re: new RegExp(expect.slice(6)), label: expect };
    } catch (err) {
      throw new ProbeFailure(`${setting}: bad regular expression "${expect.slice(6)}": ${(err as Error).message}`);
    }
  }
  return { kind: 'text', text: decodeSend(expect), label: JSON.stringify(expect) };
}

/** Returns true once the reply satisfies the expectation, throws once it never can, undefined for "need more". */
export function checkReply(exp: Expectation, buf: Buffer, ended: boolean): true | undefined {
  switch (exp.kind) {
    case 'hex': {
      const n = Math.min(buf.length, exp.bytes.length);
      if (!buf.subarray(0, n).equals(exp.bytes.subarray(0, n))) {
        throw new ProbeFailure(`bad reply: expected ${exp.label}, got ${excerpt(buf)}`);
      }
      if (buf.length >= exp.bytes.length) return true;
      break;
    }
    case 'text':
      if (buf.includes(exp.text)) return true;
      break;
    case 'regex':
      if (exp.re.test(buf.toString('latin1'))) return true;
      break;
  }
  if (ended) throw new ProbeFailure(`bad reply: expected ${exp.label}, got ${excerpt(buf)} before the server closed`);
  return undefined;
}

export const sendExpectProbe: Probe = (target, settings: HealthConfig, signal) =>
  runProbe(signal, settings, async (stage) => {
    const se = settings.send_expect;
    if (!se) throw new ProbeFailure('health.send_expect: missing (type send_expect needs send and expect)');
    const payload = decodeSend(se.send);
    const exp = parseExpect(se.expect);
    const sock = await ProbeSocket.connect(target, signal);
    try {
      stage.name = `waiting for ${exp.label}`;
      stage.socket = sock;
      if (payload.length > 0) sock.write(payload);
      await sock.read((buf, ended) => (checkReply(exp, buf, ended) ? [true, buf.length] : undefined));
      return { reason: `matched ${exp.label}` };
    } finally {
      sock.destroy();
    }
  });
