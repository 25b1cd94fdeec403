/**
 * Smoke test of the benchmark harness's load generator, so CI catches a broken harness without
 * running the full benchmark: it builds bench/loadgen/loadgen.c and drives short rr, churn and bulk
 * runs straight at its own echo and sink backends on 127.6.10.x. No speed assertions.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildLoadgen, runClient, startBackend, holdIdle, type Backend } from '../../bench/lib/loadgen.ts';

describe('bench load generator', () => {
  let echo: Backend;
  let sink: Backend;

  beforeAll(async () => {
    buildLoadgen();
    echo = await startBackend('echo', '127.6.10.1:0');
    sink = await startBackend('sink', '127.6.10.2:0');
  });

  afterAll(async () => {
    await echo?.stop();
    await sink?.stop();
  });

  it('rr: requests complete, echoes match, latency percentiles are ordered', async () => {
    const r = await runClient({ mode: 'rr', targets: [echo.address], conns: 8, durationS: 1, warmupS: 0.2 });
    expect(r.ok).toBe(true);
    expect(r.errors).toBe(0);
    expect(r.corrupt).toBe(0);
    expect(r.count).toBeGreaterThan(0);
    expect(r.p50_us!).toBeGreaterThan(0);
    expect(r.p50_us!).toBeLessThanOrEqual(r.p99_us!);
    expect(r.p99_us!).toBeLessThanOrEqual(r.p999_us!);
  });

  it('churn: a connection per request, from a rotation of source addresses', async () => {
    const r = await runClient({ mode: 'churn', targets: [echo.address], conns: 4, durationS: 0.5, warmupS: 0.1,
      source: { base: '127.6.10.100', count: 4 } });
    expect(r.errors).toBe(0);
    expect(r.corrupt).toBe(0);
    expect(r.count).toBeGreaterThan(0);
  });

  it('bulk: the sink confirms every byte sent, unbroken', async () => {
    const r = await runClient({ mode: 'bulk', targets: [sink.address], conns: 2, durationS: 1 });
    expect(r.ok).toBe(true);
    expect(r.errors).toBe(0);
    expect(r.corrupt).toBe(0);
    expect(r.sent).toBeGreaterThan(0);
    expect(r.received).toBe(r.sent);
    expect(r.gbit_s!).toBeGreaterThan(0);
  });

  it('bulk: a peer that does not honour the stream is flagged, not hidden', async () => {
    // An echo server sends the pattern back instead of a byte-count report: the check must notice.
    const r = await runClient({ mode: 'bulk', targets: [echo.address], conns: 1, durationS: 0.3 });
    expect(r.ok).toBe(false);
    expect(r.corrupt).toBeGreaterThan(0);
  });

  it('idle: holds connections proven by an echo, then releases them', async () => {
    const hold = await holdIdle(echo.address, 200, 10);
    expect(hold.established).toMatchObject({ phase: 'established', established: 200, errors: 0, ok: true });
    const done = await hold.release();
    expect(done).toMatchObject({ phase: 'done', dropped: 0, ok: true });
  });

  it('backends account for what they handled', async () => {
    const stats = await sink.stop();
    expect(stats).toMatchObject({ phase: 'done', corrupt: 0 });
    expect(Number(stats.bytes)).toBeGreaterThan(0);
  });
});
