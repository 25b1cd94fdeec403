/**
 * Counting the connection log lines a proxy wrote (bench/run.ts's `logs` churn variant, and
 * bench/diag.ts --logs): every connection the load generator completed owes a line.
 */
import dgram from 'node:dgram';
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { sleep } from './procfs.ts';

/**
 * Counts the connection log lines a proxy wrote: fulcrum's in its log file (read from where the
 * last count stopped), HAProxy's as datagrams at the harness's syslog receiver.
 */
export interface LogCounter {
  /** Lines seen so far. */
  count(): number;
  close(): void;
}

/** fulcrum's `"msg":"connection"` lines appended to `file` since this counter was made. */
export function fileLogCounter(file: string): LogCounter {
  let offset = 0;
  let lines = 0;
  let tail = '';
  const buf = Buffer.alloc(1 << 20);
  return {
    count() {
      const size = statSync(file).size;
      if (size > offset) {
        const fd = openSync(file, 'r');
        try {
          while (offset < size) {
            const n = readSync(fd, buf, 0, Math.min(buf.length, size - offset), offset);
            if (n <= 0) break;
            offset += n;
            const text = tail + buf.toString('utf8', 0, n);
            const cut = text.lastIndexOf('\n') + 1;
            for (const line of text.slice(0, cut).split('\n')) if (line.includes('"msg":"connection"')) lines++;
            tail = text.slice(cut);
          }
        } finally {
          closeSync(fd);
        }
      }
      return lines;
    },
    close() {},
  };
}

/** A syslog receiver over UDP on `host` (what HAProxy's `log` line sends to): counts the lines naming `frontend`. */
export async function syslogCounter(frontend: string, host: string): Promise<LogCounter & { address: string }> {
  const sock = dgram.createSocket('udp4');
  let lines = 0;
  const needle = ` ${frontend} `;
  sock.on('message', (msg) => {
    if (msg.includes(needle)) lines++;
  });
  await new Promise<void>((resolve, reject) => {
    sock.once('error', reject);
    sock.bind(0, host, () => resolve());
  });
  try {
    sock.setRecvBufferSize(8 << 20); // capped by net.core.rmem_max; what is lost beyond it is counted as lost
  } catch { /* keep the default */ }
  return { address: `${host}:${sock.address().port}`, count: () => lines, close: () => sock.close() };
}

/** Waits until `counter` reaches `want` lines, or stops growing for 1.5 s (the proxy writes late or lost them). */
export async function settledLines(counter: LogCounter, want: number): Promise<number> {
  let last = counter.count();
  let stillSince = Date.now();
  while (last < want && Date.now() - stillSince < 1500) {
    await sleep(100);
    const n = counter.count();
    if (n !== last) {
      last = n;
      stillSince = Date.now();
    }
  }
  return last;
}
