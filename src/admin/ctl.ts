/**
 * `fulcrum ctl …` and `fulcrum status`: a small command-line client of the admin API, so what an
 * operator types and what the status page does go through the same routes and checks.
 *
 *   fulcrum ctl list
 *   fulcrum ctl state SVC ADDR ready|drain|maint
 *   fulcrum ctl weight SVC ADDR N
 *   fulcrum ctl add SVC ADDR [--weight N] [--max-connections N] [--backup]
 *   fulcrum ctl remove SVC ADDR [--force]
 *   fulcrum ctl reload
 *   fulcrum ctl upgrade        (also `fulcrum upgrade`)
 *   fulcrum status
 *
 * Options: --admin URL (default: the config's admin.listen, else http://127.0.0.1:9900),
 * --token-file FILE (default: the config's admin.token_file), --config FILE (default:
 * $FULCRUM_CONFIG, else /etc/fulcrum/fulcrum.yaml when it exists: src/config/path.ts), --json.
 */
import { parseArgs } from 'node:util';
import { loadConfig } from '../config/load.ts';
import { chooseConfig, CONFIG_ENV, DEFAULT_CONFIG } from '../config/path.ts';
import { formatHostPort } from '../config/schema.ts';
import { readToken } from './server.ts';
import { CTL_OPTIONS, type CtlValues } from './ctl-options.ts';
import { READY_TIMEOUT_MS } from '../control/upgrade.ts';

export const CTL_USAGE = `usage:
  fulcrum ctl list                                   services and backends
  fulcrum ctl state SVC ADDR ready|drain|maint       set a backend's admin state
  fulcrum ctl weight SVC ADDR N                      set a backend's weight (0–256)
  fulcrum ctl add SVC ADDR [--weight N] [--max-connections N] [--backup]
  fulcrum ctl remove SVC ADDR [--force]              drain then remove (--force: at once)
  fulcrum ctl reload                                 re-read the config file
  fulcrum ctl node drain|ready                       withdraw this node's BGP VIPs (drain), or announce again
  fulcrum ctl upgrade                                start the installed fulcrum, hand over, drain this one
  fulcrum status                                     role, peer, failovers, uptime
options:
  --admin URL         admin server (default: admin.listen from the config, else http://127.0.0.1:9900)
  --token-file FILE   admin token (default: admin.token_file from the config)
  --config FILE       read the two defaults above from this config
                      (default: $${CONFIG_ENV}, else ${DEFAULT_CONFIG} when it exists)
  --json              print the API's JSON as it is`;

interface Output {
  out: (line: string) => void;
  err: (line: string) => void;
}

const defaultOutput: Output = { out: (l) => process.stdout.write(l + '\n'), err: (l) => process.stderr.write(l + '\n') };

class CtlError extends Error {}

interface Connection {
  base: string;
  token: string | undefined;
}

