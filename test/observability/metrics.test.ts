/**
 * GET /metrics against traffic the test sent through a real fulcrum: byte and connection counts
 * exact once the connections closed, per service and per backend, summed over the workers;
 * termination reasons; retries and connect failures from a dead backend; probe metrics from the
 * health monitor.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectClient, freePort, readLine, startNamedServer, waitClose, waitFor, type TestServer } from '../helpers/net.ts';
import { api, BUILT_COMMIT, PACKAGE_VERSION, startStack, type Stack } from '../admin/stack.ts';

const HOST = '127.5.2.1';
let stack: Stack;
let deadPort: number;
let probedPort: number;
/** The probed service's live backend (its own server, so probes do not add to web's accept counts). */
let probedLive: TestServer;

/** Every sample of the exposition as "name{labels}" → value. */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

async function scrape(): Promise<Map<string, number>> {
  const r = await api(stack.admin, 'GET', '/metrics', undefined, null);
  expect(r.status).toBe(200);
  return samples(r.body);
}

beforeAll(async () => {
  deadPort = await freePort(HOST); // nothing listens here
  probedPort = await freePort(HOST);
  stack = await startStack({
    host: HOST,
    backends: 2,
    workers: 3,
  });
  probedLive = await startNamedServer('p0', HOST);
  // A second service with health probes (one live backend, one dead), added by a reload.
  const text = (await import('node:fs')).readFileSync(stack.configFile, 'utf8');
  await stack.writeConfig(text + `  - name: probed
    listen: ${HOST}:${probedPort}
    health: { type: tcp, interval: 100ms, timeout: 50ms, rise: 1, fall: 1 }
    backends:
      - { address: ${probedLive.address} }
      - { address: ${HOST}:${deadPort} }
`);
  expect((await api(stack.admin, 'POST', '/api/reload')).status).toBe(200);
});

afterAll(async () => {
  await stack?.close();
  await probedLive?.close();
});

