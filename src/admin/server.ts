/**
 * The admin server: a small node:http server on the control plane (loopback by default) with a
 * JSON API, the Prometheus endpoint and the status page. It is what HAProxy's runtime API and
 * stats page are to HAProxy operators.
 *
 * Routes (every error is `{ "error": { "code", "message" } }`, codes in ./errors.ts):
 *
 * | method | path                                          | what                                   |
 * |--------|-----------------------------------------------|----------------------------------------|
 * | GET    | /                                             | the status page (HTML)                 |
 * | GET    | /metrics                                      | Prometheus text                        |
 * | GET    | /api/services                                 | services, backends, states, counters   |
 * | GET    | /api/status                                   | uptime, config file, reloads, HA role  |
 * | POST   | /api/services/:svc/backends/:addr/state       | body {state: ready|drain|maint}        |
 * | POST   | /api/services/:svc/backends/:addr/weight      | body {weight: 0–256}                   |
 * | POST   | /api/services/:svc/backends                   | body: a backend as in the config: add  |
 * | DELETE | /api/services/:svc/backends/:addr[?force=1]   | drain then remove; force: at once      |
 * | POST   | /api/reload                                   | re-read the config file and apply it   |
 * | POST   | /api/node/state                               | body {state: drain|ready}: this node's |
 * |        |                                               | BGP VIPs withdrawn once its connections|
 * |        |                                               | ended (drain: quiesced first) or back  |
 * | POST   | /api/upgrade                                  | start the new fulcrum, hand over, drain |
 *
 * Changes (POST, DELETE) always need `Authorization: Bearer <token>` with the token from
 * `admin.token_file`; reads need it too when `admin.auth_reads` is true. Without a token file,
 * changes are refused (403): an admin port must never change the balancer unauthenticated.
 *
 * Before any route: the `Host` header must name this server (421 otherwise: a page on another
 * site whose name was re-bound to this address must not read the API), and a request refused
 * before its body was read closes its connection instead of reading the body (the main thread
 * also sends the heartbeats). Who may hold a connection, and how long: ./connections.ts.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { isIP, type AddressInfo } from 'node:net';
import { ConfigInvalidError, ConfigUnreadableError, FulcrumError, ListenError } from '../errors.ts';
import { BACKEND_ADMIN_STATES, backendSchema, formatHostPort, parseHostPort, type AdminConfig, type BackendConfig, type Config } from '../config/schema.ts';
import { formatPath } from '../config/load.ts';
import { MAX_WEIGHT } from '../shm/layout.ts';
import type { Logger } from '../observability/log.ts';
import type { Metrics, RoleObservation } from '../observability/prom.ts';
import type { ServiceStats, Stats } from '../observability/stats.ts';
import { readSecretFileSync } from '../config/secrets.ts';
import { buildInfo } from '../version.ts';
import { ADMIN_LIMITS, ConnectionGuard, type ConnectionCounts } from './connections.ts';
import { ADMIN_ERRORS, AdminHttpError, badRequest, notFound } from './errors.ts';

/** Request bodies larger than this are refused with 413: the API's bodies are a few hundred bytes. */
export const MAX_BODY_BYTES = 64 * 1024;

export type AdminState = (typeof BACKEND_ADMIN_STATES)[number];

/**
 * One backend as the Balancer describes it (BackendDescription in src/balancer/balancer.ts); the
 * API passes every other field it has (admin_state, health…) through as it is.
 */
export interface DescribedBackend {
  address: string;
  index: number;
  /** Removed and still draining its open sessions. */
  removed?: boolean;
}
export interface DescribedService {
  name: string;
  index: number;
  backends: readonly DescribedBackend[];
}

/** What the admin server needs from the Balancer (src/balancer/balancer.ts). */
export interface AdminBalancer {
  describe(): readonly DescribedService[];
  setAdminState(service: string, address: string, state: AdminState, cause: string): unknown;
  setWeight(service: string, address: string, weight: number): unknown;
  addBackend(service: string, backend: BackendConfig): unknown;
  removeBackend(service: string, address: string, options: { force: boolean }): unknown;
}

