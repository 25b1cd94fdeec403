/**
 * Live reload through a real fulcrum: connections held open across many reloads (API and SIGHUP)
 * keep working while services and backends come and go and weights, limits and algorithms change;
 * broken configs are refused with their problems and the running config keeps serving; a reload
 * moves, removes and adds the admin server, and one whose new admin address is taken changes nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Socket } from 'node:net';
import { connectClient, freePort, readLine, startNamedServer, startServer, waitFor, type TestServer } from '../helpers/net.ts';
import { parseConfig } from '../../src/config/load.ts';
import { describeChanges as diffConfigs } from '../../src/control/diff.ts';
import { api, configText, startStack, type Stack } from './stack.ts';

const HOST = '127.5.3.1';
let stack: Stack;
let b2: TestServer;
let extraPort: number;
const held: Socket[] = [];

interface Variant {
  balance: string;
  weights: [number, number];
  withB2: boolean;
  withExtra: boolean;
  maxConnections: number;
}

function yaml(v: Variant): string {
  const backends = [stack.backends[0].address, stack.backends[1].address, ...(v.withB2 ? [b2.address] : [])];
  let text = configText({
    host: HOST, servicePort: stack.servicePort, adminPort: stack.adminPort, tokenFile: stack.tokenFile, backends,
    serviceExtra: `    max_connections: ${v.maxConnections}\n`,
    extraServices: v.withExtra ? `  - name: extra\n    listen: ${HOST}:${extraPort}\n    backends:\n      - { address: ${stack.backends[1].address} }\n` : '',
  });
  text = text.replace('balance: roundrobin', `balance: ${v.balance}`);
  // Weights: the two first backends.
  text = text.replace(`{ address: ${backends[0]} }`, `{ address: ${backends[0]}, weight: ${v.weights[0]} }`);
  text = text.replace(`{ address: ${backends[1]} }`, `{ address: ${backends[1]}, weight: ${v.weights[1]} }`);
  return text;
}

async function echoes(s: Socket, text: string): Promise<void> {
  s.write(text + '\n');
  expect(await readLine(s, 3000)).toBe(text);
}

async function greeting(port: number, host = HOST): Promise<string> {
  const c = await connectClient(port, host);
  try {
    return await readLine(c);
  } finally {
    c.destroy();
  }
}

beforeAll(async () => {
  stack = await startStack({ host: HOST, backends: 2, signals: true });
  b2 = await startNamedServer('b2', HOST);
  extraPort = await freePort(HOST);
  for (let i = 0; i < 12; i++) {
    const c = await connectClient(stack.servicePort, HOST);
    c.setNoDelay(true);
    expect(await readLine(c)).toMatch(/^b[01]$/);
    held.push(c);
  }
});

afterAll(async () => {
  for (const c of held) c.destroy();
  await stack?.close();
  await b2?.close();
});

describe('reload', () => {
  it('applies differences while held connections keep working across many reloads', async () => {
    const algorithms = ['roundrobin', 'leastconn', 'maglev', 'random'];
    let applied = 0;
    for (let round = 0; round < 16; round++) {
      const v: Variant = {
        balance: algorithms[round % algorithms.length],
        weights: [1 + (round % 3), 1 + ((round + 1) % 4)],
        withB2: round % 2 === 1,
        withExtra: round % 4 >= 2,
        maxConnections: round % 5 === 4 ? 500 : 0,
      };
      await stack.writeConfig(yaml(v));
      if (round % 2 === 0) {
        const r = await api(stack.admin, 'POST', '/api/reload');
        expect(r.status, JSON.stringify(r.body)).toBe(200);
        expect(r.body.reloaded).toBe(true);
        expect(Array.isArray(r.body.changes)).toBe(true);
        if (round > 0) expect(r.body.changes.length).toBeGreaterThan(0);
        applied++;
        await waitFor(async () => (await api(stack.admin, 'GET', '/api/status')).body.reloads.applied === applied, 3000, 'the API reload');
      } else {
        process.kill(process.pid, 'SIGHUP');
        applied++;
        await waitFor(async () => (await api(stack.admin, 'GET', '/api/status')).body.reloads.applied === applied, 3000, 'the SIGHUP reload');
      }
      expect(stack.handle.config.services[0].balance).toBe(v.balance);

      // Every held connection still echoes, through every reload.
      await Promise.all(held.map((c, i) => echoes(c, `round ${round} conn ${i}`)));

      // The new config is the one serving.
      const services = (await api(stack.admin, 'GET', '/api/services')).body.services;
      const web = services.find((s: any) => s.name === 'web');
      const live = web.backends.filter((b: any) => !b.removing);
      expect(live.map((b: any) => b.address).includes(b2.address)).toBe(v.withB2);
      expect(live.find((b: any) => b.address === stack.backends[0].address).weight).toBe(v.weights[0]);
      expect(web.balance).toBe(v.balance);
      expect(web.max_connections).toBe(v.maxConnections);
      expect(services.some((s: any) => s.name === 'extra')).toBe(v.withExtra);
      if (v.withExtra) await waitFor(async () => (await greeting(extraPort).catch(() => '')) === 'b1', 3000, 'the extra service to answer');
      if (v.withB2) {
        const seen = new Set<string>();
        for (let i = 0; i < 20 && !seen.has('b2'); i++) seen.add(await greeting(stack.servicePort));
        expect(seen.has('b2')).toBe(true);
      }
    }
    expect(held.every((c) => !c.destroyed)).toBe(true);
  });

  it('refuses broken configs with their problems; the running config keeps serving', async () => {
    const before = JSON.stringify(stack.handle.config);
    const status0 = (await api(stack.admin, 'GET', '/api/status')).body.reloads;
    const broken: Array<[string, RegExp]> = [
      [yaml({ balance: 'roundrobin', weights: [1, 1], withB2: false, withExtra: false, maxConnections: 0 }).replace('weight: 1', 'weight: -4'), /services\[0\]\.backends\[0\]\.weight/],
      [yaml({ balance: 'roundrobin', weights: [1, 1], withB2: false, withExtra: false, maxConnections: 0 }).replace('balance: roundrobin', 'balance: fastest'), /services\[0\]\.balance: must be one of .*"fastest"/],
      ['services: [\n  - name: x\n', /YAML/],
      // What start-up refuses, a reload refuses: a probe password file that cannot be read.
      [yaml({ balance: 'roundrobin', weights: [1, 1], withB2: false, withExtra: false, maxConnections: 0 })
        .replace('    backends:', '    health: { type: redis, redis: { password_file: ./no-such.password } }\n    backends:'),
      /services\[0\]\.health\.redis\.password_file: .*no-such\.password: cannot read \(ENOENT\)/],
      [yaml({ balance: 'roundrobin', weights: [1, 1], withB2: false, withExtra: false, maxConnections: 0 }) + 'colour: red\n', /colour: unknown key/],
    ];
    let refused = status0.refused;
    for (const [text, problem] of broken) {
      await stack.writeConfig(text);
      const r = await api(stack.admin, 'POST', '/api/reload');
      expect(r.status).toBe(422);
      expect(r.body.error.code).toBe('FULCRUM_ERR_CONFIG_INVALID');
      expect(r.body.error.problems.map((p: any) => `${p.path}: ${p.message}`).join('\n')).toMatch(problem);
      refused++;
      expect(JSON.stringify(stack.handle.config)).toBe(before);
      await Promise.all(held.map((c, i) => echoes(c, `after broken conn ${i}`)));
      expect(await greeting(stack.servicePort)).toMatch(/^b[012]$/);
    }
    // SIGHUP with a broken file: logged with its problems, nothing changes.
    const logCount = stack.logs.length;
    process.kill(process.pid, 'SIGHUP');
    refused++;
    await waitFor(async () => (await api(stack.admin, 'GET', '/api/status')).body.reloads.refused === refused, 3000, 'the SIGHUP refusal');
    const line = stack.logs.slice(logCount).find((l) => l.component === 'reload' && l.level === 50);
    expect(line?.msg).toMatch(/reload refused, the running config keeps serving/);
    expect(line?.trigger).toBe('SIGHUP');
    expect(line?.problems?.[0]?.path).toBe('colour');
    expect(JSON.stringify(stack.handle.config)).toBe(before);
    const status = (await api(stack.admin, 'GET', '/api/status')).body.reloads;
    expect(status.refused).toBe(refused);
    expect(status.last).toMatchObject({ ok: false, trigger: 'SIGHUP' });
    // A service moved onto an address another process holds: refused whole, nothing applied, and
    // the service keeps accepting where it was (the workers used to close it first).
    const taken = await startServer((s) => s.destroy(), HOST);
    try {
      const v: Variant = { balance: 'roundrobin', weights: [1, 1], withB2: false, withExtra: false, maxConnections: 0 };
      await stack.writeConfig(yaml(v).replace(`listen: ${HOST}:${stack.servicePort}`, `listen: ${HOST}:${taken.port}`).replace('weight: 1', 'weight: 9'));
      const moved = await api(stack.admin, 'POST', '/api/reload');
      expect(moved.status, JSON.stringify(moved.body)).toBe(409);
      expect(moved.body.error).toMatchObject({ code: 'FULCRUM_ERR_LISTEN' });
      expect(moved.body.error.message).toContain(`service web: cannot listen on ${HOST}:${taken.port}: listen EADDRINUSE`);
      expect(JSON.stringify(stack.handle.config)).toBe(before);
      expect(await greeting(stack.servicePort)).toMatch(/^b[012]$/);
      await Promise.all(held.map((c, i) => echoes(c, `after taken conn ${i}`)));
      // Two services on one address under two names would share its connections: refused too.
      await stack.writeConfig(yaml({ ...v, withExtra: true }).replace(`listen: ${HOST}:${extraPort}`, `listen: ${HOST}:${stack.servicePort}`)
        .replace(`listen: ${HOST}:${stack.servicePort}`, `listen: 0x7f.5.3.1:${stack.servicePort}`));
      const twice = await api(stack.admin, 'POST', '/api/reload');
      expect(twice.status, JSON.stringify(twice.body)).toBe(422);
      expect(twice.body.error.problems).toEqual([expect.objectContaining({ path: 'services[1].listen' })]);
      expect(JSON.stringify(stack.handle.config)).toBe(before);
      const status = (await api(stack.admin, 'GET', '/api/status')).body.reloads;
      expect(status.refused).toBe(refused + 2);
      expect(status.last).toMatchObject({ ok: false, problems: [expect.objectContaining({ path: 'services[1].listen' })] });
    } finally {
      await taken.close();
    }
    // An unreadable file is refused too.
    const { rm } = await import('node:fs/promises');
    await rm(stack.configFile);
    const gone = await api(stack.admin, 'POST', '/api/reload');
    expect(gone.status).toBe(422);
    expect(gone.body.error.code).toBe('FULCRUM_ERR_CONFIG_UNREADABLE');
    await Promise.all(held.map((c, i) => echoes(c, `after unreadable conn ${i}`)));
  });
});

describe('reload and the admin server', () => {
  const MOVE_HOST = '127.5.3.2';
  let moving: Stack;
  /** The config file with `admin` listening on `port` (null: no admin section) and backend b0's weight. */
  const text = (port: number | null, weight = 1): string =>
    configText({
      host: MOVE_HOST, servicePort: moving.servicePort, adminPort: port ?? 0, tokenFile: moving.tokenFile,
      backends: moving.backends.map((b) => b.address),
    })
      .replace(/admin:\n(    .*\n)+/, port === null ? '' : '$&')
      .replace(`{ address: ${moving.backends[0].address} }`, `{ address: ${moving.backends[0].address}, weight: ${weight} }`);
  /** A new connection to `base` (an admin URL) is refused: nothing listens there any more. */
  const refusesConnections = async (base: string): Promise<boolean> => {
    const { hostname, port } = new URL(base);
    try {
      (await connectClient(Number(port), hostname)).destroy();
      return false;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'ECONNREFUSED';
    }
  };

  beforeAll(async () => {
    moving = await startStack({ host: MOVE_HOST, backends: 2 });
  });
  afterAll(async () => {
    await moving?.close();
  });

  it('moves the admin server: the reload that moved it answers on the old address, the new one serves', async () => {
    const old = moving.ops.admin!.url;
    const port = await freePort(MOVE_HOST);
    await moving.writeConfig(text(port));
    const r = await api(old, 'POST', '/api/reload');
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.changes).toContain(`admin.listen ${MOVE_HOST}:${moving.adminPort} → ${MOVE_HOST}:${port}`);
    expect(r.body.restart_required).toEqual([]);
    const now = moving.ops.admin!.url;
    expect(now).toBe(`http://${MOVE_HOST}:${port}`);
    const status = await api(now, 'GET', '/api/status');
    expect(status.status).toBe(200);
    expect(status.body.reloads.last).toMatchObject({ ok: true });
    expect(await refusesConnections(old)).toBe(true);
    expect(moving.logs.some((l) => l.msg === 'admin server moved by the reload' && l.to === now && l.from === old)).toBe(true);
    expect(await greeting(moving.servicePort, MOVE_HOST)).toMatch(/^b[01]$/);
  });

  it('refuses a reload whose new admin address is taken: nothing of it is applied, the admin server stays', async () => {
    const before = JSON.stringify(moving.handle.config);
    const serving = moving.ops.admin!.url;
    const taken = await startServer((s) => s.destroy(), MOVE_HOST);
    try {
      // The same file also changes a weight: refused together with the move.
      await moving.writeConfig(text(taken.port, 7));
      const r = await api(serving, 'POST', '/api/reload');
      expect(r.status).toBe(409);
      expect(r.body.error.code).toBe('FULCRUM_ERR_LISTEN');
      expect(r.body.error.message).toContain(`admin: cannot listen on ${MOVE_HOST}:${taken.port}`);
      expect(JSON.stringify(moving.handle.config)).toBe(before);
      expect(moving.ops.admin!.url).toBe(serving);
      const status = await api(serving, 'GET', '/api/status');
      expect(status.body.reloads.last).toMatchObject({ ok: false });
      const web = (await api(serving, 'GET', '/api/services')).body.services[0];
      expect(web.backends.find((x: any) => x.address === moving.backends[0].address).weight).toBe(1);
    } finally {
      await taken.close();
    }
  });

  it('removes the admin server and adds it back', async () => {
    const old = moving.ops.admin!.url;
    await moving.writeConfig(text(null));
    const removed = (await moving.ops.reload('test')) as { changes: string[] };
    expect(removed.changes).toContain('admin removed');
    expect(moving.ops.admin).toBeUndefined();
    expect(await refusesConnections(old)).toBe(true);
    expect(await greeting(moving.servicePort, MOVE_HOST)).toMatch(/^b[01]$/);

    const port = await freePort(MOVE_HOST);
    await moving.writeConfig(text(port, 2));
    const added = (await moving.ops.reload('test')) as { changes: string[] };
    expect(added.changes).toContain(`admin added (listen ${MOVE_HOST}:${port})`);
    const base = moving.ops.admin!.url;
    expect(base).toBe(`http://${MOVE_HOST}:${port}`);
    // The token file still guards changes, and the metrics and the status page are there.
    expect((await api(base, 'POST', '/api/reload', undefined, null)).status).toBe(401);
    expect((await api(base, 'POST', '/api/reload')).status).toBe(200);
    expect((await fetch(base + '/metrics')).status).toBe(200);
    const web = (await api(base, 'GET', '/api/services')).body.services[0];
    expect(web.backends.find((x: any) => x.address === moving.backends[0].address).weight).toBe(2);
  });
});

