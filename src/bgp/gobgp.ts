/**
 * `speaker: gobgp`: fulcrum runs gobgpd (Debian `gobgpd`) as its child (after an upgrade: the
 * first process's child, adopted; see below) and drives it with the
 * `gobgp` CLI over a unix socket in a state directory of its own (no TCP port to collide on;
 * gobgpd's own BGP listener is off, `port = -1`: it connects out to its neighbours).
 *
 * Tied to fulcrum both ways, so the route never outlives the ability to serve:
 * - death: gobgpd runs under a small bash wrapper whose stdin is a pipe from fulcrum (libuv makes
 *   it a Unix socket pair: a shutdown() ends it for every process holding it, a close() only
 *   drops one copy — which is what lets an upgrade move it). When
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
 *
 * `fulcrum upgrade` hands the running daemon over instead of restarting it, so the session and
 * the route never drop (src/control/upgrade.ts carries the descriptors, ../control/carry.ts the
 * data): the old process gives the next one its copies of the liveness pipe's write end and of
 * gobgpd's stderr (`handOver`), the state directory (config, API socket) and the pids. The new
 * one adopts (`adopt` option): no new gobgpd; it feeds the pipe from the moment it takes it, polls
 * and announces over the same API socket, and reads the RIB for what is announced. There is no
 * gap in the feed to bound: the old one feeds until it lets go (`release`, once the new one
 * reported ready), the new one from its adoption (before ready) on, so the wrapper is never unfed
 * longer than liveness/4 plus a loop turn. The old one then closes its copies (close, never a
 * shutdown of the shared socket), so only the new process holds the tie: its death or hang takes
 * the route away as before. The wrapper runs in a session of its own (a signal to fulcrum's process
 * group, a terminal's ^C, does not reach it) and is reparented when the old process exits; its
 * stderr, read by the new process, never becomes a broken pipe (gobgpd, a Go program, would exit
 * on one). Until the new process commits (its start went through), stopping it only releases:
 * a failed upgrade leaves gobgpd tied to the old process, unchanged. A new config whose gobgpd
 * settings differ (asn, router id, neighbours, timers, liveness) is refused: gobgpd keeps running
 * as it is, and the upgrade fails saying what differs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from '../observability/log.ts';
import { BgpRouteError, BgpSpeakerError } from './errors.ts';
import { requireExecutable, runCommand, type CarriedGobgp, type NamedHandle, type SessionState, type Speaker } from './speaker.ts';

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

/** Whether a pid runs (EPERM: it runs, as another user). */
function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/**
 * Removes state directories of fulcrums that are gone (killed before they could remove theirs).
 * owner.pid holds one pid a line: the fulcrum that made it, and each that adopted it by upgrade;
 * the directory stays while any of them runs (a failed upgrade leaves it to the old one).
 */
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
      const pids = readFileSync(join(dir, 'owner.pid'), 'utf8').split('\n').filter(Boolean).map(Number);
      if (pids.length === 0 || pids.some((pid) => !Number.isInteger(pid) || pid <= 0)) continue;
      if (pids.some(running)) continue;
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

/** The wrapper this process feeds, and what ties it to it. */
interface Tie {
  /** The wrapper's pid. */
  pid: number;
  gobgpdPid: number | null;
  /** The liveness pipe's write end (the wrapper's stdin). */
  feed: Socket;
  /** The wrapper's and gobgpd's stderr. */
  log: Socket;
  /** This process's child; null when adopted (its end is then seen as the pipe closing). */
  child: ChildProcess | null;
  feedTimer: NodeJS.Timeout | null;
}

/** What the next process adopts (src/bgp/index.ts builds it from the carried state and the handed descriptors). */
export interface GobgpAdoption {
  carried: CarriedGobgp;
  /** By name (HANDLE_NAMES): the libuv handles of the descriptors the old process handed over. */
  handles: ReadonlyMap<string, object>;
  fromPid: number;
}

/** The descriptors' names on the upgrade channel. */
const HANDLE_NAMES = { feed: 'bgp-liveness', log: 'bgp-log' } as const;

/** The pids a process started (gobgpd is the wrapper's only child), from /proc. */
function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** The first line where two configs differ, for a message ("`as = 65001` → `as = 65002`"). */
function firstDifference(a: string, b: string): string {
  const x = a.split('\n');
  const y = b.split('\n');
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    if (x[i] !== y[i]) return `\`${x[i]?.trim() ?? ''}\` → \`${y[i]?.trim() ?? ''}\``;
  }
  return 'none';
}

