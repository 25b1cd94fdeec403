/**
 * The command line: `fulcrum <command> [options]`. Each command is one entry of COMMANDS (lazy
 * imports keep `fulcrum check` quick); add a command by adding an entry.
 *
 * Exit codes: 0 ok, 1 failure (invalid config, cannot start), 2 usage error.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { FulcrumError } from './errors.ts';
import { CTL_OPTIONS } from './admin/ctl-options.ts';
import { chooseConfig, CONFIG_ENV, DEFAULT_CONFIG, NO_CONFIG } from './config/path.ts';

export interface Command {
  summary: string;
  /** A summary read from elsewhere when help is printed (the demo's, from its config). */
  describe?: () => Promise<string>;
  usage: string;
  options: NonNullable<ParseArgsConfig['options']>;
  /** Resolves with the exit code; `run` resolves only when the balancer has stopped. */
  run(values: Record<string, unknown>, positionals: string[]): Promise<number>;
}

const configOption = { config: { type: 'string', short: 'c' } } as const;

export const COMMANDS: Record<string, Command> = {
  run: {
    summary: 'start the balancer from a config file',
    usage: 'fulcrum run [--config FILE]',
    options: configOption,
    async run(values) {
      const file = requireConfig(values);
      const [{ loadConfig }, { startFulcrum }, caps, upgrade] = await Promise.all([
        import('./config/load.ts'), import('./main.ts'), import('./ops/capabilities.ts'), import('./control/upgrade.ts'),
      ]);
      // Started by `fulcrum upgrade`: the old process's sockets and state first; it hears whether this one serves.
      const from = upgrade.upgradeParent();
      let handle;
      try {
        const config = loadConfig(file);
        // A missing capability is named here, with what needs it, before anything starts.
        const warning = caps.uncertainWarning((await caps.requireCapabilities(config)).uncertain);
        if (warning) process.stderr.write(`fulcrum run: warning: ${warning}\n`);
        const handover = from === null ? undefined : await upgrade.receiveHandover(from);
        // Signals are installed the moment the listeners are bound: from then on SIGTERM means a graceful stop.
        handle = await startFulcrum(config, { configFile: file, signals: true, notify: true, handover });
      } catch (err) {
        if (from !== null) await upgrade.reportFailed(err instanceof Error ? err.message : String(err));
        throw err;
      }
      if (from !== null) {
        upgrade.reportReady();
        // Under systemd the unit's main process is now this one (NotifyAccess=all in the unit).
        handle.notifier?.mainPid();
      }
      await handle.stopped;
      await new Promise<void>((resolve) => handle.logger.flush(() => resolve()));
      return 0;
    },
  },
  check: {
    summary: 'validate a config file and print every problem (like haproxy -c)',
    usage: 'fulcrum check [--config FILE]',
    options: configOption,
    async run(values) {
      const file = requireConfig(values);
      const { loadConfig } = await import('./config/load.ts');
      const config = loadConfig(file);
      // What `fulcrum run` would refuse before starting: the same function, not a copy of it.
      await (await import('./control/preflight.ts')).preflight(config, file);
      // The speaker's binaries are part of what the bgp section asks for: a missing one is named here.
      if (config.bgp) (await import('./bgp/index.ts')).checkSpeakerBinaries(config.bgp);
      // Capabilities and an admin API beyond loopback: notes and warnings (src/ops/check.ts).
      const notes = await (await import('./ops/check.ts')).checkNotes(config);
      for (const note of notes) process.stdout.write(`${note}\n`);
      process.stdout.write(`${file}: config OK\n`);
      return 0;
    },
  },
  demo: {
    summary: 'run local backends behind fulcrum and show what to try',
    // The count and kinds come from the demo's config itself, so the help cannot drift from it.
    describe: async () => (await import('./demo/demo.ts')).describeDemo(),
    usage: 'fulcrum demo [--config FILE]   (default: examples/demo.yaml)',
    options: configOption,
    async run(values) {
      const { runDemo, DEMO_CONFIG } = await import('./demo/demo.ts');
      return runDemo(typeof values.config === 'string' ? values.config : DEMO_CONFIG);
    },
  },
  ctl: {
    summary: 'change a running balancer through its admin API (list, state, weight, add, remove, reload, node, upgrade)',
    usage: 'fulcrum ctl list|state|weight|add|remove|reload|node|upgrade … [--admin URL] [--token-file FILE] [--config FILE]',
    options: CTL_OPTIONS,
    async run(values, positionals) {
      return (await import('./admin/ctl.ts')).runCtlParsed(values, positionals);
    },
  },
  upgrade: {
    summary: 'replace the running balancer with the installed fulcrum, refusing and cutting no connection',
    usage: 'fulcrum upgrade [--admin URL] [--token-file FILE] [--config FILE] [--json]',
    options: CTL_OPTIONS,
    async run(values, positionals) {
      return (await import('./admin/ctl.ts')).runCtlParsed(values, ['upgrade', ...positionals]);
    },
  },
  status: {
    summary: "show the running balancer's failover role, peer, failovers and uptime",
    usage: 'fulcrum status [--admin URL] [--token-file FILE] [--config FILE] [--json]',
    options: CTL_OPTIONS,
    async run(values, positionals) {
      return (await import('./admin/ctl.ts')).runCtlParsed(values, ['status', ...positionals]);
    },
  },
};

