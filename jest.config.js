/** Jest 30 + ts-jest ESM preset; run through `npm test` (node --experimental-vm-modules). */
/* global process */
export default {
  preset: 'ts-jest/presets/default-esm',
  testEnvironment: 'node',
  extensionsToTreatAsEsm: ['.ts'],
  moduleNameMapper: {
    '^nestjs-durable-workflow$': '<rootDir>/lib/index.ts',
    '^nestjs-durable-workflow/testing$': '<rootDir>/lib/testing/index.ts',
    '^(\\.{1,2}/.*)\\.js$': '$1',
  },
  transform: {
    '^.+\\.ts$': ['ts-jest', { useESM: true, tsconfig: 'tsconfig.json' }],
  },
  testMatch: ['<rootDir>/test/**/*.spec.ts'],
  // The cluster specs need a three-node Galera cluster (test/cluster): `npm run test:cluster`.
  testPathIgnorePatterns: process.env.WF_CLUSTER ? ['/node_modules/'] : ['/node_modules/', '<rootDir>/test/cluster/'],
  testTimeout: 60_000,
};
