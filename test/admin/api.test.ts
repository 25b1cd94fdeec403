/**
 * The admin API through a real running fulcrum: every route, with good and bad tokens, bad bodies
 * and unknown names, and the effect of each change seen through real connections.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Socket } from 'node:net';
import { connectClient, readLine, startNamedServer, waitClose, waitFor, type TestServer } from '../helpers/net.ts';
import { ADMIN_MAX_CONNECTIONS } from '../../src/admin/server.ts';
import { api, backendView, BUILT_COMMIT, PACKAGE_VERSION, startStack, TOKEN, type Stack } from './stack.ts';

const HOST = '127.5.1.1';
let stack: Stack;
let b0: string;
let b1: string;
const extra: TestServer[] = [];
const clients: Socket[] = [];

/** Which backend a new connection through the balancer reaches (its greeting). */
async function whoAnswers(): Promise<string> {
  const c = await connectClient(stack.servicePort, HOST);
  try {
    return await readLine(c);
  } finally {
    c.destroy();
  }
}

beforeAll(async () => {
  stack = await startStack({ host: HOST, backends: 2 });
  b0 = stack.backends[0].address;
  b1 = stack.backends[1].address;
});

afterAll(async () => {
  for (const c of clients) c.destroy();
  await stack?.close();
  for (const s of extra) await s.close();
});

describe('reads', () => {
  it('GET /api/services lists services and backends with state, weight, active and counters', async () => {
    const r = await api(stack.admin, 'GET', '/api/services', undefined, null);
    expect(r.status).toBe(200);
    const web = r.body.services.find((s: any) => s.name === 'web');
    expect(web).toMatchObject({ name: 'web', listen: `${HOST}:${stack.servicePort}`, balance: 'roundrobin', active: 0, queued: 0 });
    expect(web.counters).toMatchObject({ accepted: 0, bytes_in: 0, bytes_out: 0 });
    expect(web.counters.terminations).toHaveProperty('client_closed', 0);
    expect(web.backends.map((b: any) => b.address).sort()).toEqual([b0, b1].sort());
    for (const b of web.backends) {
      expect(b).toMatchObject({ state: 'up', admin_state: 'ready', weight: 1, active: 0, backup: false, removing: false });
      expect(b.counters).toMatchObject({ connections: 0, connect_failures: 0 });
    }
  });

  it('GET /api/status tells uptime, config file and reloads', async () => {
    const r = await api(stack.admin, 'GET', '/api/status', undefined, null);
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ config_file: stack.configFile, changes_enabled: true, reloads: { applied: 0, refused: 0 } });
    expect(typeof r.body.uptime_s).toBe('number');
    expect(r.body.failover).toBeUndefined();
    // The version (package.json) and the commit the build recorded (build/version.ts), or null.
    expect(r.body.version).toBe(PACKAGE_VERSION);
    expect(r.body.commit).toBe(BUILT_COMMIT);
    expect(r.body.node).toBe(process.version);
  });

  it('GET / serves the self-contained status page', async () => {
    const res = await fetch(stack.admin + '/');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/text\/html/);
    const html = await res.text();
    expect(html).toContain('fulcrum');
    expect(html).not.toMatch(/<script[^>]+src=|<link[^>]+href=/); // nothing fetched from elsewhere
  });

  it('GET /metrics answers Prometheus text', async () => {
    const res = await fetch(stack.admin + '/metrics');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/text\/plain/);
    expect(await res.text()).toContain(`fulcrum_backend_up{service="web",backend="${b0}"} 1`);
  });

  it('unknown routes are 404 and wrong methods 405, with stable codes', async () => {
    const r = await api(stack.admin, 'GET', '/api/nothing');
    expect(r.status).toBe(404);
    expect(r.body.error.code).toBe('FULCRUM_ERR_ADMIN_NOT_FOUND');
    const m = await api(stack.admin, 'PUT', '/api/services');
    expect(m.status).toBe(405);
    expect(m.body.error.code).toBe('FULCRUM_ERR_ADMIN_METHOD_NOT_ALLOWED');
  });
});