describe('diffConfigs: what a reload applies and what waits for a restart', () => {
  const base = (ha: string, extra = ''): string => `workers: 1
${extra}services:
  - name: web
    listen: 127.0.0.1:8080
    backends: [{ address: 127.0.0.1:9000 }]
${ha}`;
  const ha = (o: { priority?: number; vip?: string; interval?: string; peer?: string } = {}) => `ha:
  vip: ${o.vip ?? '10.0.0.100/24'}
  interface: eth0
  bind: 10.0.1.1:7946
  peer: ${o.peer ?? '10.0.1.2:7946'}
  priority: ${o.priority ?? 150}
  advert_interval: ${o.interval ?? '100ms'}
  secret_file: /etc/fulcrum/ha.secret
`;
  const diff = (a: string, b: string) => diffConfigs(parseConfig(a, '<a>'), parseConfig(b, '<b>'));

  it('ha: priority and intervals apply; addresses and the interface wait for a restart', () => {
    expect(diff(base(ha()), base(ha({ priority: 200, interval: '50ms' })))).toEqual({
      changes: ['ha.priority: 150 → 200', 'ha.advert_interval: 100 → 50'], restart_required: [],
    });
    expect(diff(base(ha()), base(ha({ vip: '10.0.0.101/24', peer: '10.0.1.3:7946', priority: 120 })))).toEqual({
      changes: ['ha.priority: 150 → 120'], restart_required: ['ha.vip', 'ha.peer'],
    });
    expect(diff(base(''), base(ha())).restart_required).toEqual(['ha (added)']);
    expect(diff(base(ha()), base('')).restart_required).toEqual(['ha (removed)']);
  });

  it('workers and the admin section apply', () => {
    expect(diff(base(''), base('').replace('workers: 1', 'workers: 2'))).toEqual({ changes: ['workers: 1 → 2'], restart_required: [] });
    expect(diff(base(''), base('', 'admin: { listen: 127.0.0.1:9901 }\n'))).toEqual({ changes: ['admin added (listen 127.0.0.1:9901)'], restart_required: [] });
    expect(diff(base('', 'admin: { listen: 127.0.0.1:9901 }\n'), base('', 'admin: { listen: 127.0.0.1:9902 }\n')).changes)
      .toEqual(['admin.listen 127.0.0.1:9901 → 127.0.0.1:9902']);
  });
});