export class GobgpSpeaker implements Speaker {
  readonly kind = 'gobgp' as const;
  onRoutesLost?: (cause: string) => void;
  onSession?: (neighbor: string, from: string, to: string) => void;
  private readonly opts: GobgpOptions;
  private readonly log: Logger;
  private readonly dir: string;
  private readonly ownDir: boolean;
  private readonly adoption: GobgpAdoption | null;
  /** False while an adoption is not final: stop() then only releases (the old process still holds the tie). */
  private committed: boolean;
  private bins: { gobgpd: string; gobgp: string; setpriv: string; bash: string } | null = null;
  private tie: Tie | null = null;
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

  constructor(opts: GobgpOptions & { adopt?: GobgpAdoption }) {
    this.opts = opts;
    this.log = opts.logger;
    this.adoption = opts.adopt ?? null;
    this.committed = this.adoption === null;
    // An adopted directory is this process's from its adoption on (it removes it when it stops).
    this.ownDir = opts.stateDir === undefined;
    if (this.ownDir && this.adoption === null) sweepStaleDirs();
    this.dir = this.adoption?.carried.dir ?? opts.stateDir ?? mkdtempSync(join(tmpdir(), STATE_DIR_PREFIX));
    // Whose directory it is: a fulcrum killed with -9 cannot remove it; the next start does.
    if (this.ownDir && this.adoption === null) writeFileSync(join(this.dir, 'owner.pid'), `${process.pid}\n`);
  }

  private get target(): string {
    return `unix://${join(this.dir, 'gobgpd.sock')}`;
  }

  async start(): Promise<void> {
    this.bins ??= gobgpBinaries();
    this.stopping = false;
    if (this.adoption !== null) await this.adopt(this.adoption);
    else await this.launch();
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
    // detached: a session of its own, so a signal to fulcrum's process group (^C) reaches fulcrum
    // alone, which withdraws first; the pipe is the only tie.
    const child = spawn(bins.bash, ['-c', WRAPPER, 'fulcrum-bgp', seconds, bins.setpriv, '--pdeathsig', 'KILL', '--',
      bins.gobgpd, '-f', conf, '--api-hosts', this.target, '--pprof-disable', '-l', 'warn', '-p'], { stdio: ['pipe', 'ignore', 'pipe'], detached: true });
    const tie: Tie = { pid: child.pid ?? 0, gobgpdPid: null, feed: child.stdin as Socket, log: child.stderr as Socket, child, feedTimer: null };
    this.stderrTail = '';
    this.hold(tie);
    child.once('exit', (code, signal) => this.onExit(tie, code, signal));
    const r = await this.waitForApi(10_000, () => child.exitCode !== null || child.signalCode !== null);
    if (!r.ok) {
      // Not this speaker's child any more: its exit is not a loss to restart from (the caller decides).
      this.untie(tie);
      child.kill('SIGKILL');
      throw new BgpSpeakerError(`bgp.speaker gobgp: gobgpd did not come up: ${(this.stderrTail || r.stderr).trim().slice(-500) || 'no API answer within 10 s'}`);
    }
    tie.gobgpdPid = childrenOf(tie.pid)[0] ?? null;
    this.launchedAt = performance.now();
    this.log.info({ pid: child.pid, gobgpd_pid: tie.gobgpdPid, dir: this.dir, liveness_ms: this.opts.livenessMs }, 'gobgpd running');
  }

  /**
   * `fulcrum upgrade`, the new process: takes the old one's gobgpd as it runs — feeds the pipe at
   * once, checks the API answers. Rejects (BgpSpeakerError) when this config would run gobgpd
   * differently or the daemon does not answer; the caller then releases (stop() before commit).
   */
  private async adopt(a: GobgpAdoption): Promise<void> {
    const c = a.carried;
    const want = gobgpdConfig(this.opts);
    const what = `the running gobgpd (pid ${c.gobgpd_pid ?? '?'}, wrapper ${c.wrapper_pid}, of pid ${a.fromPid})`;
    if (c.conf !== want || c.liveness_ms !== this.opts.livenessMs) {
      const diff = c.conf !== want ? firstDifference(c.conf, want) : `liveness ${c.liveness_ms}ms → ${this.opts.livenessMs}ms`;
      throw new BgpSpeakerError(`bgp: this config runs gobgpd differently from ${what} (${diff}); an upgrade keeps gobgpd as it runs: restart fulcrum to apply a change of the bgp section`);
    }
    const feedHandle = a.handles.get(HANDLE_NAMES.feed);
    const logHandle = a.handles.get(HANDLE_NAMES.log);
    if (feedHandle === undefined || logHandle === undefined) throw new BgpSpeakerError(`bgp: ${what}: its liveness pipe was not handed over`);
    // Both read: the liveness pipe's end of file says the wrapper is gone (not this process's child: no exit event).
    const tie: Tie = {
      pid: c.wrapper_pid, gobgpdPid: c.gobgpd_pid, child: null, feedTimer: null,
      feed: new Socket({ handle: feedHandle as never, readable: true, writable: true }),
      log: new Socket({ handle: logHandle as never, readable: true, writable: true }),
    };
    this.hold(tie);
    tie.feed.once('close', () => this.onLost(tie, `the wrapper (pid ${tie.pid}) closed the liveness pipe: gobgpd exited or was killed`));
    const r = await this.waitForApi(5000, () => this.tie !== tie);
    if (!r.ok) throw new BgpSpeakerError(`bgp: ${what} does not answer on ${this.target}: ${r.stderr.trim().slice(-300) || 'no answer within 5 s'}`);
    // Either owner running keeps the directory from another fulcrum's sweep.
    appendFileSync(join(this.dir, 'owner.pid'), `${process.pid}\n`);
    // The sessions as they are (established, in the common case), not a change from idle.
    await this.poll({ quiet: true });
    this.launchedAt = performance.now();
    this.log.info({ pid: tie.pid, gobgpd_pid: tie.gobgpdPid, dir: this.dir, from_pid: a.fromPid, liveness_ms: this.opts.livenessMs }, `gobgpd adopted from pid ${a.fromPid} (upgrade): fed from this process now`);
  }