describe('node state (an operator\'s drain of the node)', () => {
  it('is a change (401 without the token), checks its body (400 naming state) and, without a bgp section, answers 501', async () => {
    expect((await api(stack.admin, 'POST', '/api/node/state', { state: 'drain' }, null)).status).toBe(401);
    const bad = await api(stack.admin, 'POST', '/api/node/state', { state: 'maint' });
    expect(bad.status).toBe(400);
    expect(bad.body.error).toMatchObject({ code: 'FULCRUM_ERR_ADMIN_BAD_REQUEST', field: 'state' });
    expect(bad.body.error.message).toContain('drain | ready');
    const none = await api(stack.admin, 'POST', '/api/node/state', { state: 'drain' });
    expect(none.status).toBe(501);
    expect(none.body.error.code).toBe('FULCRUM_ERR_ADMIN_NOT_AVAILABLE');
    expect(none.body.error.message).toContain('no bgp section');
  });
});

describe('authentication', () => {
  const path = () => `/api/services/web/backends/${b0}/state`;
  it('refuses a change without a token (401) and changes nothing', async () => {
    const r = await api(stack.admin, 'POST', path(), { state: 'maint' }, null);
    expect(r.status).toBe(401);
    expect(r.body.error.code).toBe('FULCRUM_ERR_ADMIN_UNAUTHORIZED');
    expect((await backendView(stack.admin, 'web', b0)).state).toBe('up');
  });

  it('refuses a wrong token (401) and changes nothing', async () => {
    for (const token of ['wrong', TOKEN + 'x', TOKEN.slice(0, -1)]) {
      const r = await api(stack.admin, 'POST', path(), { state: 'maint' }, token);
      expect(r.status).toBe(401);
    }
    const res = await fetch(stack.admin + '/api/reload', { method: 'POST', headers: { authorization: `Basic ${TOKEN}` } });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect((await backendView(stack.admin, 'web', b0)).state).toBe('up');
    expect((await api(stack.admin, 'GET', '/api/status')).body.reloads.applied).toBe(0);
  });

  it('refuses a removal and an addition with a bad token, and nothing changes', async () => {
    expect((await api(stack.admin, 'DELETE', `/api/services/web/backends/${b0}?force=1`, undefined, 'bad')).status).toBe(401);
    expect((await api(stack.admin, 'POST', '/api/services/web/backends', { address: `${HOST}:1` }, 'bad')).status).toBe(401);
    expect((await api(stack.admin, 'POST', `/api/services/web/backends/${b0}/weight`, { weight: 9 }, null)).status).toBe(401);
    const v = await backendView(stack.admin, 'web', b0);
    expect(v).toMatchObject({ state: 'up', weight: 1 });
    expect(await backendView(stack.admin, 'web', `${HOST}:1`)).toBeUndefined();
  });
});