/** One recent probe result, for the status page's health strip. */
export interface ProbeRecord {
  /** Epoch milliseconds. */
  at: number;
  ok: boolean;
  latency_ms: number;
  /** Why it failed (refused, timeout, wrong role…), or what it saw when it passed. */
  reason?: string;
}

export interface ReloadResult {
  /** What changed, one line each ("services[redis]: backend 127.0.0.1:7004 added"). */
  changes: string[];
  /** Settings that changed in the file but need a restart to take effect. */
  restart_required: string[];
  /** Runtime changes the reload left in force (an admin state set through the API). */
  kept?: string[];
}

export interface AdminServerOptions {
  admin: AdminConfig;
  balancer: AdminBalancer;
  stats: Stats;
  metrics: Metrics;
  logger: Logger;
  /** The config in force (for listen addresses and algorithms in /api/services). */
  config?: () => Config;
  /** Extra fields for /api/status: config file, reloads, failover, workers… */
  status?: () => Record<string, unknown>;
  /** Re-reads the config file and applies it; throws ConfigInvalidError/ConfigUnreadableError to refuse. */
  reload?: () => Promise<ReloadResult>;
  /** `fulcrum upgrade`: resolves once the new process serves; rejects with FULCRUM_ERR_UPGRADE saying why not. */
  upgrade?: () => Promise<{ old_pid: number; new_pid: number }>;
  /** Recent probe results of a backend, oldest first. */
  healthHistory?: (service: string, address: string) => readonly ProbeRecord[];
  /** The role each backend with a database check last reported, and when. */
  roles?: () => readonly RoleObservation[];
  /**
   * Drains this node (new SYNs held back until its connections ended, then every BGP VIP
   * withdrawn and kept withdrawn; `bgp.drain` later it serves what still arrives) or lets it
   * announce again; resolves once the speaker did it, with the bgp status.
   * Absent without a `bgp` section.
   */
  nodeDrain?: (drain: boolean) => Promise<unknown>;
  /** Why each backend the probes hold down went down, and when (src/health's monitor). */
  downCauses?: () => readonly { service: string; address: string; cause: string; at: number }[];
}

const sha256 = (s: string): Buffer => createHash('sha256').update(s).digest();

/** Reads the admin token from admin.token_file (config/secrets.ts's rule). */
export const readToken = (file: string): string => readSecretFileSync('admin.token_file', file).toString('utf8');

/** A backend's last reported role as /api/services and /api/status show it (`at`: epoch ms). */
const roleView = (r: RoleObservation) => ({ reported: r.reported, at: r.at, eligible: r.eligible, ...(r.lag_ms !== undefined ? { lag_ms: r.lag_ms } : {}) });

let statusPageCache: string | undefined;
function statusPage(): string {
  statusPageCache ??= readFileSync(new URL('./status.html', import.meta.url), 'utf8');
  return statusPageCache;
}

interface Route {
  method: string;
  pattern: RegExp;
  change: boolean;
  handle: (ctx: RequestContext, params: string[]) => Promise<Reply> | Reply;
}

interface RequestContext {
  req: IncomingMessage;
  url: URL;
  body: () => Promise<Record<string, unknown>>;
}

interface Reply {
  status: number;
  body: unknown;
  type?: string;
}

const json = (status: number, body: unknown): Reply => ({ status, body });

/** Connections the admin server holds at once (see ./connections.ts for who gets one). */
export const ADMIN_MAX_CONNECTIONS = ADMIN_LIMITS.max;

/** Wildcard listen addresses: the server answers on every local address. */
const WILDCARDS = new Set(['0.0.0.0', '::']);
const isLoopback = (host: string): boolean => host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));

/**
 * What an admin listen address beyond loopback means, or undefined on loopback: `note` for
 * `fulcrum check`, `warning` (reads served without a token) for the log at start and reload and
 * for `fulcrum check` alike.
 */
