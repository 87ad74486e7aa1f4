import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const pkg = (name: string) => fileURLToPath(new URL(`./packages/${name}/src/index.ts`, import.meta.url));

export default defineConfig({
  resolve: {
    // Tests run against the TypeScript sources; processes started by the
    // end-to-end tests run the built JavaScript (npm test builds first).
    alias: {
      '@kubetunnel/shared': pkg('shared'),
      '@kubetunnel/server': pkg('server'),
      '@kubetunnel/agent': pkg('agent'),
      '@kubetunnel/standin-apiserver': pkg('standin-apiserver'),
    },
  },
  test: {
    include: ['packages/*/test/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // In CI a JSON report too, from which .ci/run prints the closing count.
    reporters: process.env.CI ? ['default', ['json', { outputFile: '.cache/vitest.json' }]] : ['default'],
  },
});