describe('bad requests', () => {
  it('names the field and the value (400)', async () => {
    const cases: Array<[string, string, unknown, RegExp]> = [
      [`/api/services/web/backends/B0/state`, 'POST', { state: 'sleep' }, /^state: must be one of ready \| drain \| maint, got "sleep"$/],
      [`/api/services/web/backends/B0/state`, 'POST', {}, /^state: .*got nothing$/],
      [`/api/services/web/backends/B0/weight`, 'POST', { weight: -1 }, /^weight: must be an integer 0–256, got -1$/],
      [`/api/services/web/backends/B0/weight`, 'POST', { weight: '3' }, /^weight: .*got "3"$/],
      [`/api/services/web/backends/B0/weight`, 'POST', { weight: 1.5 }, /^weight: .*got 1.5$/],
      [`/api/services/web/backends`, 'POST', { address: 'nope' }, /^address: must be host:port.*got "nope"$/],
      [`/api/services/web/backends`, 'POST', { address: '300.1.1.1:80' }, /^address: must be host:port.*"300\.1\.1\.1" is not an IPv4 address, got "300\.1\.1\.1:80"$/],
      [`/api/services/web/backends`, 'POST', { address: `${HOST}:7000`, weight: 999 }, /^weight: must be an integer 0–256, got 999$/],
      [`/api/services/web/backends`, 'POST', { address: `${HOST}:7000`, colour: 'red' }, /^colour: unknown field, got "red"$/],
      [`/api/services/web/backends`, 'POST', {}, /^address: /],
      [`/api/services/web/backends/B0/state`, 'POST', '{"state": ', /^body: must be JSON/],
      [`/api/services/web/backends/B0/state`, 'POST', '[1,2]', /^body: must be a JSON object, got \[1,2\]$/],
      [`/api/services/web/backends/B0?force=maybe`, 'DELETE', undefined, /^force: must be 1, true, 0 or false, got "maybe"$/],
    ];
    for (const [path, method, body, message] of cases) {
      const r = await api(stack.admin, method, path.replace('B0', b0), body);
      expect(r.status, `${method} ${path} ${JSON.stringify(body)}`).toBe(400);
      expect(r.body.error.code).toBe('FULCRUM_ERR_ADMIN_BAD_REQUEST');
      expect(r.body.error.message).toMatch(message);
    }
    const v = await backendView(stack.admin, 'web', b0);
    expect(v).toMatchObject({ state: 'up', weight: 1 });
  });

  it('names a value too deeply nested to print without failing (400, not 500)', async () => {
    // 30000 nested arrays fit in the 64 KiB limit; JSON.parse takes them, JSON.stringify does not.
    const deep = '['.repeat(30_000) + ']'.repeat(30_000);
    for (const [path, body] of [[`/api/services/web/backends/${b0}/state`, `{"state": ${deep}}`], ['/api/services/web/backends', deep]]) {
      const r = await api(stack.admin, 'POST', path, body);
      expect(r.status, path).toBe(400);
      expect(r.body.error.code).toBe('FULCRUM_ERR_ADMIN_BAD_REQUEST');
      expect(r.body.error.message).toMatch(/^(state: must be one of .*|body: must be a JSON object), got \[…\]$/);
    }
    expect((await backendView(stack.admin, 'web', b0)).state).toBe('up');
  });

  it('refuses bodies over the limit (413)', async () => {
    const r = await api(stack.admin, 'POST', `/api/services/web/backends/${b0}/state`, JSON.stringify({ state: 'drain', pad: 'x'.repeat(100_000) }));
    expect(r.status).toBe(413);
    expect(r.body.error.code).toBe('FULCRUM_ERR_ADMIN_BODY_TOO_LARGE');
    expect((await backendView(stack.admin, 'web', b0)).state).toBe('up');
  });

  it('holds at most ADMIN_MAX_CONNECTIONS connections: one more is closed, and the API answers again once they go', async () => {
    const idle: Socket[] = [];
    try {
      for (let i = 0; i < ADMIN_MAX_CONNECTIONS; i++) idle.push(await connectClient(stack.adminPort, HOST));
      // Accepted in order: the last one is held before the extra one arrives.
      await waitFor(async () => {
        const extraOne = await connectClient(stack.adminPort, HOST);
        extraOne.on('error', () => undefined);
        try {
          await waitClose(extraOne, 1000);
          return true;
        } catch {
          return false;
        } finally {
          extraOne.destroy();
        }
      }, 5000, 'a connection past the limit closed');
    } finally {
      for (const c of idle) c.destroy();
    }
    await waitFor(async () => (await api(stack.admin, 'GET', '/api/status', undefined, null).catch(() => ({ status: 0 }))).status === 200, 5000, 'the API answers again');
  });

  it('answers 404 for an unknown service or backend', async () => {
    const s = await api(stack.admin, 'POST', `/api/services/nosuch/backends/${b0}/state`, { state: 'drain' });
    expect(s.status).toBe(404);
    expect(s.body.error.message).toContain('"nosuch"');
    const b = await api(stack.admin, 'POST', `/api/services/web/backends/${HOST}:9/state`, { state: 'drain' });
    expect(b.status).toBe(404);
    expect(b.body.error).toMatchObject({ code: 'FULCRUM_ERR_ADMIN_NOT_FOUND' });
    expect(b.body.error.message).toContain(`"${HOST}:9"`);
    expect((await api(stack.admin, 'POST', `/api/services/web/backends/${HOST}:9/weight`, { weight: 2 })).status).toBe(404);
    expect((await api(stack.admin, 'DELETE', `/api/services/web/backends/${HOST}:9`)).status).toBe(404);
    expect((await api(stack.admin, 'POST', '/api/services/nosuch/backends', { address: `${HOST}:9` })).status).toBe(404);
  });
});

