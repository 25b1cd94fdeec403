/** Shared by the database switchover tests (redis, postgres, mysql). */

/**
 * Polls new connections (through `whoAnswers`, which returns the port of the server that
 * answered) until ten in a row reach `port`; resolves with the time (epoch ms) the first of those
 * ten was made, so a test can measure how long the switchover took to reach every new client.
 */
export async function waitUntilOnly(whoAnswers: () => Promise<number>, port: number, ms: number): Promise<number> {
  const start = Date.now();
  let streak = 0;
  let streakStart = 0;
  while (streak < 10) {
    if (Date.now() - start > ms) throw new Error(`connections did not all reach ${port} within ${ms}ms`);
    const at = Date.now();
    if ((await whoAnswers().catch(() => -1)) === port) {
      if (streak++ === 0) streakStart = at;
    } else {
      streak = 0;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  return streakStart;
}
