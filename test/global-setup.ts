import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { seedRelease, TINY, type FixtureRecord } from './fixtures/release.ts';
import { startTestbed, testbedInfo, type TestbedInfo } from './testbed/testbed.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    testbed: TestbedInfo;
    fixture: FixtureRecord;
  }
}

/** One bed for the whole run; tests use unique repository and bucket names instead of restarts. */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const bed = await startTestbed();
  try {
    const fixture = await seedRelease(bed, join(bed.root, 'fixture'), TINY);
    project.provide('testbed', testbedInfo(bed));
    project.provide('fixture', fixture);
  } catch (err) {
    await bed.stop();
    throw err;
  }
  return () => bed.stop();
}