describe('changes', () => {
  it('drain, maint and ready steer new connections', async () => {
    const drained = await api(stack.admin, 'POST', `/api/services/web/backends/${encodeURIComponent(b0)}/state`, { state: 'drain' });
    expect(drained.status).toBe(200);
    expect(drained.body.backend).toMatchObject({ address: b0, state: 'drain', admin_state: 'drain' });
    for (let i = 0; i < 6; i++) expect(await whoAnswers()).toBe('b1');

    expect((await api(stack.admin, 'POST', `/api/services/web/backends/${b1}/state`, { state: 'maint' })).body.backend.state).toBe('maint');
    expect((await api(stack.admin, 'POST', `/api/services/web/backends/${b0}/state`, { state: 'ready' })).body.backend.state).toBe('up');
    for (let i = 0; i < 6; i++) expect(await whoAnswers()).toBe('b0');
    expect((await api(stack.admin, 'POST', `/api/services/web/backends/${b1}/state`, { state: 'ready' })).status).toBe(200);
    const seen = new Set<string>();
    for (let i = 0; i < 8; i++) seen.add(await whoAnswers());
    expect([...seen].sort()).toEqual(['b0', 'b1']);
  });

  it('sets a weight, and the round-robin follows it', async () => {
    const r = await api(stack.admin, 'POST', `/api/services/web/backends/${b1}/weight`, { weight: 3 });
    expect(r.status).toBe(200);
    expect(r.body.backend).toMatchObject({ weight: 3 });
    const counts: Record<string, number> = { b0: 0, b1: 0 };
    for (let i = 0; i < 16; i++) counts[await whoAnswers()]++;
    expect(counts).toEqual({ b0: 4, b1: 12 });
    await api(stack.admin, 'POST', `/api/services/web/backends/${b1}/weight`, { weight: 1 });
  });

  it('adds a backend that takes connections, and refuses a duplicate (409)', async () => {
    const b2 = await startNamedServer('b2', HOST);
    extra.push(b2);
    const r = await api(stack.admin, 'POST', '/api/services/web/backends', { address: b2.address, weight: 2 });
    expect(r.status).toBe(201);
    expect(r.body.backend).toMatchObject({ address: b2.address, weight: 2, state: 'up' });
    const seen = new Set<string>();
    for (let i = 0; i < 12; i++) seen.add(await whoAnswers());
    expect(seen.has('b2')).toBe(true);
    const v = await backendView(stack.admin, 'web', b2.address);
    expect(v.counters.connections).toBeGreaterThan(0);
    const dup = await api(stack.admin, 'POST', '/api/services/web/backends', { address: b2.address });
    expect(dup.status).toBe(409);
    expect(dup.body.error.code).toBe('FULCRUM_ERR_ADMIN_CONFLICT');
  });

  it('removes a backend after draining it: open sessions continue, then it is gone', async () => {
    const b2 = extra[0];
    // Hold a session on b2: make b2 the only ready backend, connect, then restore the others.
    await api(stack.admin, 'POST', `/api/services/web/backends/${b0}/state`, { state: 'drain' });
    await api(stack.admin, 'POST', `/api/services/web/backends/${b1}/state`, { state: 'drain' });
    const held = await connectClient(stack.servicePort, HOST);
    clients.push(held);
    expect(await readLine(held)).toBe('b2');
    await api(stack.admin, 'POST', `/api/services/web/backends/${b0}/state`, { state: 'ready' });
    await api(stack.admin, 'POST', `/api/services/web/backends/${b1}/state`, { state: 'ready' });

    const r = await api(stack.admin, 'DELETE', `/api/services/web/backends/${b2.address}`);
    expect(r.status).toBe(202);
    expect(r.body).toMatchObject({ removed: false, draining: true, active: 1 });
    const v = await backendView(stack.admin, 'web', b2.address);
    expect(v).toMatchObject({ state: 'drain', removing: true, active: 1 });
    for (let i = 0; i < 6; i++) expect(await whoAnswers()).not.toBe('b2');
    // A change to a backend on its way out is refused.
    expect((await api(stack.admin, 'POST', `/api/services/web/backends/${b2.address}/state`, { state: 'ready' })).status).toBe(409);
    // The held session still works.
    held.write('still here\n');
    expect(await readLine(held)).toBe('still here');
    held.destroy();
    await waitFor(async () => (await backendView(stack.admin, 'web', b2.address)) === undefined, 5000, 'the drained backend to go');
  });

  it('removes a backend at once with force=1, closing its sessions', async () => {
    const b3 = await startNamedServer('b3', HOST);
    extra.push(b3);
    await api(stack.admin, 'POST', `/api/services/web/backends/${b0}/state`, { state: 'drain' });
    await api(stack.admin, 'POST', `/api/services/web/backends/${b1}/state`, { state: 'drain' });
    expect((await api(stack.admin, 'POST', '/api/services/web/backends', { address: b3.address })).status).toBe(201);
    const held = await connectClient(stack.servicePort, HOST);
    clients.push(held);
    expect(await readLine(held)).toBe('b3');
    await api(stack.admin, 'POST', `/api/services/web/backends/${b0}/state`, { state: 'ready' });
    await api(stack.admin, 'POST', `/api/services/web/backends/${b1}/state`, { state: 'ready' });

    const r = await api(stack.admin, 'DELETE', `/api/services/web/backends/${b3.address}?force=1`);
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ removed: true, closed_sessions: 1 });
    await waitClose(held, 3000);
    await waitFor(async () => (await backendView(stack.admin, 'web', b3.address)) === undefined, 3000, 'the removed backend to go');
  });
});

