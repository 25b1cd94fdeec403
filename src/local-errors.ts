/**
 * Errors that say this process is out of files, memory or local ports: fulcrum's problem, never a
 * backend's. The data path (src/proxy/core.ts) counts no connect failure for them and tries no
 * other backend; the health probes (src/health/probes/probe.ts) count no probe failure for them
 * and the monitor skips the result: running out of descriptors must not mark healthy backends
 * down (it did: 2,000 idle clients at 1,024 files took all 6 backends down in 3 s).
 * Apart from both so the data plane and the probe thread load it without the other's code.
 */
// ENOSPC: epoll's max_user_watches reached (the relay's registration of a session's socket).
export const LOCAL_ERRORS: ReadonlySet<string> = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM', 'EADDRNOTAVAIL', 'ENOSPC']);

/** The error's code when it is one of LOCAL_ERRORS (on the error or its cause), else undefined. */
export function localErrorCode(err: unknown): string | undefined {
  for (let e = err as { code?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 3; e = e.cause as typeof e, depth++) {
    if (typeof e.code === 'string' && LOCAL_ERRORS.has(e.code)) return e.code;
  }
  return undefined;
}
