import { defineConfig } from 'vitest/config';

// Workspace packages resolve to their TypeScript sources through the custom
// `@tinyserve/source` export condition, so tests never need a prior build.
const conditions = ['@tinyserve/source', 'module', 'node', 'import', 'default'];

export default defineConfig({
  resolve: { conditions },
  ssr: { resolve: { conditions, externalConditions: ['node', 'import', 'default'] } },
  test: {
    include: ['packages/*/src/**/*.test.ts', 'apps/*/src/**/*.test.ts', 'tools/**/*.test.ts'],
    environment: 'node',
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
  },
});
