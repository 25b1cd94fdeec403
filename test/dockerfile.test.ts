/**
 * The image's runtime stage runs fulcrum as an unprivileged user, and only the VIP failover's two
 * commands hold capabilities (read from the Dockerfile: the image itself is built in CI).
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

  it('gives capabilities to ip and arping only', () => {
    const setcaps = runtime.join('\n').match(/setcap [^&]+/g) ?? [];
    expect(setcaps.map((c) => c.trim())).toEqual([
      'setcap cap_net_admin+ep "$(readlink -f "$(command -v ip)")"',
      'setcap cap_net_raw+ep "$(readlink -f "$(command -v arping)")"',
    ]);
  });
});