function connection(values: { admin?: string; 'token-file'?: string; config?: string }): Connection {
  let base = values.admin;
  let tokenFile = values['token-file'];
  // The config is read only for what the flags leave open (a broken default file does not stand
  // in the way of `--admin URL --token-file FILE`).
  const choice = base === undefined || tokenFile === undefined ? chooseConfig(values.config) : undefined;
  if (choice) {
    const config = loadConfig(choice.file);
    base ??= config.admin ? `http://${formatHostPort(config.admin.listen)}` : undefined;
    tokenFile ??= config.admin?.token_file;
  }
  base ??= 'http://127.0.0.1:9900';
  if (!/^https?:\/\//.test(base)) base = `http://${base}`;
  return { base: base.replace(/\/+$/, ''), token: tokenFile ? readToken(tokenFile) : undefined };
}

async function call(conn: Connection, method: string, path: string, body?: unknown, timeoutMs = 10_000): Promise<{ status: number; data: any }> {
  const headers: Record<string, string> = {};
  if (conn.token) headers.authorization = `Bearer ${conn.token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(conn.base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: AbortSignal.timeout(timeoutMs) });
  } catch (err) {
    throw new CtlError(`cannot reach the admin server at ${conn.base}: ${(err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : (err as Error).message}`);
  }
  const text = await res.text();
  let data: any;
  try {
    data = JSON.parse(text);
  } catch {
    data = { raw: text };
  }
  if (!res.ok) {
    const e = data?.error;
    let message = e ? `${e.code}: ${e.message}` : `HTTP ${res.status}`;
    if (Array.isArray(e?.problems) && !String(e.message).includes('\n')) {
      message += '\n' + e.problems.map((p: { path: string; message: string }) => `  ${p.path}: ${p.message}`).join('\n');
    }
    throw new CtlError(message);
  }
  return { status: res.status, data };
}

const seg = (s: string): string => encodeURIComponent(s);

function table(rows: string[][]): string[] {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ').trimEnd());
}

function printList(data: any, o: Output): void {
  for (const s of data.services) {
    const udp = s.protocol === 'udp';
    const head = [s.name, udp ? 'udp' : '', s.listen, s.balance].filter(Boolean).join('  ');
    const limit = s.max_connections ? '/' + s.max_connections : '';
    if (udp) {
      // Flows, not connections; nothing queues. Datagrams each way and drops by reason instead.
      const c = s.counters;
      const drops = Object.entries(c.drops ?? {}).filter(([, v]) => (v as number) > 0).map(([k, v]) => `${k} ${v}`).join(', ');
      o.out(`${head}   flows ${s.active}${limit}  created ${c.accepted}  datagrams in ${c.datagrams_in} out ${c.datagrams_out}${drops ? `  dropped ${drops}` : ''}`);
    } else {
      o.out(`${head}   active ${s.active}${limit}  queued ${s.queued}  sessions ${s.counters.accepted}`);
    }
    // A UDP service's backends: flows (active, created) and their datagrams each way as well as bytes.
    const rows = [udp
      ? ['  BACKEND', 'STATE', 'WEIGHT', 'FLOWS', 'CREATED', 'FAILS', 'IN', 'OUT', 'DGRAMS IN', 'DGRAMS OUT', '']
      : ['  BACKEND', 'STATE', 'WEIGHT', 'ACTIVE', 'SESSIONS', 'FAILS', 'IN', 'OUT', '']];
    for (const b of s.backends) {
      const tags = [b.backup ? 'backup' : '', b.removing ? 'removing' : ''].filter(Boolean).join(',');
      const c = b.counters;
      const datagrams = udp ? [String(c.datagrams_in ?? 0), String(c.datagrams_out ?? 0)] : [];
      rows.push([`  ${b.address}`, b.state, String(b.weight), String(b.active), String(c.connections),
        String(c.connect_failures), String(c.bytes_in), String(c.bytes_out), ...datagrams, tags]);
    }
    for (const line of table(rows)) o.out(line);
  }
}

function printStatus(data: any, o: Output): void {
  const f = data.failover;
  if (f) {
    // In fault, why: the VIP could not be held, or the track fails.
    o.out(`role         ${f.role}${f.fault ? `  (${f.fault.kind}: ${f.fault.cause})` : ''}`);
    const peer = f.peer;
    if (peer) {
      const ago = peer.last_advert_ms_ago === null || peer.last_advert_ms_ago === undefined ? 'never' : `${(peer.last_advert_ms_ago / 1000).toFixed(1)} s ago`;
      o.out(`peer         ${peer.address ?? ''}  last advert ${ago}${peer.role ? `  role ${peer.role}` : ''}${peer.priority !== null && peer.priority !== undefined ? `  priority ${peer.priority}` : ''}${peer.alive === false ? '  (dead)' : ''}`);
    }
    o.out(`failovers    ${f.failovers ?? 0} (became master), ${f.transitions ?? 0} role changes`);
  } else {
    o.out('role         standalone (no ha section)');
  }
  if (data.bgp) printBgp(data.bgp, o);
  o.out(`uptime       ${data.uptime_s} s (since ${data.started_at})`);
  if (data.config_file) o.out(`config       ${data.config_file}`);
  if (data.reloads) o.out(`reloads      ${data.reloads.applied} applied, ${data.reloads.refused} refused`);
  o.out(`changes      ${data.changes_enabled ? 'enabled (token)' : 'disabled (no admin.token_file)'}`);
  // Where discovered backends come from, and what each source last said (src/discovery).
  for (const d of data.discovery ?? []) {
    const when = (ms: number | null) => (ms === null ? 'never' : `${new Date(ms).toISOString()} (${((Date.now() - ms) / 1000).toFixed(0)} s ago)`);
    o.out(`discovery    ${d.service}: ${d.source} ${d.query}, ${d.backends} backend${d.backends === 1 ? '' : 's'}`);
    o.out(`               last answer ${when(d.last_answer_at)}${d.last_answer ? `: ${d.last_answer}` : ''}`);
    if (d.last_error) o.out(`               last error ${when(d.last_error_at)}: ${d.last_error}`);
    if (d.holding_since !== null) o.out(`               keeping the last set since ${new Date(d.holding_since).toISOString()} (hold)`);
    if (d.errors) o.out(`               ${d.errors} failed queries since start`);
    for (const n of d.notes ?? []) o.out(`               note: ${n}`);
  }
}

/** The bgp lines of `fulcrum status`: the speaker, each session, each VIP with why it is (not) announced. */
function printBgp(b: any, o: Output): void {
  const info = b.speaker_info ?? {};
  const pid = info.pid ? `  pid ${info.pid}` : '';
  o.out(`bgp          speaker ${b.speaker}${pid}${b.draining ? `  draining (${b.draining})` : ''}  announced ${b.counts?.announce ?? 0}, withdrawn ${b.counts?.withdraw ?? 0}, failed ${b.counts?.failed ?? 0}`);
  if (b.sessions === null) o.out('  sessions   not known (speaker: command)');
  for (const s of b.sessions ?? []) o.out(`  session    ${s.neighbor}${s.asn ? ` AS${s.asn}` : ''}  ${s.state}`);
  for (const v of b.vips ?? []) o.out(`  vip        ${v.vip}  ${v.announced ? 'announced' : 'withdrawn'}  ${v.reason}`);
  if (b.drain) o.out(`  drain      ${drainPhase(b.drain)}`);
}

/** A drain's phase in words (src/bgp BgpDrainStatus): `fulcrum status` and `ctl node drain`. */
function drainPhase(d: any): string {
  const held = d.quiesced?.length ? `new SYNs held back on ${d.quiesced.join(', ')}` : d.unquiesced ? `no quiesce (${d.unquiesced})` : 'accepting';
  const phase = d.phase === 'waiting' ? `waiting for ${d.connections} connection${d.connections === 1 ? '' : 's'} to end` : d.phase;
  return `${phase}; ${held} (${d.cause}, since ${d.since})`;
}

/** Runs `fulcrum ctl ARGS` (or `fulcrum status` with argv ['status', …]); returns the exit code. */
export async function runCtl(argv: string[], o: Output = defaultOutput): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options: CTL_OPTIONS });
  } catch (err) {
    o.err(`fulcrum ctl: ${(err as Error).message}\n${CTL_USAGE}`);
    return 2;
  }
  return runCtlParsed(parsed.values, parsed.positionals, o);
}

/** The same, with arguments already parsed against CTL_OPTIONS (src/cli.ts does that). */
export async function runCtlParsed(values: CtlValues, positionals: string[], o: Output = defaultOutput): Promise<number> {
  const [command, ...args] = positionals;
  if (values.help || !command) {
    (values.help ? o.out : o.err)(CTL_USAGE);
    return values.help ? 0 : 2;
  }
  const need = (n: number, what: string): void => {
    if (args.length !== n) throw new CtlError(`${command}: expected ${what}, got ${args.length ? args.map((a) => JSON.stringify(a)).join(' ') : 'nothing'}\n${CTL_USAGE}`);
  };
  const int = (name: string, v: string): number => {
    if (!/^\d+$/.test(v)) throw new CtlError(`${name}: must be a non-negative integer, got ${JSON.stringify(v)}`);
    return Number(v);
  };
  try {
    const conn = connection(values);
    let result: { status: number; data: any };
    switch (command) {
      case 'list':
        need(0, 'no arguments');
        result = await call(conn, 'GET', '/api/services');
        if (values.json) o.out(JSON.stringify(result.data, null, 2));
        else printList(result.data, o);
        return 0;
      case 'status':
        need(0, 'no arguments');
        result = await call(conn, 'GET', '/api/status');
        if (values.json) o.out(JSON.stringify(result.data, null, 2));
        else printStatus(result.data, o);
        return 0;
      case 'state':
        need(3, 'SVC ADDR ready|drain|maint');
        result = await call(conn, 'POST', `/api/services/${seg(args[0])}/backends/${seg(args[1])}/state`, { state: args[2] });
        o.out(values.json ? JSON.stringify(result.data, null, 2) : `${args[0]} ${args[1]}: ${args[2]} (state ${result.data.backend?.state})`);
        return 0;
      case 'weight':
        need(3, 'SVC ADDR N');
        result = await call(conn, 'POST', `/api/services/${seg(args[0])}/backends/${seg(args[1])}/weight`, { weight: int('weight', args[2]) });
        o.out(values.json ? JSON.stringify(result.data, null, 2) : `${args[0]} ${args[1]}: weight ${result.data.backend?.weight}`);
        return 0;
      case 'add': {
        need(2, 'SVC ADDR');
        const body: Record<string, unknown> = { address: args[1] };
        if (values.weight !== undefined) body.weight = int('--weight', values.weight);
        if (values['max-connections'] !== undefined) body.max_connections = int('--max-connections', values['max-connections']);
        if (values.backup) body.backup = true;
        result = await call(conn, 'POST', `/api/services/${seg(args[0])}/backends`, body);
        o.out(values.json ? JSON.stringify(result.data, null, 2) : `${args[0]} ${args[1]}: added (state ${result.data.backend?.state})`);
        return 0;
      }
      case 'remove':
        need(2, 'SVC ADDR');
        result = await call(conn, 'DELETE', `/api/services/${seg(args[0])}/backends/${seg(args[1])}${values.force ? '?force=1' : ''}`);
        o.out(values.json ? JSON.stringify(result.data, null, 2) : result.data.removed
          ? `${args[0]} ${args[1]}: removed${result.data.closed_sessions ? ` (${result.data.closed_sessions} sessions closed)` : ''}`
          : `${args[0]} ${args[1]}: draining, ${result.data.active} sessions open; removed when they close`);
        return 0;
      case 'node': {
        need(1, 'drain|ready');
        if (args[0] !== 'drain' && args[0] !== 'ready') throw new CtlError(`node: expected drain or ready, got ${JSON.stringify(args[0])}\n${CTL_USAGE}`);
        result = await call(conn, 'POST', '/api/node/state', { state: args[0] });
        if (values.json) o.out(JSON.stringify(result.data, null, 2));
        else {
          o.out(args[0] === 'drain' ? 'node drained: new connections held back until its connections ended, then every BGP VIP withdrawn' : 'node ready: BGP VIPs announced when they can be served');
          for (const v of result.data.bgp?.vips ?? []) o.out(`  vip        ${v.vip}  ${v.announced ? 'announced' : 'withdrawn'}  ${v.reason}`);
          if (result.data.bgp?.drain) o.out(`  drain      ${drainPhase(result.data.bgp.drain)}`);
        }
        return 0;
      }
      case 'reload':
        need(0, 'no arguments');
        result = await call(conn, 'POST', '/api/reload');
        if (values.json) o.out(JSON.stringify(result.data, null, 2));
        else {
          o.out(`reloaded: ${result.data.changes.length} change${result.data.changes.length === 1 ? '' : 's'}`);
          for (const c of result.data.changes) o.out(`  ${c}`);
          for (const r of result.data.restart_required) o.out(`  needs a restart: ${r}`);
          for (const k of result.data.kept ?? []) o.out(`  kept: ${k}`);
        }
        return 0;
      case 'upgrade':
        need(0, 'no arguments');
        // The server answers once the new process serves or failed (up to its READY_TIMEOUT_MS).
        result = await call(conn, 'POST', '/api/upgrade', undefined, READY_TIMEOUT_MS + 10_000);
        o.out(values.json ? JSON.stringify(result.data, null, 2) : `upgraded: pid ${result.data.new_pid} serves; pid ${result.data.old_pid} drains its connections and exits`);
        return 0;
      default:
        o.err(`fulcrum ctl: unknown command ${JSON.stringify(command)}\n${CTL_USAGE}`);
        return 2;
    }
  } catch (err) {
    o.err(`fulcrum ctl: ${(err as Error).message}`);
    return 1;
  }
}
