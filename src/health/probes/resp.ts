/**
 * The little of RESP (the Redis protocol) the probe needs: encode a command as an array of bulk
 * strings, and parse one reply (RESP2 types, plus the RESP3 types a server might send anyway).
 * Written by hand because it is small and the probe must control its socket and timeout fully.
 */
import { excerpt, ProbeFailure } from './probe.ts';

export class RespError {
  readonly message: string;
  constructor(message: string) {
    this.message = message;
  }
}

export type RespValue = string | number | null | RespError | RespValue[];

export function encodeCommand(args: readonly string[]): Buffer {
  let out = `*${args.length}\r\n`;
  for (const a of args) out += `$${Buffer.byteLength(a)}\r\n${a}\r\n`;
  return Buffer.from(out);
}

/** Deepest nesting accepted: a garbage reply of "*1\r\n" repeated must not recurse unbounded. */
const MAX_DEPTH = 8;
const MAX_ELEMENTS = 4096;

/**
 * Parses one reply starting at `at`. Returns [value, next offset], undefined when more bytes are
 * needed, or throws ProbeFailure for bytes that are not RESP.
 */
export function parseReply(buf: Buffer, at = 0, depth = 0): [RespValue, number] | undefined {
  if (at >= buf.length) return undefined;
  const eol = buf.indexOf('\r\n', at);
  if (eol < 0) {
    if (buf.length - at > 1024) throw bad(buf, at);
    return undefined;
  }
  const type = buf[at];
  const line = buf.toString('latin1', at + 1, eol);
  const next = eol + 2;
  switch (type) {
    case 0x2b: // + simple string
      return [line, next];
    case 0x2d: // - error
      return [new RespError(line), next];
    case 0x3a: // : integer
      if (!/^-?\d+$/.test(line)) throw bad(buf, at);
      return [Number(line), next];
    case 0x5f: // _ null (RESP3)
      return [null, next];
    case 0x24: // $ bulk string
    case 0x21: { // ! blob error (RESP3): a length line, then the message, as a bulk string
      const len = intHeader(line, buf, at);
      if (len < 0) return [null, next];
      if (buf.length < next + len + 2) return undefined;
      if (buf[next + len] !== 0x0d || buf[next + len + 1] !== 0x0a) throw bad(buf, at);
      const text = buf.toString('utf8', next, next + len);
      return [type === 0x21 ? new RespError(text) : text, next + len + 2];
    }
    case 0x2a: // * array
    case 0x7e: // ~ set (RESP3)
    case 0x3e: { // > push (RESP3)
      const n = intHeader(line, buf, at);
      if (n < 0) return [null, next];
      if (depth >= MAX_DEPTH || n > MAX_ELEMENTS) throw bad(buf, at);
      const items: RespValue[] = [];
      let pos = next;
      for (let i = 0; i < n; i++) {
        const r = parseReply(buf, pos, depth + 1);
        if (!r) return undefined;
        items.push(r[0]);
        pos = r[1];
      }
      return [items, pos];
    }
    default:
      throw bad(buf, at);
  }
}

function intHeader(line: string, buf: Buffer, at: number): number {
  if (!/^-?\d{1,9}$/.test(line)) throw bad(buf, at);
  return Number(line);
}

function bad(buf: Buffer, at: number): ProbeFailure {
  return new ProbeFailure(`bad reply: not RESP ${excerpt(buf.subarray(at))}`);
}
