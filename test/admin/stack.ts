/**
 * A whole running fulcrum for the operations tests: named backends on one loopback address, a
 * config file with an admin section and a token in a temp dir, startFulcrum + startOperationsFor
 * (as `fulcrum run` does), and small HTTP helpers for the admin API. close() stops everything.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { loadConfig } from '../../src/config/load.ts';
import { startFulcrum, type FulcrumHandle } from '../../src/main.ts';
import { startOperationsFor, type Operations, type OperationsFailover } from '../../src/admin/index.ts';
import { createLogger } from '../../src/observability/log.ts';
import { freePort, startNamedServer, type TestServer } from '../helpers/net.ts';

export const TOKEN = 'test-token-0123456789abcdef';

/** What fulcrum must report as its version: package.json's, read here rather than through src/version.ts. */
export const PACKAGE_VERSION: string = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version;
/** The commit the build recorded (build/version.ts writes build/out/version.json), or null. */
export const BUILT_COMMIT: string | null = JSON.parse(readFileSync(new URL('../../build/out/version.json', import.meta.url), 'utf8')).commit;

export interface Stack {
  dir: string;
  tokenFile: string;
  adminPort: number;
  configFile: string;
  handle: FulcrumHandle;
  ops: Operations;
  admin: string;
  host: string;
  servicePort: number;
  backends: TestServer[];
  /** Every JSON line the control plane logged. */
  logs: Record<string, any>[];
  writeConfig(yaml: string): Promise<void>;
  close(): Promise<void>;
}

export interface StackOptions {
  /** Loopback address for everything of this test file (127.5.x.y). */
  host: string;
  backends?: number;
  /** Extra YAML under the service (indented 4 spaces), e.g. a health section. */
  serviceExtra?: string;
  /** The admin section's body (indented 4 spaces); default: listen + token_file. */
  admin?: (listen: string, tokenFile: string) => string;
  workers?: number;
  /** Reload on SIGHUP, as `fulcrum run` does. */
  signals?: boolean;
  /** Stands in for src/failover (whose real tests need network namespaces). */
  failover?: OperationsFailover;
}

/** The config text for `names` backends on `host`. */
export function configText(o: {
  host: string; servicePort: number; adminPort: number; tokenFile: string; backends: string[]; serviceExtra?: string;
  admin?: (listen: string, tokenFile: string) => string; workers?: number; service?: string; extraServices?: string;
}): string {
  const listen = `${o.host}:${o.adminPort}`;
  const admin = o.admin ? o.admin(listen, o.tokenFile) : `    listen: ${listen}\n    token_file: ${o.tokenFile}\n`;
  return `workers: ${o.workers ?? 2}
shutdown_grace: 1s
logging: { level: info, connections: false }
admin:
${admin}services:
  - name: ${o.service ?? 'web'}
    listen: ${o.host}:${o.servicePort}
    balance: roundrobin
${o.serviceExtra ?? ''}    backends:
${o.backends.map((b) => `      - { address: ${b} }`).join('\n')}
${o.extraServices ?? ''}`;
}

export async function startStack(o: StackOptions): Promise<Stack> {
  const dir = await mkdtemp(join(tmpdir(), 'fulcrum-admin-'));
  const tokenFile = join(dir, 'admin.token');
  await writeFile(tokenFile, TOKEN + '\n', { mode: 0o600 }); // a secret file group or others can read is refused
  const backends: TestServer[] = [];
  for (let i = 0; i < (o.backends ?? 2); i++) backends.push(await startNamedServer(`b${i}`, o.host));
  const servicePort = await freePort(o.host);
  const adminPort = await freePort(o.host);
  const configFile = join(dir, 'fulcrum.yaml');
  await writeFile(configFile, configText({ ...o, servicePort, adminPort, tokenFile, backends: backends.map((b) => b.address) }));
  const logs: Record<string, any>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line));
      cb();
    },
  });
  const logger = createLogger('info', sink);
  // Operations started here rather than by startFulcrum, to pass a stand-in failover and signals.
  const handle = await startFulcrum(loadConfig(configFile), { logger, configFile, operations: false });
  const ops = await startOperationsFor(handle, { signals: o.signals, failover: o.failover });
  return {
    dir, tokenFile, adminPort, configFile, handle, ops, admin: ops.admin!.url, host: o.host, servicePort, backends, logs,
    writeConfig: (yaml) => writeFile(configFile, yaml),
    async close() {
      await handle.stop('test over');
      await ops.close();
      for (const b of backends) await b.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export interface ApiReply {
  status: number;
  body: any;
}

/** One admin API call; `token` null sends no Authorization header. */
export async function api(base: string, method: string, path: string, body?: unknown, token: string | null = TOKEN): Promise<ApiReply> {
  const headers: Record<string, string> = {};
  if (token !== null) headers.authorization = `Bearer ${token}`;
  let payload: string | undefined;
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
    payload = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const res = await fetch(base + path, { method, headers, body: payload, signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  let parsed: any = text;
  try {
    parsed = JSON.parse(text);
  } catch { /* text (metrics, html) */ }
  return { status: res.status, body: parsed };
}

/** The backend of `service` at `address` as GET /api/services shows it. */
export async function backendView(base: string, service: string, address: string): Promise<any> {
  const r = await api(base, 'GET', '/api/services', undefined, null);
  return r.body.services.find((s: any) => s.name === service)?.backends.find((b: any) => b.address === address);
}
