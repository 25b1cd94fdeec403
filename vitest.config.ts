import { defineConfig } from 'vitest/config';
import { RELAY_SANITIZED_NODE, sanitizerRuntime } from './build/relay.ts';

// Tests use real sockets, real servers and network namespaces: generous timeouts,
// and files run in separate forked processes so one file's servers never leak into another's.
//
// Three projects: everything with the native relay (the default data path); the proxy's own tests
// once more on the JavaScript path (FULCRUM_RELAY=off: Node's TCP handles), which runs where the
// relay is not built and for accept_proxy services; and the proxy's tests a third time against the
// relay built with AddressSanitizer and UndefinedBehaviorSanitizer (`npm test` builds it:
// build/relay.ts --sanitize), their runtime preloaded into the test processes — any memory error
// or undefined behaviour in the relay aborts the run.
const runtime = sanitizerRuntime();
if (runtime === undefined) throw new Error('vitest.config.ts: no libasan.so from the C compiler (apt-get install gcc): the relay-sanitized tests need it');

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
          exclude: ['test/proxy/relay.test.ts', 'test/proxy/sanitized.test.ts'],
          env: { FULCRUM_RELAY: 'off' },
        },
      },
      {
        extends: true,
        test: {
          name: 'relay-sanitized',
          include: ['test/proxy/**/*.test.ts'],
          // relay.test.ts builds relays of its own (other versions, other ABIs) to see them refused.
          exclude: ['test/proxy/relay.test.ts'],
          env: {
            FULCRUM_RELAY: RELAY_SANITIZED_NODE,
            LD_PRELOAD: runtime,
            // Node's own allocations are not instrumented; its exit leaks are not the relay's.
            ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1:halt_on_error=1',
            UBSAN_OPTIONS: 'halt_on_error=1:print_stacktrace=1',
          },
        },
      },
    ],
  },
});
