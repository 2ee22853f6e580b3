import { defineConfig } from 'vitest/config';

const shared = {
  // @oclif/test and our CLI write to stdout; let it through so assertions can see it.
  disableConsoleIntercept: true,
  testTimeout: 120_000,
  hookTimeout: 180_000,
  pool: 'forks' as const,
};

export default defineConfig({
  test: {
    reporters: ['default', './test/summary-reporter.ts'],
    projects: [
      // Unit tests need no servers: `npm exec -- vitest run --project unit` skips the test bed.
      { test: { ...shared, name: 'unit', include: ['test/unit/**/*.test.ts'] } },
      // Bundles made by tests leave the 124 MiB installer executable out unless a test asks for it
      // (test/integration/installer.test.ts builds it and passes CARTESIA_AIRGAP_NO_INSTALLER=0).
      {
        test: { ...shared, name: 'integration', include: ['test/integration/**/*.test.ts'], globalSetup: ['test/global-setup.ts'], env: { CARTESIA_AIRGAP_NO_INSTALLER: '1' } },
      },
    ],
  },
});