describe('metrics', () => {
  it('counts bytes and connections exactly, per service and per backend', async () => {
    const N = 24;
    const K = 1000;
    const payload = Buffer.alloc(K, 'x');
    for (let batch = 0; batch < N / 8; batch++) {
      await Promise.all(Array.from({ length: 8 }, async () => {
        const c = await connectClient(stack.servicePort, HOST);
        const name = await readLine(c); // "b0" or "b1": 3 bytes with the newline
        expect(name).toMatch(/^b[01]$/);
        let got = 0;
        const echoed = new Promise<void>((resolve) => c.on('data', (d: Buffer) => {
          got += d.length;
          if (got >= K) resolve();
        }));
        c.write(payload);
        await echoed;
        c.destroy();
        await waitClose(c);
      }));
    }
    // Closed connections are counted when the worker releases them: wait until none is active.
    await waitFor(async () => (await scrape()).get('fulcrum_service_active_connections{service="web"}') === 0, 5000, 'no active sessions');
    const m = await scrape();
    expect(m.get('fulcrum_service_connections_total{service="web"}')).toBe(N);
    expect(m.get('fulcrum_service_bytes_in_total{service="web"}')).toBe(N * K);
    expect(m.get('fulcrum_service_bytes_out_total{service="web"}')).toBe(N * (K + 3));
    expect(m.get('fulcrum_service_terminations_total{service="web",reason="client_closed"}')).toBe(N);
    expect(m.get('fulcrum_service_terminations_total{service="web",reason="server_closed"}')).toBe(0);
    const [b0, b1] = stack.backends.map((b) => b.address);
    const c0 = m.get(`fulcrum_backend_connections_total{service="web",backend="${b0}"}`)!;
    const c1 = m.get(`fulcrum_backend_connections_total{service="web",backend="${b1}"}`)!;
    expect(c0 + c1).toBe(N);
    expect(c0).toBe(N / 2); // round-robin over two equal backends
    expect(c0).toBe(stack.backends[0].accepted);
    expect(c1).toBe(stack.backends[1].accepted);
    expect(m.get(`fulcrum_backend_bytes_in_total{service="web",backend="${b0}"}`)).toBe(c0 * K);
    expect(m.get(`fulcrum_backend_bytes_out_total{service="web",backend="${b1}"}`)).toBe(c1 * (K + 3));
    expect(m.get(`fulcrum_backend_active_connections{service="web",backend="${b0}"}`)).toBe(0);
    expect(m.get(`fulcrum_backend_up{service="web",backend="${b0}"}`)).toBe(1);
    expect(m.get(`fulcrum_backend_weight{service="web",backend="${b0}"}`)).toBe(1);
    // The same figures in the JSON API.
    const web = (await api(stack.admin, 'GET', '/api/services', undefined, null)).body.services.find((s: any) => s.name === 'web');
    expect(web.counters).toMatchObject({ accepted: N, bytes_in: N * K, bytes_out: N * (K + 3) });
  });

  it('shows open sessions as active while they last', async () => {
    const held = await Promise.all([0, 1, 2].map(async () => {
      const c = await connectClient(stack.servicePort, HOST);
      await readLine(c);
      return c;
    }));
    try {
      const m = await scrape();
      expect(m.get('fulcrum_service_active_connections{service="web"}')).toBe(3);
      const [b0, b1] = stack.backends.map((b) => b.address);
      expect(m.get(`fulcrum_backend_active_connections{service="web",backend="${b0}"}`)! +
        m.get(`fulcrum_backend_active_connections{service="web",backend="${b1}"}`)!).toBe(3);
    } finally {
      for (const c of held) c.destroy();
    }
    await waitFor(async () => (await scrape()).get('fulcrum_service_active_connections{service="web"}') === 0, 5000, 'sessions to close');
  });

  it('exports probe results, health state, retries and connect failures, reloads, event-loop lag', async () => {
    const dead = `${HOST}:${deadPort}`;
    const live = probedLive.address;
    await waitFor(async () => {
      const m = await scrape();
      return (m.get(`fulcrum_health_probes_total{service="probed",backend="${dead}",result="fail"}`) ?? 0) >= 2 &&
        (m.get(`fulcrum_health_probes_total{service="probed",backend="${live}",result="ok"}`) ?? 0) >= 2;
    }, 5000, 'probe results in the metrics');
    const m = await scrape();
    expect(m.get(`fulcrum_backend_up{service="probed",backend="${dead}"}`)).toBe(0);
    expect(m.get(`fulcrum_backend_state{service="probed",backend="${dead}",state="down"}`)).toBe(1);
    expect(m.get(`fulcrum_backend_up{service="probed",backend="${live}"}`)).toBe(1);
    expect(m.get(`fulcrum_health_probe_last_success{service="probed",backend="${dead}"}`)).toBe(0);
    expect(m.get(`fulcrum_health_probe_last_success{service="probed",backend="${live}"}`)).toBe(1);
    expect(m.get(`fulcrum_health_probe_duration_seconds_count{service="probed",backend="${live}"}`)).toBeGreaterThanOrEqual(2);
    expect(m.get('fulcrum_reloads_total{result="applied"}')).toBe(1);
    expect(m.get('fulcrum_nodejs_eventloop_lag_seconds')).toBeGreaterThanOrEqual(0);
    // What runs: one series, value 1; relay says whether the workers run the native relay.
    const relay = stack.handle.pool.dataPath === 'relay' ? 'native' : 'none';
    const info = [...m.entries()].filter(([k]) => k.startsWith('fulcrum_build_info{'));
    expect(info).toEqual([[`fulcrum_build_info{version="${PACKAGE_VERSION}",commit="${BUILT_COMMIT ?? ''}",node="${process.version}",relay="${relay}"}`, 1]]);
    expect(m.has('fulcrum_failover_role{role="master"}')).toBe(false); // no ha section
    expect([...m.keys()].filter((k) => k.startsWith('fulcrum_bgp_'))).toEqual([]); // no bgp section

    // Retries: put a dead backend into "web" (no health section, so only the data plane sees it fail).
    expect((await api(stack.admin, 'POST', '/api/services/web/backends', { address: dead })).status).toBe(201);
    for (let i = 0; i < 6; i++) {
      const c = await connectClient(stack.servicePort, HOST);
      expect(await readLine(c)).toMatch(/^b[01]$/); // never a failed client while another backend is up
      c.destroy();
    }
    const after = await scrape();
    const failures = after.get(`fulcrum_backend_connect_failures_total{service="web",backend="${dead}"}`)!;
    expect(failures).toBeGreaterThanOrEqual(1);
    expect(after.get('fulcrum_service_retries_total{service="web"}')).toBe(failures);
    expect(after.get(`fulcrum_backend_retries_total{service="web",backend="${dead}"}`)).toBe(failures);
    expect(after.get(`fulcrum_backend_connections_total{service="web",backend="${dead}"}`)).toBe(0);
  });
});
