/**
 * `speaker: gobgp`: fulcrum runs gobgpd (Debian `gobgpd`) as its child and drives it with the
 * `gobgp` CLI over a unix socket in a state directory of its own (no TCP port to collide on;
 * gobgpd's own BGP listener is off, `port = -1`: it connects out to its neighbours).
 *
 * Tied to fulcrum both ways, so the route never outlives the ability to serve:
 * - death: gobgpd runs under a small bash wrapper whose stdin is a pipe from fulcrum. When
 *   fulcrum dies (kill -9 included) the pipe closes, the wrapper's `read` ends and it kills
 *   gobgpd; gobgpd is started with `setpriv --pdeathsig KILL`, so it also dies with the wrapper.
 *   The kernel then closes the BGP session's TCP connection and the router withdraws at once
 *   (≈ 0.1 s in the lab).
 * - hang: fulcrum's main loop writes one line to that pipe every liveness/4. A wrapper not fed for
 *   `bgp.liveness` (SIGSTOP, a stuck loop) kills gobgpd the same way: the route is gone within
 *   liveness + the router's reaction to a closed session. When fulcrum runs again it sees the
 *   wrapper gone, starts a new one and the owner announces what should be announced again.
 * BGP's own hold timer (bgp.hold_time, 3 s by default) stays the bound when the node itself
 * stops answering (power, link): the router drops the session after it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from '../observability/log.ts';
import { BgpRouteError, BgpSpeakerError } from './errors.ts';
import { requireExecutable, runCommand, type SessionState, type Speaker } from './speaker.ts';

export interface GobgpOptions {
  asn: number;
  routerId: string;
  localAddress?: string;
  neighbors: readonly { address: string; asn: number }[];
  holdTimeMs: number;
  livenessMs: number;
  logger: Logger;
  /** How often sessions are read for status, metrics and session events (ms). */
  pollMs?: number;
  /** Where the config and the API socket go (default: a new directory under the system's tmp). */
  stateDir?: string;
}

/**
 * The wrapper: $1 the liveness bound in seconds, then the command. Exits 0 when its stdin closes
 * (fulcrum stopped or died), 3 when the command exited, 4 when not fed within the bound.
 * A background job of a non-interactive bash reads /dev/null, so gobgpd never eats the feed.
 */
const WRAPPER = `t=$1; shift
"$@" & pid=$!
while :; do
  IFS= read -r -t "$t" _; rc=$?
  [ $rc -ne 0 ] && break
  kill -0 "$pid" 2>/dev/null || { wait "$pid"; echo "fulcrum-bgp: gobgpd exited with $?" >&2; exit 3; }
done
kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
if [ $rc -gt 128 ]; then echo "fulcrum-bgp: not fed for \${t}s: killed gobgpd" >&2; exit 4; fi
exit 0`;

/** gobgp's apipb.PeerState.SessionState numbers. */
const SESSION_STATES = ['unknown', 'idle', 'connect', 'active', 'opensent', 'openconfirm', 'established'];

/** gobgpd's TOML config: our AS and id, each neighbour with the hold time and quick retries. */
export function gobgpdConfig(o: Pick<GobgpOptions, 'asn' | 'routerId' | 'localAddress' | 'neighbors' | 'holdTimeMs'>): string {
  const hold = Math.round(o.holdTimeMs / 1000);
  const keepalive = Math.max(1, Math.floor(hold / 3));
  const lines = ['# written by fulcrum (src/bgp/gobgp.ts) at each start', '[global.config]', `  as = ${o.asn}`, `  router-id = "${o.routerId}"`, '  port = -1'];
  if (o.localAddress) lines.push(`  local-address-list = ["${o.localAddress}"]`);
  for (const n of o.neighbors) {
    lines.push('[[neighbors]]', '  [neighbors.config]', `    neighbor-address = "${n.address}"`, `    peer-as = ${n.asn}`,
      '  [neighbors.timers.config]', `    hold-time = ${hold}`, `    keepalive-interval = ${keepalive}`, '    connect-retry = 1',
      '    idle-hold-time-after-reset = 1');
    if (o.localAddress) lines.push('  [neighbors.transport.config]', `    local-address = "${o.localAddress}"`);
  }
  return lines.join('\n') + '\n';
}

const STATE_DIR_PREFIX = 'fulcrum-bgp-';

/** Removes state directories of fulcrums that are gone (killed before they could remove theirs). */
function sweepStaleDirs(): void {
  let names: string[];
  try {
    names = readdirSync(tmpdir()).filter((n) => n.startsWith(STATE_DIR_PREFIX));
  } catch {
    return;
  }
  for (const name of names) {
    const dir = join(tmpdir(), name);
    try {
      const pid = Number(readFileSync(join(dir, 'owner.pid'), 'utf8'));
      if (!Number.isInteger(pid) || pid <= 0) continue;
      try {
        process.kill(pid, 0);
        continue; // its owner runs
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') continue;
      }
      rmSync(dir, { recursive: true, force: true });
    } catch {
      // not ours, or being created: left alone
    }
  }
}

