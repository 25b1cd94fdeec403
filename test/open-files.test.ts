/**
 * src/open-files.ts: the soft open-files limit raised to the hard one with prlimit on our own pid,
 * and the capacity said in the log. Each case runs in a child Node whose limits are set with
 * prlimit first (Node raises the soft limit itself at start, so the child lowers it again).
 */
import { execFile } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { sessionCapacity } from '../src/open-files.ts';

/** Runs raiseOpenFilesLimit in a child after setting its own limit to soft:hard; returns the child's log lines and result. */
function runChild(soft: number, hard: number, prlimit = 'prlimit'): Promise<{ logs: any[]; result: any }> {
  const script = `
    import { execFileSync } from 'node:child_process';
    import { raiseOpenFilesLimit, readOpenFilesLimit } from ${JSON.stringify(new URL('../src/open-files.ts', import.meta.url).pathname)};
    execFileSync('prlimit', ['--pid', String(process.pid), '--nofile=${soft}:${hard}']);
    const before = readOpenFilesLimit();
    const logs = [];
    const log = { info: (o, m) => logs.push({ level: 'info', ...o, msg: m }), warn: (o, m) => logs.push({ level: 'warn', ...o, msg: m }) };
    const result = raiseOpenFilesLimit(log, ${JSON.stringify(prlimit)});
    console.log(JSON.stringify({ before, logs, result, now: readOpenFilesLimit() }));
  `;
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--input-type=module', '-e', script], { timeout: 20_000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`${err.message}\n${stderr}`));
      const r = JSON.parse(stdout.trim());
      expect(r.before).toEqual({ soft, hard });
      resolve({ logs: r.logs, result: { ...r.result, now: r.now } });
    });
  });
}

describe('raiseOpenFilesLimit', () => {
  it('raises the soft limit to the hard one and says how many sessions it allows', async () => {
    const { logs, result } = await runChild(512, 2048);
    expect(result).toEqual({ soft: 2048, hard: 2048, now: { soft: 2048, hard: 2048 } });
    expect(logs).toEqual([{
      level: 'info', soft: 2048, hard: 2048, was: 512, sessions: sessionCapacity(2048),
      msg: `open-files limit 2048: about ${sessionCapacity(2048)} concurrent sessions (two descriptors each, 128 kept for the process)`,
    }]);
    expect(sessionCapacity(2048)).toBe(960);
  });

  it('without prlimit it says so and goes on with the limit it has', async () => {
    const { logs, result } = await runChild(512, 2048, '/nonexistent/prlimit');
    expect(result.now).toEqual({ soft: 512, hard: 2048 });
    expect(logs[0]).toMatchObject({ level: 'warn', why: 'ENOENT', msg: expect.stringContaining('cannot raise the open-files limit') });
    expect(logs[1]).toMatchObject({ level: 'info', soft: 512, sessions: 192 });
  });
});
