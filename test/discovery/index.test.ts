/**
 * The Discovery's rules on a hand-driven clock, its source swapped for a script of answers: the
 * hold through failures and empty answers (logged once, counted), the set emptied only past hold,
 * an unchanged answer emitting nothing, compose() joining the set to the listed backends
 * (idempotent, kept across a file reload, cut to the layout's per-service maximum and said so).
 */
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.ts';
import type { Config } from '../../src/config/schema.ts';
import { Discovery, DiscoveryError, type SourceAnswer } from '../../src/discovery/index.ts';
import type { DiscoveredEvent } from '../../src/events.ts';
import { createLogger } from '../../src/observability/log.ts';
import { MAX_MEMBERS } from '../../src/shm/layout.ts';
import { TestClock } from '../helpers/clock.ts';

const INTERVAL = 1000;
const HOLD = 5000;

const config = (): Config => parseConfig(`
services:
  - name: db
    listen: 127.0.0.1:6000
    discover: { dns: { name: db.test, type: A, port: 5432, interval: ${INTERVAL}ms, hold: ${HOLD}ms } }
    backends:
      - { address: 127.0.0.9:5432, backup: true }
`);

const answer = (...hosts: string[]): SourceAnswer => ({
  backends: hosts.map((host) => ({ address: { host, port: 5432 }, weight: 1, max_connections: 0, backup: false, state: 'ready' as const })),
  notes: [],
});

/** A Discovery on a TestClock whose source gives what `next` holds at each query. */
function harness() {
  const clock = new TestClock();
  let next: SourceAnswer | Error = answer('127.0.0.1');
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({ write(chunk, _e, cb) { lines.push(JSON.parse(String(chunk))); cb(); } });
  const d = new Discovery(config(), {
    clock, logger: createLogger('info', sink),
    source: () => ({
      kind: 'dns', query: 'A db.test', interval: INTERVAL, hold: HOLD,
      ask: async () => { if (next instanceof Error) throw next; return next; },
    }),
  });
  const events: DiscoveredEvent[] = [];
  d.on('backends', (e) => events.push(e));
  return {
    d, clock, events, lines,
    set: (x: SourceAnswer | Error) => { next = x; },
    hosts: (c = config()) => d.compose(c, c).services[0].backends.map((b) => `${b.address.host}${b.backup ? ' (backup)' : ''}`),
  };
}

describe('Discovery', () => {
  it('applies answers as they change, and emits nothing for the same answer', async () => {
    const h = harness();
    expect(h.hosts()).toEqual(['127.0.0.9 (backup)']); // nothing discovered before the first answer
    await h.clock.advance(1); // the first query (a timer of 0 fires after 1 ms, as Node's)
    expect(h.events.map((e) => e.backends)).toEqual([1]);
    expect(h.hosts()).toEqual(['127.0.0.9 (backup)', '127.0.0.1']);
    await h.clock.advance(3 * INTERVAL);
    expect(h.events.length).toBe(1);
    h.set(answer('127.0.0.1', '127.0.0.2'));
    await h.clock.advance(INTERVAL);
    expect(h.events.map((e) => e.backends)).toEqual([1, 2]);
    expect(h.hosts()).toEqual(['127.0.0.9 (backup)', '127.0.0.1', '127.0.0.2']);
    h.d.stop();
  });

  it('failures keep the last set for hold, logged once and counted; past hold the set is emptied', async () => {
    const h = harness();
    await h.clock.advance(1); // the first query (a timer of 0 fires after 1 ms, as Node's)
    h.set(new DiscoveryError('dns A db.test: no answer from the resolvers (timeout) (ETIMEOUT)'));
    await h.clock.advance(INTERVAL); // the first failure, 1 s after the last good answer
    expect(h.d.describe()[0]).toMatchObject({ errors: 1, last_error: 'dns A db.test: no answer from the resolvers (timeout) (ETIMEOUT)', backends: 1 });
    await h.clock.advance(HOLD - 2 * INTERVAL); // 4 s after the last good answer: kept
    expect(h.hosts()).toContain('127.0.0.1');
    expect(h.events.length).toBe(1);
    await h.clock.advance(INTERVAL); // 5 s: hold has run out
    expect(h.hosts()).toEqual(['127.0.0.9 (backup)']);
    expect(h.events.map((e) => e.backends)).toEqual([1, 0]);
    expect(h.d.describe()[0]).toMatchObject({ errors: 5, backends: 0 });
    const warned = h.lines.filter((l) => String(l.msg).startsWith('discovery failed'));
    expect(warned.length).toBe(1); // once per run of failures, not once per query
    expect(h.lines.filter((l) => String(l.msg).includes('for longer than hold')).length).toBe(1);
    // Answering again: back, and said once.
    h.set(answer('127.0.0.1'));
    await h.clock.advance(INTERVAL);
    expect(h.hosts()).toEqual(['127.0.0.9 (backup)', '127.0.0.1']);
    expect(h.d.describe()[0]).toMatchObject({ last_error: null, holding_since: null });
    expect(h.lines.filter((l) => l.msg === 'discovery answers again').length).toBe(1);
    h.d.stop();
  });

  it('an empty answer is not "remove everything" until it has lasted past hold', async () => {
    const h = harness();
    await h.clock.advance(1); // the first query (a timer of 0 fires after 1 ms, as Node's)
    h.set(new DiscoveryError('dns A db.test: the name does not exist (NXDOMAIN) (ENOTFOUND)', { empty: true }));
    await h.clock.advance(HOLD - INTERVAL);
    expect(h.hosts()).toContain('127.0.0.1');
    expect(h.d.describe()[0]).toMatchObject({ errors: 0, last_answer: 'empty: dns A db.test: the name does not exist (NXDOMAIN) (ENOTFOUND)' });
    // An answer with records in the middle of it starts the hold again.
    h.set(answer('127.0.0.1'));
    await h.clock.advance(INTERVAL);
    h.set(answer());
    await h.clock.advance(HOLD - INTERVAL);
    expect(h.hosts()).toContain('127.0.0.1');
    await h.clock.advance(INTERVAL);
    expect(h.hosts()).toEqual(['127.0.0.9 (backup)']);
    h.d.stop();
  });

  it('compose: idempotent, a file reload keeps the set, a listed address wins, and 10,000 records are cut to what a service holds', async () => {
    const h = harness();
    await h.clock.advance(1); // the first query (a timer of 0 fires after 1 ms, as Node's)
    const once = h.d.compose(config(), config());
    expect(h.d.compose(once, once)).toEqual(once);
    // The file again (without the discovered backends): composed the same.
    expect(h.d.compose(config(), once)).toEqual(once);
    // The next answer replaces the set, rather than adding to it.
    h.set(answer('127.0.0.2'));
    await h.clock.advance(INTERVAL);
    expect(h.d.compose(once, once).services[0].backends.map((b) => b.address.host)).toEqual(['127.0.0.9', '127.0.0.2']);

    h.set(answer(...Array.from({ length: 10_000 }, (_, i) => `127.5.${Math.floor(i / 250)}.${(i % 250) + 1}`)));
    await h.clock.advance(INTERVAL);
    const big = h.d.compose(config(), config()).services[0].backends;
    expect(big.length).toBe(MAX_MEMBERS);
    expect(h.d.describe()[0].notes).toEqual([`10000 discovered backends, ${MAX_MEMBERS - 1} taken: a service holds at most ${MAX_MEMBERS} backends (with its 1 listed)`]);
    h.d.stop();
  });
});
