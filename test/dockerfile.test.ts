/**
 * The image's runtime stage runs fulcrum as an unprivileged user and gives no file capabilities
 * (read from the Dockerfile; no Docker engine runs here). A file capability on `ip` is useless:
 * iproute2 drops it for a non-root user (test/ops/capabilities.test.ts shows that on this
 * machine's ip), so ha/bgp run as the container's root with --cap-add.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

const text = readFileSync(new URL('../Dockerfile', import.meta.url), 'utf8');
/** The runtime stage: from the last FROM to the end, one instruction per line (continuations joined). */
const runtime = text.slice(text.lastIndexOf('\nFROM ')).replace(/\\\n\s*/g, ' ').split('\n').filter((l) => /^[A-Z]/.test(l));

describe('Dockerfile', () => {
  it('runs the entrypoint as a non-root user', () => {
    const user = runtime.findLast((l) => l.startsWith('USER '));
    expect(user).toBeDefined();
    expect(user!.split(/\s+/)[1]).not.toMatch(/^(root|0)(:|$)/);
    expect(runtime.indexOf(user!)).toBeLessThan(runtime.findIndex((l) => l.startsWith('ENTRYPOINT ')));
  });

  it('sets no file capability (one on ip would be dropped by ip itself)', () => {
    expect(runtime.join('\n')).not.toMatch(/setcap|libcap2-bin/);
    expect(text).toMatch(/--user root --cap-add NET_ADMIN\s+(#\s*)?--cap-add NET_RAW/);
  });
});