  /** Polls gobgpd's API until it answers, `gone` says stop, or the time is up. */
  private async waitForApi(ms: number, gone: () => boolean): Promise<{ ok: boolean; stderr: string }> {
    const deadline = performance.now() + ms;
    for (;;) {
      const r = await runCommand(this.bins!.gobgp, ['--target', this.target, 'global'], 2000);
      if (r.ok) return r;
      if (gone() || performance.now() > deadline) return { ok: false, stderr: r.stderr };
      await new Promise((res) => setTimeout(res, 50));
    }
  }

  /** This process holds the tie: reads the stderr, feeds the pipe. */
  private hold(tie: Tie): void {
    this.tie = tie;
    tie.feed.on('error', () => { /* the wrapper is gone: its exit (or the pipe's close) is handled */ });
    tie.log.on('error', () => undefined);
    tie.log.on('data', (d: Buffer) => {
      const text = d.toString();
      this.stderrTail = (this.stderrTail + text).slice(-2000);
      for (const line of text.split('\n').filter(Boolean)) this.log.info({ gobgpd: line }, 'gobgpd');
    });
    // The feed: one line per quarter of the bound, from this (the main) loop, so a loop that
    // stops turning stops feeding. Unref'd: a fulcrum otherwise done is not held open by it.
    const feed = () => { if (tie.feed.writable) tie.feed.write('\n'); };
    feed();
    tie.feedTimer = setInterval(feed, Math.max(20, Math.floor(this.opts.livenessMs / 4)));
    tie.feedTimer.unref();
  }

  /** Stops feeding; the tie is no longer this speaker's to watch. */
  private untie(tie: Tie): void {
    if (tie.feedTimer) clearInterval(tie.feedTimer);
    tie.feedTimer = null;
    if (this.tie === tie) this.tie = null;
  }

  private onExit(tie: Tie, code: number | null, signal: NodeJS.Signals | null): void {
    const why = code === 4 ? `not fed for ${this.opts.livenessMs}ms (fulcrum hung): the wrapper killed gobgpd`
      : code === 3 ? `gobgpd exited: ${this.stderrTail.trim().split('\n').at(-1) ?? ''}`
        : `the wrapper exited (code ${code}, signal ${signal})`;
    this.onLost(tie, why, { code, signal });
  }

  private onLost(tie: Tie, why: string, detail: Record<string, unknown> = {}): void {
    if (this.tie !== tie) return;
    this.untie(tie);
    if (this.stopping) return;
    this.lastExit = why;
    if (!this.committed) {
      // Adopted and not final: the daemon is the old process's, which starts its own again;
      // this one starts one at commit() (a second gobgpd now would share the state directory).
      this.log.error(detail, `BGP speaker lost during the upgrade: ${why}`);
      this.markSessions('idle');
      return;
    }
    if (performance.now() - this.launchedAt > 60_000) this.lossesInARow = 0;
    this.log.error(detail, `BGP speaker lost: ${why}; restarting it`);
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
    if (!this.tie) throw new BgpRouteError(`gobgp ${args.join(' ')}`, 'gobgpd is not running');
    const r = await runCommand(this.bins!.gobgp, args);
    if (!r.ok) throw new BgpRouteError(`gobgp ${args.join(' ')}`, r.stderr, r.error);
  }

  sessions(): SessionState[] {
    return this.polled.length > 0 ? this.polled : this.opts.neighbors.map((n) => ({ neighbor: n.address, asn: n.asn, state: 'idle', established: false }));
  }

