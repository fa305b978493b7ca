import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Integration tests start real processes and bind ports: keep files from fighting over the 2 cores.
    fileParallelism: false,
    reporters: ['default'],
  },
});