class UsageError extends Error {}

function requireConfig(values: Record<string, unknown>): string {
  const choice = chooseConfig(values.config);
  if (choice === undefined) throw new UsageError(NO_CONFIG);
  return choice.file;
}

const summaryOf = async (c: Command): Promise<string> => (c.describe ? c.describe().catch(() => c.summary) : c.summary);

export async function usage(): Promise<string> {
  const width = Math.max(...Object.keys(COMMANDS).map((n) => n.length));
  const entries = Object.entries(COMMANDS);
  const summaries = await Promise.all(entries.map(([, c]) => summaryOf(c)));
  const lines = entries.map(([name, c], i) => `  ${name.padEnd(width)}  ${summaries[i]}\n  ${' '.repeat(width)}  ${c.usage}`);
  return `fulcrum — L4 TCP load balancer\n\nusage: fulcrum <command> [options]\n\ncommands:\n${lines.join('\n')}\n\n` +
    `  fulcrum --help        this text\n  fulcrum --version     the version (and the commit it was built from)\n\n` +
    `config file (run, check, ctl, status): --config FILE, else $${CONFIG_ENV}, else ${DEFAULT_CONFIG}\n`;
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined) {
    process.stderr.write(await usage());
    return 2;
  }
  if (name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(await usage());
    return 0;
  }
  if (name === '--version' || name === '-V') {
    const { versionText } = await import('./version.ts');
    process.stdout.write(`fulcrum ${versionText()} on Node.js ${process.version}\n`);
    return 0;
  }
  const command = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (command === undefined) {
    process.stderr.write(`fulcrum: unknown command ${JSON.stringify(name)}\n\n${await usage()}`);
    return 2;
  }
  try {
    if (rest.includes('--help') || rest.includes('-h')) {
      process.stdout.write(`usage: ${command.usage}\n${await summaryOf(command)}\n`);
      return 0;
    }
    const { values, positionals } = parseArgs({ args: rest, options: command.options, allowPositionals: true, strict: true });
    return await command.run(values, positionals);
  } catch (err) {
    const code = typeof err === 'object' && err !== null && 'code' in err ? String(err.code) : '';
    const message = err instanceof Error ? err.message : String(err);
    if (err instanceof UsageError || code.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`fulcrum ${name}: ${message}\nusage: ${command.usage}\n`);
      return 2;
    }
    if (err instanceof FulcrumError || code.startsWith('FULCRUM_ERR_')) {
      // Config problems: every one, "path: message, got value", as haproxy -c prints them.
      process.stderr.write(`fulcrum ${name}: [${code}] ${message}\n`);
      return 1;
    }
    process.stderr.write(`fulcrum ${name}: ${err instanceof Error ? err.stack : String(err)}\n`);
    return 1;
  }
}

// Run when executed (bin/fulcrum execs `node src/cli.ts`), not when imported.
if (import.meta.main) {
  // Exit explicitly: a failed start may leave timers behind; stdout/stderr are synchronous on Linux.
  process.exit(await main(process.argv.slice(2)));
}
