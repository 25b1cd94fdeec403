/**
 * `speaker: command`: the operator's own daemon (BIRD's birdc, FRR's vtysh, ExaBGP's pipe) is
 * told to announce or withdraw by a shell command, {vip} replaced by the address and {prefix} by
 * address/32 (both validated IPv4 literals, so the substitution cannot inject shell syntax).
 *
 * fulcrum does not run that daemon, so it cannot take its routes away when fulcrum dies or hangs:
 * the README's scale-out section says what the operator ties it to.
 */
import { BgpRouteError } from './errors.ts';
import { requireExecutable, runCommand, type SessionState, type Speaker } from './speaker.ts';

export interface CommandSpeakerOptions {
  announce: string;
  withdraw: string;
  /** Per command; a command that hangs fails after this long. */
  timeoutMs?: number;
}

/** The command with {vip} and {prefix} substituted. */
export function substitute(command: string, vip: string): string {
  return command.replaceAll('{vip}', vip).replaceAll('{prefix}', `${vip}/32`);
}

/** The first word of a shell command (what must be on PATH), or undefined for a shell construct. */
export function firstWord(command: string): string | undefined {
  const m = /^\s*(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*([^\s;&|()<>'"$`]+)/.exec(command);
  return m?.[1];
}

/** Checks that /bin/sh and the first word of each command can run; throws BgpSpeakerError naming it. */
export function commandBinaries(opts: Pick<CommandSpeakerOptions, 'announce' | 'withdraw'>): void {
  requireExecutable('/bin/sh', 'bgp.speaker command');
  for (const key of ['announce', 'withdraw'] as const) {
    const word = firstWord(opts[key]);
    if (word !== undefined) requireExecutable(word, `bgp.${key}`);
  }
}

export class CommandSpeaker implements Speaker {
  readonly kind = 'command' as const;
  private readonly opts: CommandSpeakerOptions;
  private runs = 0;

  constructor(opts: CommandSpeakerOptions) {
    this.opts = opts;
  }

  async start(): Promise<void> {
    commandBinaries(this.opts);
  }

  announce(vip: string): Promise<void> {
    return this.run(substitute(this.opts.announce, vip));
  }

  withdraw(vip: string): Promise<void> {
    return this.run(substitute(this.opts.withdraw, vip));
  }

  sessions(): SessionState[] | null {
    return null;
  }

  async stop(): Promise<void> {
    // Nothing runs: the daemon is the operator's.
  }

  info(): Record<string, unknown> {
    // Not the commands themselves: /api/status may be readable without the token, and an
    // operator's command line can carry a credential.
    return { commands_run: this.runs };
  }

  private async run(command: string): Promise<void> {
    this.runs++;
    const r = await runCommand('/bin/sh', ['-c', command], this.opts.timeoutMs ?? 10_000);
    if (!r.ok) throw new BgpRouteError(command, r.stderr, r.error);
  }
}