/** The binaries speaker: gobgp runs; throws BgpSpeakerError naming the first one missing. */
export function gobgpBinaries(): { gobgpd: string; gobgp: string; setpriv: string; bash: string } {
  return {
    gobgpd: requireExecutable('gobgpd', 'bgp.speaker gobgp (Debian package gobgpd)'),
    gobgp: requireExecutable('gobgp', 'bgp.speaker gobgp (Debian package gobgpd)'),
    setpriv: requireExecutable('setpriv', 'bgp.speaker gobgp (util-linux)'),
    bash: requireExecutable('bash', 'bgp.speaker gobgp'),
  };
}

export class GobgpSpeaker implements Speaker {
  readonly kind = 'gobgp' as const;
  onRoutesLost?: (cause: string) => void;
  onSession?: (neighbor: string, from: string, to: string) => void;
  private readonly opts: GobgpOptions;
  private readonly log: Logger;
  private readonly dir: string;
  private readonly ownDir: boolean;
  private bins: { gobgpd: string; gobgp: string; setpriv: string; bash: string } | null = null;
  private child: ChildProcess | null = null;
  private feedTimer: NodeJS.Timeout | null = null;
  private pollTimer: NodeJS.Timeout | null = null;
  private restartTimer: NodeJS.Timeout | null = null;
  private stopping = false;
  private restarts = 0;
  /** Losses in a row (reset once gobgpd ran a minute): the restart pause grows with it. */
  private lossesInARow = 0;
  private launchedAt = 0;
  private lastExit: string | null = null;
  private stderrTail = '';
  private polled: SessionState[] = [];

  constructor(opts: GobgpOptions) {
    this.opts = opts;
    this.log = opts.logger;
    this.ownDir = opts.stateDir === undefined;
    if (this.ownDir) sweepStaleDirs();
    this.dir = opts.stateDir ?? mkdtempSync(join(tmpdir(), STATE_DIR_PREFIX));
    // Whose directory it is: a fulcrum killed with -9 cannot remove it; the next start does.
    if (this.ownDir) writeFileSync(join(this.dir, 'owner.pid'), `${process.pid}\n`);
  }

  private get target(): string {
    return `unix://${join(this.dir, 'gobgpd.sock')}`;
  }

  async start(): Promise<void> {
    this.bins ??= gobgpBinaries();
    this.stopping = false;
    await this.launch();
    this.pollTimer ??= setInterval(() => void this.poll(), this.opts.pollMs ?? 1000);
    this.pollTimer.unref();
  }