export function adminExposure(listen: { host: string; port: number }, authReads: boolean): { note: string; warning?: string } | undefined {
  if (isLoopback(listen.host)) return undefined;
  return {
    note: `admin API listens on ${formatHostPort(listen)}, beyond loopback${authReads ? ' (reads and changes need the token)' : ''}`,
    warning: authReads ? undefined
      : 'admin API listens beyond loopback and serves reads (services, backends, metrics) without a token: set admin.auth_reads: true with admin.token_file, or listen on 127.0.0.1',
  };
}

/**
 * The host names a request's `Host` header may carry (lower case, without port): the listen
 * address, the loopback aliases, and `admin.allowed_hosts`. A wildcard listen address admits any
 * IP literal too (which local address a client used is not known here); a DNS rebinding attack
 * always arrives with a name, never an IP literal, so literals are safe to admit.
 */
function allowedHosts(admin: AdminConfig): { names: Set<string>; anyLiteral: boolean } {
  const names = new Set(['localhost', '127.0.0.1', '::1', admin.listen.host.toLowerCase(), ...admin.allowed_hosts.map((h) => h.toLowerCase())]);
  return { names, anyLiteral: WILDCARDS.has(admin.listen.host) };
}

export class AdminServer {
  readonly #options: AdminServerOptions;
  readonly #log: Logger;
  readonly #server: Server;
  readonly #routes: Route[];
  /** SHA-256 of the token (compared in constant time), or undefined when changes are disabled. */
  #tokenHash: Buffer | undefined;
  #authReads: boolean;
  #hosts: { names: Set<string>; anyLiteral: boolean };
  readonly #guard: ConnectionGuard;
  readonly #startedAt = Date.now();

