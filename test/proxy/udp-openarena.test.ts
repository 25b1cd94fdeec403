/**
 * A real game server behind a UDP service: Debian's openarena-server (ioquake3) on two ports,
 * queried through fulcrum by Debian's quakestat (qstat), a client nobody here wrote; the
 * `getstatus` health check marks a killed game server down within fall × interval and up again
 * when it is restarted. Both packages are in .ci/run's apt-get line.
 * Addresses: 127.17.3.0/24 (game servers on .1, fulcrum on .2).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FulcrumHandle } from '../../src/main.ts';
import { SC_DGRAMS_IN } from '../../src/shm/layout.ts';
import { freePort, waitFor } from '../helpers/net.ts';
import { UdpClient } from '../helpers/udp.ts';
import { serviceCounter, startProxy } from './harness.ts';

const GAME = '127.17.3.1';
const HOST = '127.17.3.2';
const SERVER = '/usr/games/openarena-server';
const GETSTATUS = Buffer.from('ffffffff676574737461747573', 'hex');
const INTERVAL = 500;
const FALL = 2;

interface Game {
  port: number;
  map: string;
  proc: ChildProcess | null;
}

const home = mkdtempSync(join(tmpdir(), 'fulcrum-oa-'));
const games: Game[] = [];
let proxy: FulcrumHandle;
let port = 0;
let probe: UdpClient;

/** Starts (or restarts) a dedicated server on its port and map; its home is a temporary folder. */
function startGame(g: Game): void {
  g.proc = spawn(SERVER, [
    '+set', 'dedicated', '1', '+set', 'fs_homepath', home, '+set', 'com_homepath', home,
    '+set', 'net_ip', GAME, '+set', 'net_port', String(g.port), '+set', 'sv_hostname', `fulcrum-${g.map}`, '+map', g.map,
  ], { stdio: 'ignore' });
}

/** Whether the game server answers getstatus itself (not through fulcrum). */
async function answers(g: Game): Promise<boolean> {
  probe.send(GETSTATUS, g.port, GAME);
  const m = await probe.next(300);
  return m !== null && m.includes('statusResponse');
}

function backendState(address: string): string | undefined {
  return proxy.balancer.describe().find((s) => s.name === 'arena')?.backends.find((b) => b.address === address)?.state;
}

/** quakestat's raw line for a Quake 3 server at `address`: "Q3S,address,name,map,…" or "…,DOWN". */
function quakestat(address: string): string[] {
  const r = spawnSync('quakestat', ['-q3s', address, '-raw', ',', '-timeout', '2'], { encoding: 'utf8', timeout: 10_000 });
  if (r.error) throw new Error(`quakestat (Debian package qstat) could not run: ${r.error.message}`);
  return r.stdout.trim().split('\n')[0].split(',');
}

beforeAll(async () => {
  probe = await UdpClient.open(GAME);
  games.push({ port: await freePort(GAME), map: 'oa_dm1', proc: null }, { port: await freePort(GAME), map: 'oa_dm4', proc: null });
  for (const g of games) startGame(g);
  // ioquake3 loads its data (≈ 400 MB of pk3 files, read lazily) and a map: a few seconds.
  for (const g of games) await waitFor(() => answers(g), 30_000, `openarena-server on ${GAME}:${g.port} to answer getstatus`, 200);
  port = await freePort(HOST);
  proxy = await startProxy(`
workers: 2
logging: { level: silent, connections: false }
services:
  - name: arena
    protocol: udp
    listen: ${HOST}:${port}
    balance: maglev
    hash_key: source_ip_port
    timeouts: { idle: 5s }
    health: { type: udp, send: "hex:ffffffff676574737461747573", expect: "regex:^\\\\xff\\\\xff\\\\xff\\\\xffstatusResponse", interval: ${INTERVAL}ms, timeout: 400ms, fall: ${FALL}, rise: 1 }
    backends:
${games.map((g) => `      - address: ${GAME}:${g.port}`).join('\n')}
`);
}, 60_000);

afterAll(async () => {
  await proxy?.stop('test over');
  for (const g of games) g.proc?.kill('SIGKILL');
  await probe?.close();
  rmSync(home, { recursive: true, force: true });
});

describe('openarena-server behind a UDP service', () => {
  it('quakestat -q3s through fulcrum reports the map of the server its flow reached', () => {
    const row = quakestat(`${HOST}:${port}`);
    expect(row[0]).toBe('Q3S');
    expect(row[2], row.join(',')).not.toBe('DOWN');
    // Which server answered: its name says its map, and the map is the one quakestat reports.
    const map = row[3];
    expect(['oa_dm1', 'oa_dm4']).toContain(map);
    expect(row[2]).toBe(`fulcrum-${map}`);
    expect(serviceCounter(proxy, 'arena', SC_DGRAMS_IN)).toBeGreaterThanOrEqual(1);
  });

  it('the getstatus check marks a killed game server down within fall × interval, and up when it is back', async () => {
    const g = games[1];
    const address = `${GAME}:${g.port}`;
    await waitFor(() => backendState(address) === 'up', 5000, `${address} up`);
    g.proc!.kill('SIGKILL');
    await new Promise((r) => g.proc!.once('exit', r));
    // A probe may have just passed: fall failures from the next one, plus one probe's timeout of slack.
    const down = await waitFor(() => backendState(address) === 'down', 5000, `${address} marked down`, 10);
    expect(down).toBeLessThan((FALL + 1) * INTERVAL + 400);
    // Every new flow now reaches the other server.
    for (let i = 0; i < 3; i++) expect(quakestat(`${HOST}:${port}`)[3]).toBe(games[0].map);
    startGame(g);
    await waitFor(() => backendState(address) === 'up', 30_000, `${address} up again after its restart`, 50);
    expect(await answers(g)).toBe(true);
  }, 60_000);
});
