/**
 * Taking and giving up the virtual IP(s) with the system's own tools, as keepalived users know
 * them: `ip addr add ADDR/PREFIX dev IFACE`, then gratuitous ARP (`arping -U -c 1 -I IFACE ADDR`)
 * ha.garp.count times, ha.garp.interval apart, so switches and clients learn the new MAC at once;
 * `ip addr del` to release. Every command runs as a child process (async): the event loop that
 * carries the heartbeat and the proxy is never blocked, and an arping that waits for its own
 * timeout does not delay the next one.
 *
 * Commands are serialised (add and remove never overlap); failures are logged with the command
 * line and its stderr under a stable code and reported to the caller, never thrown at the loop.
 */
import { execFile } from 'node:child_process';
import type { Logger } from '../observability/log.ts';
import { VipCommandError } from './errors.ts';

export interface VipAddress {
  address: string;
  prefix: number;
}

export interface VipOptions {
  vips: VipAddress[];
  iface: string;
  garp: { count: number; interval: number };
  logger: Logger;
  /** The binaries, for systems where they are not on PATH. */
  ipCommand?: string;
  arpingCommand?: string;
}

interface RunResult {
  ok: boolean;
  stderr: string;
  error?: Error;
}

function run(file: string, args: string[]): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: 5000 }, (error, _stdout, stderr) => {
      resolve({ ok: !error, stderr: String(stderr ?? ''), error: error ?? undefined });
    });
  });
}

/** `ip` says this when the address is already there: taking it again is not an error. */
const ALREADY_PRESENT = /File exists|already assigned/i;
/** …and this when it is not there: releasing it again is not an error. */
const NOT_PRESENT = /Cannot assign requested address|Address not found/i;

export class VipManager {
  /** True once every VIP was added (or found present), false once released. */
  held = false;
  readonly errors: Record<'FULCRUM_ERR_VIP_ADD' | 'FULCRUM_ERR_VIP_REMOVE' | 'FULCRUM_ERR_GARP', number> = {
    FULCRUM_ERR_VIP_ADD: 0, FULCRUM_ERR_VIP_REMOVE: 0, FULCRUM_ERR_GARP: 0,
  };
  garpsSent = 0;
  private readonly opts: VipOptions;
  private readonly log: Logger;
  private readonly ip: string;
  private readonly arping: string;
  /** Serialises add/remove: each command waits for the previous one. */
  private queue: Promise<unknown> = Promise.resolve();
  private garpTimer: NodeJS.Timeout | null = null;
  private garpBurst = 0;

  constructor(opts: VipOptions) {
    this.opts = opts;
    this.log = opts.logger;
    this.ip = opts.ipCommand ?? 'ip';
    this.arping = opts.arpingCommand ?? 'arping';
  }

  /** A reload's ha.garp, used from the next announcement on. */
  setGarp(garp: { count: number; interval: number }): void {
    this.opts.garp = { ...garp };
  }

  /** Adds every VIP; resolves to the errors met (empty when all are present). */
  add(): Promise<VipCommandError[]> {
    return this.enqueue(async () => {
      const errors: VipCommandError[] = [];
      for (const v of this.opts.vips) {
        const args = ['addr', 'add', `${v.address}/${v.prefix}`, 'dev', this.opts.iface];
        const r = await run(this.ip, args);
        if (!r.ok && !ALREADY_PRESENT.test(r.stderr)) errors.push(this.fail('FULCRUM_ERR_VIP_ADD', this.ip, args, r));
      }
      this.held = errors.length === 0;
      return errors;
    });
  }

  /** Removes every VIP (stops a garp burst first: never announce an address we no longer have). */
  remove(): Promise<VipCommandError[]> {
    this.stopGarp();
    return this.enqueue(async () => {
      const errors: VipCommandError[] = [];
      for (const v of this.opts.vips) {
        const args = ['addr', 'del', `${v.address}/${v.prefix}`, 'dev', this.opts.iface];
        const r = await run(this.ip, args);
        if (!r.ok && !NOT_PRESENT.test(r.stderr)) errors.push(this.fail('FULCRUM_ERR_VIP_REMOVE', this.ip, args, r));
      }
      this.held = false;
      return errors;
    });
  }

  /**
   * Starts a burst of gratuitous ARP for every VIP: one now, then one every garp.interval until
   * garp.count. A new burst replaces a running one. Resolves once the first announcement's arpings
   * have ended, to their errors (empty: every VIP announced), or to null when nothing was sent (the
   * burst was replaced, or the VIP is not held); later rounds' failures are counted and logged.
   */
  garp(): Promise<VipCommandError[] | null> {
    this.stopGarp();
    const burst = this.garpBurst;
    let sent = 0;
    const tick = (): Promise<VipCommandError[]> | null => {
      if (burst !== this.garpBurst || !this.held) return null;
      sent++;
      const round = this.opts.vips.map((v) => {
        const args = ['-U', '-c', '1', '-I', this.opts.iface, v.address];
        this.garpsSent++;
        return run(this.arping, args).then((r) => (r.ok ? null : this.fail('FULCRUM_ERR_GARP', this.arping, args, r)));
      });
      if (sent >= this.opts.garp.count) this.stopGarp();
      return Promise.all(round).then((errors) => errors.filter((e): e is VipCommandError => e !== null));
    };
    // Queued behind a pending add, so the first announcement follows the address.
    return this.queue.then(() => {
      if (burst !== this.garpBurst) return null;
      const first = tick();
      if (burst === this.garpBurst && sent < this.opts.garp.count) this.garpTimer = setInterval(() => void tick(), this.opts.garp.interval);
      return first;
    });
  }

  /** Ends the running burst, if any (a burst started later gets a new number). */
  stopGarp(): void {
    this.garpBurst++;
    if (this.garpTimer) clearInterval(this.garpTimer);
    this.garpTimer = null;
  }

  /** Resolves once every queued command has finished. */
  idle(): Promise<void> {
    return this.queue.then(() => undefined);
  }

  private enqueue<T>(job: () => Promise<T>): Promise<T> {
    const next = this.queue.then(job, job);
    this.queue = next.catch(() => undefined);
    return next;
  }

  private fail(code: VipCommandError['code'] & keyof VipManager['errors'], file: string, args: string[], r: RunResult): VipCommandError {
    const command = [file, ...args].join(' ');
    const err = new VipCommandError(code, command, r.stderr, r.error);
    this.errors[code]++;
    this.log.error({ code, command, stderr: r.stderr.trim(), err: r.error?.message }, `${command} failed`);
    return err;
  }
}