  /** Starts the wrapper and gobgpd and waits until gobgpd's API answers. */
  private async launch(): Promise<void> {
    const bins = this.bins!;
    const conf = join(this.dir, 'gobgpd.toml');
    writeFileSync(conf, gobgpdConfig(this.opts));
    rmSync(join(this.dir, 'gobgpd.sock'), { force: true });
    const seconds = (this.opts.livenessMs / 1000).toFixed(3);
    const child = spawn(bins.bash, ['-c', WRAPPER, 'fulcrum-bgp', seconds, bins.setpriv, '--pdeathsig', 'KILL', '--',
      bins.gobgpd, '-f', conf, '--api-hosts', this.target, '--pprof-disable', '-l', 'warn', '-p'], { stdio: ['pipe', 'ignore', 'pipe'] });
    this.child = child;
    this.stderrTail = '';
    child.stdin!.on('error', () => { /* the wrapper is gone: its exit is handled below */ });
    child.stderr!.on('data', (d: Buffer) => {
      const text = d.toString();
      this.stderrTail = (this.stderrTail + text).slice(-2000);
      for (const line of text.split('\n').filter(Boolean)) this.log.info({ gobgpd: line }, 'gobgpd');
    });
    child.once('exit', (code, signal) => this.onExit(child, code, signal));
    // The feed: one line per quarter of the bound, from this (the main) loop, so a loop that
    // stops turning stops feeding. Unref'd: a fulcrum otherwise done is not held open by it.
    const feed = () => { if (child.stdin!.writable) child.stdin!.write('\n'); };
    feed();
    this.feedTimer = setInterval(feed, Math.max(20, Math.floor(this.opts.livenessMs / 4)));
    this.feedTimer.unref();
    const deadline = performance.now() + 10_000;
    for (;;) {
      const r = await runCommand(bins.gobgp, ['--target', this.target, 'global'], 2000);
      if (r.ok) break;
      if (child.exitCode !== null || child.signalCode !== null || performance.now() > deadline) {
        // Not this speaker's child any more: its exit is not a loss to restart from (the caller decides).
        this.child = null;
        if (this.feedTimer) clearInterval(this.feedTimer);
        this.feedTimer = null;
        child.kill('SIGKILL');
        throw new BgpSpeakerError(`bgp.speaker gobgp: gobgpd did not come up: ${(this.stderrTail || r.stderr).trim().slice(-500) || 'no API answer within 10 s'}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    this.launchedAt = performance.now();
    this.log.info({ pid: child.pid, dir: this.dir, liveness_ms: this.opts.livenessMs }, 'gobgpd running');
  }

  private onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.child !== child) return;
    this.child = null;
    if (this.feedTimer) clearInterval(this.feedTimer);
    this.feedTimer = null;
    if (this.stopping) return;
    const why = code === 4 ? `not fed for ${this.opts.livenessMs}ms (fulcrum hung): the wrapper killed gobgpd`
      : code === 3 ? `gobgpd exited: ${this.stderrTail.trim().split('\n').at(-1) ?? ''}`
        : `the wrapper exited (code ${code}, signal ${signal})`;
    this.lastExit = why;
    if (performance.now() - this.launchedAt > 60_000) this.lossesInARow = 0;
    this.log.error({ code, signal }, `BGP speaker lost: ${why}; restarting it`);
    this.markSessions('idle');
    this.onRoutesLost?.(`speaker lost: ${why}`);
    this.scheduleRestart();
  }

  /** Starts gobgpd again after a pause that grows with losses in a row (0.2 s, then 1 s … 10 s). */
  private scheduleRestart(): void {
    if (this.stopping || this.restartTimer) return;
    const delay = this.lossesInARow === 0 ? 200 : Math.min(10_000, 1000 * 2 ** Math.min(this.lossesInARow - 1, 4));
    this.lossesInARow++;
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      if (this.stopping) return;
      this.restarts++;
      this.launch().then(
        () => this.onRoutesLost?.('speaker restarted'),
        (err) => {
          this.log.error({ err }, 'restarting the BGP speaker failed; trying again');
          this.scheduleRestart();
        },
      );
    }, delay);
    this.restartTimer.unref();
  }

  announce(vip: string): Promise<void> {
    return this.rib('add', vip);
  }

  withdraw(vip: string): Promise<void> {
    return this.rib('del', vip);
  }

  /** Origin IGP: GoBGP's default (incomplete) is not multipath next to other daemons' paths (lab finding F1). */
  private async rib(op: 'add' | 'del', vip: string): Promise<void> {
    const args = ['--target', this.target, 'global', 'rib', op, '-a', 'ipv4', `${vip}/32`, ...(op === 'add' ? ['origin', 'igp'] : [])];
    if (!this.child) throw new BgpRouteError(`gobgp ${args.join(' ')}`, 'gobgpd is not running');
    const r = await runCommand(this.bins!.gobgp, args);
    if (!r.ok) throw new BgpRouteError(`gobgp ${args.join(' ')}`, r.stderr, r.error);
  }

  sessions(): SessionState[] {
    return this.polled.length > 0 ? this.polled : this.opts.neighbors.map((n) => ({ neighbor: n.address, asn: n.asn, state: 'idle', established: false }));
  }

  /** Reads the sessions now (the poll timer does it every pollMs). */
  async poll(): Promise<void> {
    if (!this.child || !this.bins) return;
    const r = await runCommand(this.bins.gobgp, ['--target', this.target, 'neighbor', '-j'], 2000);
    if (!r.ok) return;
    let peers: { state?: { neighbor_address?: string; peer_asn?: number; session_state?: number } }[];
    try {
      peers = JSON.parse(r.stdout);
    } catch {
      return;
    }
    const next = peers.map((p) => {
      const state = SESSION_STATES[p.state?.session_state ?? 0] ?? 'unknown';
      return { neighbor: p.state?.neighbor_address ?? '?', asn: p.state?.peer_asn ?? null, state, established: state === 'established' };
    });
    this.update(next);
  }

  private markSessions(state: string): void {
    this.update(this.sessions().map((s) => ({ ...s, state, established: false })));
  }

  private update(next: SessionState[]): void {
    const before = new Map(this.sessions().map((s) => [s.neighbor, s.state]));
    this.polled = next;
    for (const s of next) {
      const from = before.get(s.neighbor) ?? 'idle';
      if (from !== s.state) this.onSession?.(s.neighbor, from, s.state);
    }
  }

  async stop(): Promise<void> {
    this.stopping = true;
    for (const t of [this.feedTimer, this.pollTimer, this.restartTimer]) if (t) clearInterval(t);
    this.feedTimer = this.pollTimer = this.restartTimer = null;
    const child = this.child;
    if (child) {
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      child.stdin!.end(); // the wrapper reads EOF and kills gobgpd
      const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
      await exited;
      clearTimeout(timer);
      this.child = null;
    }
    this.markSessions('idle');
    if (this.ownDir) rmSync(this.dir, { recursive: true, force: true });
  }

  info(): Record<string, unknown> {
    return {
      pid: this.child?.pid ?? null,
      running: this.child !== null,
      restarts: this.restarts,
      last_exit: this.lastExit,
      liveness_ms: this.opts.livenessMs,
      hold_time_ms: this.opts.holdTimeMs,
      asn: this.opts.asn,
      router_id: this.opts.routerId,
    };
  }
}