  /** Reads the sessions now (the poll timer does it every pollMs); `quiet`: no session events (an adoption's first look). */
  async poll(how: { quiet?: boolean } = {}): Promise<void> {
    if (!this.tie || !this.bins) return;
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
    if (how.quiet) this.polled = next;
    else this.update(next);
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

  /** The VIPs gobgpd's RIB holds (what it announces), or null when it cannot be read. */
  async announced(): Promise<string[] | null> {
    if (!this.tie || !this.bins) return null;
    const r = await runCommand(this.bins.gobgp, ['--target', this.target, 'global', 'rib', '-a', 'ipv4', '-j'], 2000);
    if (!r.ok) return null;
    try {
      return Object.keys((JSON.parse(r.stdout) as Record<string, unknown> | null) ?? {}).filter((p) => p.endsWith('/32')).map((p) => p.slice(0, -3));
    } catch {
      return null;
    }
  }

  /** The old process (`fulcrum upgrade`): the running gobgpd and this process's copies of its pipes. */
  handOver(): { carried: CarriedGobgp; handles: NamedHandle[] } | null {
    const tie = this.tie;
    const handleOf = (s: Socket | undefined): object | null => (s as unknown as { _handle?: object | null } | undefined)?._handle ?? null;
    const feed = handleOf(tie?.feed);
    const log = handleOf(tie?.log);
    if (tie === null || feed === null || log === null) return null;
    return {
      carried: { dir: this.dir, conf: gobgpdConfig(this.opts), liveness_ms: this.opts.livenessMs, wrapper_pid: tie.pid, gobgpd_pid: tie.gobgpdPid },
      handles: [{ name: HANDLE_NAMES.feed, handle: feed }, { name: HANDLE_NAMES.log, handle: log }],
    };
  }

  commit(): void {
    this.committed = true;
    // The adopted gobgpd went away before the hand-over was final: this process's own now.
    if (this.tie === null && !this.stopping) {
      this.onRoutesLost?.('speaker lost during the upgrade');
      this.scheduleRestart();
    }
  }

  /**
   * Lets go of gobgpd without stopping it: the old process once the new one serves, or the new
   * one whose start failed before it committed. Its copies of the pipes are closed — never
   * end(): a shutdown ends the shared socket for every holder, and the wrapper would read EOF.
   * The state directory and the routes stay (they are the other process's).
   */
  async release(): Promise<void> {
    this.stopping = true;
    for (const t of [this.pollTimer, this.restartTimer]) if (t) clearInterval(t);
    this.pollTimer = this.restartTimer = null;
    const tie = this.tie;
    if (tie === null) return;
    this.untie(tie);
    tie.feed.destroy();
    tie.log.destroy();
    // Still this process's child while it runs: nothing of it keeps this process alive.
    tie.child?.unref();
    this.log.info({ pid: tie.pid, gobgpd_pid: tie.gobgpdPid }, 'gobgpd released: it is tied to the other process now');
  }

  async stop(): Promise<void> {
    // An adoption that is not final: the old process holds the tie and the route stays its own.
    if (!this.committed) return this.release();
    this.stopping = true;
    for (const t of [this.pollTimer, this.restartTimer]) if (t) clearInterval(t);
    this.pollTimer = this.restartTimer = null;
    const tie = this.tie;
    if (tie) {
      this.untie(tie);
      // Adopted, the wrapper is not this process's child: its end is the pipe's end of file.
      const gone = tie.child !== null ? new Promise<void>((r) => tie.child!.once('exit', () => r()))
        : tie.feed.destroyed ? Promise.resolve() : new Promise<void>((r) => tie.feed.once('close', () => r()));
      tie.feed.end(); // the wrapper reads EOF and kills gobgpd
      const timer = setTimeout(() => this.kill(tie), 2000);
      await Promise.race([gone, new Promise((r) => setTimeout(r, 4000))]);
      clearTimeout(timer);
      tie.log.destroy();
    }
    this.markSessions('idle');
    if (this.ownDir) rmSync(this.dir, { recursive: true, force: true });
  }

  /** SIGKILL to a wrapper that did not end on EOF (an adopted one only if that pid is still a wrapper). */
  private kill(tie: Tie): void {
    if (tie.child !== null) {
      tie.child.kill('SIGKILL');
      return;
    }
    try {
      if (readFileSync(`/proc/${tie.pid}/cmdline`, 'utf8').includes('fulcrum-bgp')) process.kill(tie.pid, 'SIGKILL');
    } catch {
      // gone
    }
  }

  info(): Record<string, unknown> {
    return {
      pid: this.tie?.pid ?? null,
      gobgpd_pid: this.tie?.gobgpdPid ?? null,
      running: this.tie !== null,
      adopted_from: this.adoption?.fromPid ?? null,
      restarts: this.restarts,
      last_exit: this.lastExit,
      liveness_ms: this.opts.livenessMs,
      hold_time_ms: this.opts.holdTimeMs,
      asn: this.opts.asn,
      router_id: this.opts.routerId,
    };
  }
}