  constructor(options: AdminServerOptions) {
    this.#options = options;
    this.#log = options.logger.child({ component: 'admin' });
    this.#authReads = options.admin.auth_reads;
    this.#hosts = allowedHosts(options.admin);
    this.#tokenHash = options.admin.token_file ? sha256(readToken(options.admin.token_file)) : undefined;
    this.#routes = this.#makeRoutes();
    // Node's own timeouts stay as a second net; ConnectionGuard's per-connection timers are the
    // bound that holds (Node checks these only every connectionsCheckingInterval).
    this.#server = createServer({
      requestTimeout: ADMIN_LIMITS.headersMs + ADMIN_LIMITS.bodyMs,
      headersTimeout: ADMIN_LIMITS.headersMs,
      connectionsCheckingInterval: 1_000,
    }, (req, res) => {
      void this.#dispatch(req, res);
    });
    // Scrapers and the status page poll with keep-alive; close() must not wait for them.
    this.#server.keepAliveTimeout = 5_000;
    // An operator's tool, not a public service: bounded connections, per client, with tight
    // timeouts, and room made for a new connection by closing the oldest idle one.
    this.#guard = new ConnectionGuard(this.#server, ADMIN_LIMITS, this.#log);
  }

  /** Connections refused, evicted and timed out so far (status). */
  get connectionCounts(): ConnectionCounts {
    return { ...this.#guard.counts };
  }

  /**
   * Binds admin.listen, or listens on `adopt`: the listening socket the previous process handed
   * over (`fulcrum upgrade`), when it is bound where admin.listen says (else it is closed).
   */
  async listen(adopt?: object): Promise<void> {
    const { host, port } = this.#options.admin.listen;
    const handed = adopt !== undefined && boundAt(adopt, host, port) ? adopt : undefined;
    if (adopt !== undefined && handed === undefined) (adopt as { close(): void }).close();
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => reject(new ListenError('admin', formatHostPort({ host, port }), err));
      this.#server.once('error', onError);
      const listening = (): void => {
        this.#server.off('error', onError);
        resolve();
      };
      if (handed !== undefined) this.#server.listen(handed, listening);
      else this.#server.listen(port, host, listening);
    });
    this.#log.info({ url: this.url, changes: this.#tokenHash ? 'token' : 'disabled (no admin.token_file)' }, 'admin server listening');
    this.#warnIfOpen(this.#options.admin.listen, this.#authReads);
  }

  /** At start and when a reload opens reads: beyond loopback, reads without a token are everyone's. */
  #warnIfOpen(listen: { host: string; port: number }, authReads: boolean): void {
    const warning = adminExposure(listen, authReads)?.warning;
    if (warning) this.#log.warn({ listen: formatHostPort(listen) }, warning);
  }

  /** The listening socket's libuv handle (what `fulcrum upgrade` hands to the next process), or undefined when not listening. */
  handle(): object | undefined {
    return (this.#server as unknown as { _handle?: object | null })._handle ?? undefined;
  }

  /** The address actually bound (port 0 resolved). */
  address(): { host: string; port: number } {
    const a = this.#server.address() as AddressInfo;
    return { host: a.address, port: a.port };
  }

  get url(): string {
    return `http://${formatHostPort(this.address())}`;
  }

  /**
   * Reads what a new `admin` section needs (the token file) and returns the function that puts
   * it in force: a reload checks first (an unreadable token file refuses the reload before
   * anything is applied), then commits after the rest was applied.
   */
  prepareAdminConfig(admin: AdminConfig): () => void {
    const hash = admin.token_file ? sha256(readToken(admin.token_file)) : undefined;
    return () => {
      if (this.#authReads && !admin.auth_reads) this.#warnIfOpen(admin.listen, false);
      this.#tokenHash = hash;
      this.#authReads = admin.auth_reads;
      this.#hosts = allowedHosts(admin);
    };
  }

  /**
   * Stops listening and closes every connection: at once, or (`graceMs`, when a reload moved the
   * admin server) after the requests in flight had up to that long — among them, the POST
   * /api/reload that moved it, whose reply still goes out on this server.
   */
  async close(graceMs = 0): Promise<void> {
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      if (graceMs <= 0) {
        this.#server.closeAllConnections();
        return;
      }
      this.#server.closeIdleConnections();
      setTimeout(() => this.#server.closeAllConnections(), graceMs).unref();
    });
  }

  // ── dispatch ──────────────────────────────────────────────────────────────

  async #dispatch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let reply: Reply;
    try {
      this.#checkHost(req);
      const url = new URL(req.url ?? '/', 'http://admin');
      reply = await this.#route(req, url);
    } catch (err) {
      reply = this.#errorReply(err);
    }
    const headers: Record<string, string> = { 'cache-control': 'no-store' };
    let payload: string;
    if (reply.type) {
      headers['content-type'] = reply.type;
      payload = String(reply.body);
    } else {
      headers['content-type'] = 'application/json; charset=utf-8';
      payload = JSON.stringify(reply.body) + '\n';
    }
    if (reply.status === 401) headers['www-authenticate'] = 'Bearer realm="fulcrum"';
    // Answered before its body was read (refused, or a route that reads none): the connection
    // closes after the reply instead of Node reading the rest of the body on this thread to
    // reach a next request.
    if (!req.complete) headers.connection = 'close';
    res.writeHead(reply.status, headers);
    res.end(payload);
  }

  async #route(req: IncomingMessage, url: URL): Promise<Reply> {
    const method = req.method ?? 'GET';
    let pathMatched = false;
    for (const route of this.#routes) {
      const m = route.pattern.exec(url.pathname);
      if (!m) continue;
      pathMatched = true;
      const sameMethod = route.method === method || (route.method === 'GET' && method === 'HEAD');
      if (!sameMethod) continue;
      this.#authorize(req, route.change);
      let params: string[];
      try {
        params = m.slice(1).map((p) => decodeURIComponent(p));
      } catch {
        throw badRequest('path', 'has a malformed %-escape', url.pathname);
      }
      const ctx: RequestContext = { req, url, body: () => readJsonBody(req) };
      return await route.handle(ctx, params);
    }
    if (pathMatched) throw new AdminHttpError(405, ADMIN_ERRORS.METHOD_NOT_ALLOWED, `${method} is not allowed on ${url.pathname}`);
    throw notFound(`no route ${method} ${url.pathname}`);
  }

  /** 421 unless the Host header names this server (see allowedHosts); HTTP/1.0 without one passes. */
  #checkHost(req: IncomingMessage): void {
    const header = req.headers.host;
    if (header === undefined) return;
    const hp = parseHostPort(header, true);
    const host = hp?.host.toLowerCase();
    if (host !== undefined && (this.#hosts.names.has(host) || (this.#hosts.anyLiteral && isIP(host) !== 0))) return;
    throw new AdminHttpError(421, ADMIN_ERRORS.HOST_NOT_ALLOWED,
      `host: must name this server (its listen address, localhost, or one of admin.allowed_hosts), got ${JSON.stringify(header.slice(0, 80))}`);
  }

  #authorize(req: IncomingMessage, change: boolean): void {
    if (!change && !this.#authReads) return;
    if (!this.#tokenHash) {
      throw new AdminHttpError(403, ADMIN_ERRORS.CHANGES_DISABLED,
        `${change ? 'changes are' : 'reads are'} disabled: set admin.token_file to a file holding the admin token`);
    }
    const header = req.headers.authorization;
    const m = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    if (!m) throw new AdminHttpError(401, ADMIN_ERRORS.UNAUTHORIZED, 'authorization: expected "Bearer <token>" with the token from admin.token_file');
    // Hashes have equal length, so timingSafeEqual compares without leaking the token's length.
    if (!timingSafeEqual(sha256(m[1]), this.#tokenHash)) {
      throw new AdminHttpError(401, ADMIN_ERRORS.UNAUTHORIZED, 'authorization: the token does not match admin.token_file');
    }
  }

  #errorReply(err: unknown): Reply {
    if (err instanceof AdminHttpError) {
      if (err.status >= 500) this.#log.error({ err }, 'admin request failed');
      return json(err.status, { error: { code: err.code, message: err.message, ...err.details } });
    }
    if (err instanceof ConfigInvalidError) {
      return json(422, { error: { code: err.code, message: err.message, problems: err.problems } });
    }
    if (err instanceof ConfigUnreadableError) return json(422, { error: { code: err.code, message: err.message } });
    if (err instanceof FulcrumError) {
      // A Balancer refusal (table full, bad state) is the caller's conflict, not our bug.
      return json(409, { error: { code: err.code, message: err.message } });
    }
    this.#log.error({ err }, 'admin request failed');
    return json(500, { error: { code: ADMIN_ERRORS.INTERNAL, message: (err as Error)?.message ?? String(err) } });
  }

  // ── routes ────────────────────────────────────────────────────────────────

  #makeRoutes(): Route[] {
    const seg = '([^/]+)';
    const backend = `^/api/services/${seg}/backends/${seg}`;
    return [
      { method: 'GET', pattern: /^\/$/, change: false, handle: () => ({ status: 200, body: statusPage(), type: 'text/html; charset=utf-8' }) },
      { method: 'GET', pattern: /^\/metrics$/, change: false, handle: async () => ({ status: 200, body: await this.#options.metrics.text(), type: this.#options.metrics.contentType }) },
      { method: 'GET', pattern: /^\/api\/services$/, change: false, handle: () => json(200, { at: Date.now(), services: this.#services() }) },
      { method: 'GET', pattern: /^\/api\/status$/, change: false, handle: () => json(200, this.#status()) },
      { method: 'POST', pattern: new RegExp(`${backend}/state$`), change: true, handle: (ctx, p) => this.#setState(ctx, p[0], p[1]) },
      { method: 'POST', pattern: new RegExp(`${backend}/weight$`), change: true, handle: (ctx, p) => this.#setWeight(ctx, p[0], p[1]) },
      { method: 'POST', pattern: new RegExp(`^/api/services/${seg}/backends$`), change: true, handle: (ctx, p) => this.#addBackend(ctx, p[0]) },
      { method: 'DELETE', pattern: new RegExp(`${backend}$`), change: true, handle: (ctx, p) => this.#removeBackend(ctx, p[0], p[1]) },
      { method: 'POST', pattern: /^\/api\/reload$/, change: true, handle: () => this.#reload() },
      { method: 'POST', pattern: /^\/api\/node\/state$/, change: true, handle: (ctx) => this.#setNodeState(ctx) },
      { method: 'POST', pattern: /^\/api\/upgrade$/, change: true, handle: (ctx) => this.#upgrade(ctx) },
    ];
  }

  /** Like #find, and refuses a backend already removed (draining its last sessions) with 409. */
  #findLive(service: string, address: string): DescribedBackend {
    const backend = this.#find(service, address).backend!;
    if (backend.removed === true) {
      throw new AdminHttpError(409, ADMIN_ERRORS.CONFLICT, `service ${JSON.stringify(service)}: backend ${JSON.stringify(backend.address)} is being removed (draining its last sessions)`);
    }
    return backend;
  }

  /** The service and backend of a route, or 404 naming which one is unknown. */
  #find(service: string, address?: string): { service: DescribedService; backend?: DescribedBackend } {
    const s = this.#options.balancer.describe().find((x) => x.name === service);
    if (!s) throw notFound(`service ${JSON.stringify(service)} does not exist`);
    if (address === undefined) return { service: s };
    const key = normalizeAddress(address);
    const b = s.backends.find((x) => x.address === key);
    if (!b) throw notFound(`service ${JSON.stringify(service)} has no backend ${JSON.stringify(address)}`);
    return { service: s, backend: b };
  }

  #services(): unknown[] {
    const described = this.#options.balancer.describe();
    const stats = new Map<string, ServiceStats>(this.#options.stats.snapshot(described).map((s) => [s.name, s]));
    const config = this.#options.config?.();
    const roles = new Map((this.#options.roles?.() ?? []).map((r) => [`${r.service}\u0000${r.address}`, r]));
    const downCauses = new Map((this.#options.downCauses?.() ?? []).map((d) => [`${d.service}\u0000${d.address}`, d]));
    return described.map((s) => {
      const st = stats.get(s.name)!;
      const sc = config?.services.find((x) => x.name === s.name);
      const { backends: _b, index: _i, name: _n, ...extra } = s;
      return {
        name: s.name,
        ...(sc ? { listen: formatHostPort(sc.listen), balance: sc.balance } : {}),
        // The check and the role it routes to: the status page's card names them.
        ...(sc?.health ? { check: { type: sc.health.type, role: sc.health.role } } : {}),
        ...extra,
        active: st.active,
        queued: st.queued,
        max_connections: st.max_connections,
        queue_max: st.queue_max,
        counters: st.counters,
        backends: s.backends.map((b, j) => {
          const bs = st.backends[j];
          const history = this.#options.healthHistory?.(s.name, b.address);
          const role = roles.get(`${s.name}\u0000${b.address}`);
          const down = downCauses.get(`${s.name}\u0000${b.address}`);
          return {
            ...b,
            address: b.address,
            state: bs.state,
            weight: bs.weight,
            effective_weight: bs.effective_weight,
            backup: bs.backup,
            active: bs.active,
            max_connections: bs.max_connections,
            counters: bs.counters,
            removing: b.removed === true,
            ...(history ? { health_history: history } : {}),
            // "replica, not eligible" reads apart from a dead server: the role it reported, and when.
            ...(role ? { role: roleView(role) } : {}),
            ...(down ? { down_reason: { cause: down.cause, at: new Date(down.at).toISOString() } } : {}),
          };
        }),
      };
    });
  }

  #status(): Record<string, unknown> {
    const { version, commit } = buildInfo();
    return {
      version,
      commit,
      pid: process.pid,
      node: process.version,
      started_at: new Date(this.#startedAt).toISOString(),
      uptime_s: Math.round((Date.now() - this.#startedAt) / 1000),
      changes_enabled: this.#tokenHash !== undefined,
      ...(this.#options.roles ? { roles: this.#options.roles().map((r) => ({ service: r.service, backend: r.address, ...roleView(r) })) } : {}),
      admin_connections: this.connectionCounts,
      ...this.#options.status?.(),
    };
  }

  async #setState(ctx: RequestContext, service: string, address: string): Promise<Reply> {
    const backend = this.#findLive(service, address);
    const body = await ctx.body();
    const state = body.state;
    if (typeof state !== 'string' || !(BACKEND_ADMIN_STATES as readonly string[]).includes(state)) {
      throw badRequest('state', `must be one of ${BACKEND_ADMIN_STATES.join(' | ')}`, state);
    }
    await this.#options.balancer.setAdminState(service, backend.address, state as AdminState, 'admin API');
    this.#log.info({ service, backend: backend.address, state }, 'admin: backend state set');
    return json(200, { service, backend: this.#backendView(service, backend.address) });
  }

  /** An operator's drain of the whole node: the BGP speaker withdraws every VIP (src/bgp/index.ts). */
  async #setNodeState(ctx: RequestContext): Promise<Reply> {
    const body = await ctx.body();
    const state = body.state;
    if (state !== 'drain' && state !== 'ready') throw badRequest('state', 'must be one of drain | ready', state);
    if (!this.#options.nodeDrain) {
      throw new AdminHttpError(501, ADMIN_ERRORS.NOT_AVAILABLE, 'state: draining a node withdraws its BGP routes, and this node has no bgp section');
    }
    const bgp = await this.#options.nodeDrain(state === 'drain');
    this.#log.info({ state }, state === 'drain' ? 'admin: node drained (BGP VIPs withdrawn)' : 'admin: node ready (BGP VIPs announced when they can be served)');
    return json(200, { state, bgp });
  }

  async #setWeight(ctx: RequestContext, service: string, address: string): Promise<Reply> {
    const backend = this.#findLive(service, address);
    const body = await ctx.body();
    const weight = body.weight;
    if (!Number.isInteger(weight) || (weight as number) < 0 || (weight as number) > MAX_WEIGHT) {
      throw badRequest('weight', `must be an integer 0–${MAX_WEIGHT}`, weight);
    }
    await this.#options.balancer.setWeight(service, backend.address, weight as number);
    this.#log.info({ service, backend: backend.address, weight }, 'admin: backend weight set');
    return json(200, { service, backend: this.#backendView(service, backend.address) });
  }

  async #addBackend(ctx: RequestContext, service: string): Promise<Reply> {
    const { service: s } = this.#find(service);
    const body = await ctx.body();
    const parsed = backendSchema.safeParse(body, { reportInput: true });
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      if (issue.code === 'unrecognized_keys') throw badRequest(issue.keys[0], 'unknown field', body[issue.keys[0]]);
      const field = formatPath(issue.path) || 'body';
      throw badRequest(field, issue.message, (issue as { input?: unknown }).input);
    }
    const address = formatHostPort(parsed.data.address);
    if (s.backends.some((b) => b.address === address)) {
      throw new AdminHttpError(409, ADMIN_ERRORS.CONFLICT, `address: service ${JSON.stringify(service)} already has backend ${JSON.stringify(address)}`);
    }
    await this.#options.balancer.addBackend(service, parsed.data);
    this.#log.info({ service, backend: address, weight: parsed.data.weight }, 'admin: backend added');
    return json(201, { service, backend: this.#backendView(service, address) });
  }

  async #removeBackend(ctx: RequestContext, service: string, address: string): Promise<Reply> {
    const backend = this.#find(service, address).backend!;
    const forceParam = ctx.url.searchParams.get('force');
    if (forceParam !== null && !['1', 'true', '0', 'false', ''].includes(forceParam)) {
      throw badRequest('force', 'must be 1, true, 0 or false', forceParam);
    }
    const force = forceParam === '1' || forceParam === 'true' || forceParam === '';
    const addr = backend.address;
    if (backend.removed === true && !force) {
      return json(202, { service, backend: addr, removed: false, draining: true, active: this.#activeOf(service, addr) ?? 0 });
    }
    const active = this.#activeOf(service, addr) ?? 0;
    // The Balancer takes the backend out of the member list at once (no new sessions); without
    // force its open sessions finish and the slot is freed when the last one closes.
    await this.#options.balancer.removeBackend(service, addr, { force });
    this.#log.info({ service, backend: addr, force, active }, force ? 'admin: backend removed, sessions closed' : 'admin: backend removed, draining');
    if (force || active === 0) return json(200, { service, backend: addr, removed: true, closed_sessions: force ? active : 0 });
    return json(202, { service, backend: addr, removed: false, draining: true, active });
  }

  /** Active sessions of a backend now; undefined when it no longer exists. */
  #activeOf(service: string, address: string): number | undefined {
    const s = this.#options.balancer.describe().find((x) => x.name === service);
    const b = s?.backends.find((x) => x.address === address);
    if (!s || !b) return undefined;
    return this.#options.stats.snapshot([{ name: s.name, index: s.index, backends: [b] }])[0].backends[0].active;
  }

  #backendView(service: string, address: string): unknown {
    const s = this.#services().find((x) => (x as { name: string }).name === service) as { backends: { address: string }[] } | undefined;
    return s?.backends.find((b) => b.address === address) ?? null;
  }

  /** Starts the new fulcrum from the current install and hands over (src/control/upgrade.ts); answers once it serves, or why it does not. */
  async #upgrade(ctx: RequestContext): Promise<Reply> {
    // Read (it is empty) before the long wait: the connection guard times a request until its body has ended.
    await ctx.body();
    if (!this.#options.upgrade) {
      throw new AdminHttpError(501, ADMIN_ERRORS.NOT_AVAILABLE, 'upgrade: this instance was not started by `fulcrum run` from a config file');
    }
    try {
      return json(200, { upgraded: true, ...await this.#options.upgrade() });
    } catch (err) {
      if (err instanceof FulcrumError && err.code === ADMIN_ERRORS.UPGRADE_FAILED) {
        throw new AdminHttpError(502, ADMIN_ERRORS.UPGRADE_FAILED, `upgrade failed, pid ${process.pid} keeps serving: ${err.message}`);
      }
      throw err;
    }
  }

  async #reload(): Promise<Reply> {
    if (!this.#options.reload) {
      throw new AdminHttpError(501, ADMIN_ERRORS.NOT_AVAILABLE, 'reload: this instance was not started from a config file');
    }
    const result = await this.#options.reload();
    return json(200, { reloaded: true, ...result });
  }
}

/** Whether a handed-over listening handle is bound at host:port (port 0: any port, as a test's config asks). */
function boundAt(handle: object, host: string, port: number): boolean {
  const out: { address?: string; port?: number } = {};
  const h = handle as { getsockname?(out: object): number };
  if (typeof h.getsockname !== 'function' || h.getsockname(out) !== 0) return false;
  const same = (a: string | undefined): boolean => a === host || (host === 'localhost' && (a === '127.0.0.1' || a === '::1'));
  return same(out.address) && (port === 0 || out.port === port);
}

/** "127.0.0.1:6379", "[::1]:6379" as fulcrum keys them; a malformed address is a 404 by name. */
function normalizeAddress(address: string): string {
  const hp = parseHostPort(address);
  return hp ? formatHostPort(hp) : address;
}

async function readJsonBody(req: IncomingMessage): Promise<Record<string, unknown>> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > MAX_BODY_BYTES) {
    throw new AdminHttpError(413, ADMIN_ERRORS.BODY_TOO_LARGE, `body: must be at most ${MAX_BODY_BYTES} bytes, got ${declared}`);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  // Past the limit nothing more is read: the 413 goes out and the connection closes (#dispatch).
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      req.pause();
      throw new AdminHttpError(413, ADMIN_ERRORS.BODY_TOO_LARGE, `body: must be at most ${MAX_BODY_BYTES} bytes, got more`);
    }
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8').trim();
  if (text.length === 0) return {};
  const type = req.headers['content-type'];
  if (type && !/^application\/json\b/i.test(type)) {
    throw new AdminHttpError(415, ADMIN_ERRORS.UNSUPPORTED_MEDIA_TYPE, `content-type: must be application/json, got ${JSON.stringify(type)}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw badRequest('body', `must be JSON (${(err as Error).message})`, text.length > 40 ? text.slice(0, 40) + '…' : text);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw badRequest('body', 'must be a JSON object', value);
  return value as Record<string, unknown>;
}

export async function startAdminServer(options: AdminServerOptions): Promise<AdminServer> {
  const server = new AdminServer(options);
  await server.listen();
  return server;
}