describe('without admin.token_file', () => {
  let bare: Stack;
  beforeAll(async () => {
    bare = await startStack({ host: '127.5.1.2', backends: 1, admin: (listen) => `    listen: ${listen}\n` });
  });
  afterAll(async () => {
    await bare?.close();
  });

  it('serves reads but refuses every change with 403 naming admin.token_file', async () => {
    expect((await api(bare.admin, 'GET', '/api/services', undefined, null)).status).toBe(200);
    const addr = bare.backends[0].address;
    for (const [method, path, body] of [
      ['POST', `/api/services/web/backends/${addr}/state`, { state: 'drain' }],
      ['POST', '/api/reload', undefined],
      ['DELETE', `/api/services/web/backends/${addr}`, undefined],
    ] as const) {
      const r = await api(bare.admin, method, path, body, TOKEN);
      expect(r.status).toBe(403);
      expect(r.body.error.code).toBe('FULCRUM_ERR_ADMIN_CHANGES_DISABLED');
      expect(r.body.error.message).toContain('admin.token_file');
    }
    expect((await backendView(bare.admin, 'web', addr)).state).toBe('up');
    expect((await api(bare.admin, 'GET', '/api/status', undefined, null)).body.changes_enabled).toBe(false);
  });
});

describe('with admin.auth_reads', () => {
  let locked: Stack;
  beforeAll(async () => {
    locked = await startStack({ host: '127.5.1.3', backends: 1, admin: (listen, tokenFile) => `    listen: ${listen}\n    token_file: ${tokenFile}\n    auth_reads: true\n` });
  });
  afterAll(async () => {
    await locked?.close();
  });

  it('needs the token for reads and metrics too', async () => {
    for (const path of ['/api/services', '/api/status', '/metrics']) {
      expect((await api(locked.admin, 'GET', path, undefined, null)).status, path).toBe(401);
      expect((await api(locked.admin, 'GET', path, undefined, 'nope')).status, path).toBe(401);
      expect((await api(locked.admin, 'GET', path, undefined, TOKEN)).status, path).toBe(200);
    }
  });
});
