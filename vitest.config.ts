import { defineConfig } from 'vitest/config';

// Tests use real sockets, real servers and network namespaces: generous timeouts,
// and files run in separate forked processes so one file's servers never leak into another's.
//
// Two projects: everything with the native relay (the default data path), and the proxy's own
// tests once more on the JavaScript path (FULCRUM_RELAY=off: Node's TCP handles), which runs
// where the relay is not built and for accept_proxy services.
export default defineConfig({
  test: {
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default'],
    projects: [
      { extends: true, test: { name: 'relay', include: ['test/**/*.test.ts'] } },
      {
        extends: true,
        test: {
          name: 'js-path',
          include: ['test/proxy/**/*.test.ts'],
          exclude: ['test/proxy/relay.test.ts'],
          env: { FULCRUM_RELAY: 'off' },
        },
      },
    ],
  },
});
