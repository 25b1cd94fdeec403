/**
 * Packets on the loopback interface, as tcpdump (Debian's tcpdump) sees them: for tests that must
 * see what went over the wire — which segment carried what — rather than what a socket reports.
 * Capture only what the test's own addresses and ports match (the filter), stop it, then read.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';

/** One TCP segment: its ends ("a.b.c.d.port"), tcpdump's flags ("S", "S.", ".", "P.", "F." …) and payload length. */
export interface Segment {
  src: string;
  dst: string;
  flags: string;
  length: number;
}

export interface Capture {
  /** What tcpdump has printed so far (it prints a segment a moment after it went by: wait for what you expect). */
  segments(): Segment[];
  /** Stops tcpdump; every segment it captured, in order. Throws if the kernel dropped any. */
  stop(): Promise<Segment[]>;
}

function parse(out: string): Segment[] {
  const segments: Segment[] = [];
  for (const line of out.split('\n')) {
    const m = LINE.exec(line);
    if (m) segments.push({ src: m[1], dst: m[2], flags: m[3], length: Number(m[4]) });
  }
  return segments;
}

// 12:44:51.471263 IP 127.0.0.1.58712 > 127.9.9.2.39999: Flags [.], ack 306…, win 64, options […], length 0
const LINE = /^\S+ IP (\S+) > (\S+): Flags \[([^\]]*)\].* length (\d+)/;

/** Starts capturing TCP on `lo` with `filter` (a pcap expression); resolves once tcpdump listens. */
export async function captureLoopback(filter: string): Promise<Capture> {
  // Headers only (-s 128) into a 16 MiB buffer: with a full-size snapshot the kernel's ring holds
  // few packets, and a busy machine (other tests' loopback traffic) overflows it before tcpdump reads.
  const child: ChildProcess = spawn('tcpdump', ['-i', 'lo', '-nn', '-l', '-S', '-s', '128', '-B', '16384', '--immediate-mode', filter],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { err += d; });
  const exited = once(child, 'exit');
  await new Promise<void>((resolve, reject) => {
    const check = () => { if (err.includes('listening on')) resolve(); };
    child.stderr!.on('data', check);
    child.once('error', (e) => reject(new Error(`tcpdump: ${e.message} (apt-get install tcpdump)`)));
    child.once('exit', (code) => reject(new Error(`tcpdump exited (${code}): ${err.trim()}`)));
  });
  return {
    segments: () => parse(out),
    async stop() {
      // tcpdump leaves on SIGINT without printing what its ring still holds: a test waits (segments())
      // for what it expects before it stops the capture.
      child.kill('SIGINT');
      await exited;
      const dropped = /(\d+) packets? dropped by kernel/.exec(err);
      if (dropped === null || Number(dropped[1]) !== 0) throw new Error(`tcpdump lost packets: ${err.trim()}`);
      return parse(out);
    },
  };
}

/**
 * The segments sent on each connection to `to` ("a.b.c.d.port"), in order, one list per
 * connection. A SYN starts a new one: on loopback the kernel reuses a source port in TIME_WAIT
 * (tcp_tw_reuse), so one source end can carry several connections in a capture.
 */
export function flowsTo(segments: Segment[], to: string): Segment[][] {
  const open = new Map<string, Segment[]>();
  const flows: Segment[][] = [];
  for (const s of segments) {
    if (s.dst !== to) continue;
    let flow = open.get(s.src);
    if (flow === undefined || s.flags === 'S') {
      flows.push((flow = []));
      open.set(s.src, flow);
    }
    flow.push(s);
  }
  return flows;
}
