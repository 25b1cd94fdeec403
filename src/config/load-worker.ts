/**
 * The thread loadConfigOffThread starts for one reload: reads and validates the file, posts the
 * result (OffThreadResult) and ends. Nothing else runs here, so a slow parse holds up no one.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ConfigInvalidError, ConfigUnreadableError } from '../errors.ts';
import { loadConfig, type OffThreadResult } from './load.ts';

let result: OffThreadResult;
try {
  result = { ok: true, config: loadConfig((workerData as { file: string }).file) };
} catch (err) {
  const e = err as Error & { code?: string };
  result = {
    ok: false,
    code: e.code ?? 'FULCRUM_ERR_CONFIG_UNREADABLE',
    message: e.message,
    ...(err instanceof ConfigUnreadableError ? { why: err.why } : {}),
    ...(err instanceof ConfigInvalidError ? { problems: err.problems } : {}),
  };
}
parentPort!.postMessage(result);
