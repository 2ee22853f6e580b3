// `npm run testbed -- --env-file FILE [--size 1GiB]`: starts the test bed on loopback, seeds the
// synthetic release (the tests' tiny one, or about SIZE bytes shaped like the benchmark's), writes a shell-sourceable env file, and stays up until SIGTERM or Ctrl-C.
import { writeFile, rename } from 'node:fs/promises';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { parseSplitSize } from '../../src/bundle/split-size.ts';
import { seedRelease, sizedFixture, TINY } from '../fixtures/release.ts';
import { envLines, envFileText } from './env.ts';
import { startTestbed } from './testbed.ts';

// The npm script passes a leading `--`: without it Node itself would claim `--env-file` (a Node
// option since v20) even after the script name.
const argv = process.argv.slice(2);
const { values } = parseArgs({
  args: argv[0] === '--' ? argv.slice(1) : argv,
  options: {
    'env-file': { type: 'string' },
    'keep-root': { type: 'boolean', default: false },
    size: { type: 'string' },
  },
});
const envFile = values['env-file'] ? resolve(values['env-file']) : undefined;


const t0 = performance.now();
const bed = await startTestbed();
let stopping = false;
const stop = async (signal: string) => {
  if (stopping) return;
  stopping = true;
  console.error(`testbed: ${signal}, stopping ${bed.pids.length} servers`);
  await bed.stop();
  process.exit(0);
};
process.on('SIGTERM', () => void stop('SIGTERM'));
process.on('SIGINT', () => void stop('SIGINT'));
process.on('SIGHUP', () => void stop('SIGHUP'));
// If whoever started us (npm, a shell) dies without passing the signal on, stop anyway.
const parent = process.ppid;
setInterval(() => {
  if (process.ppid !== parent) void stop('parent exited');
}, 500).unref();

try {
  const upAt = performance.now();
  const fixture = await seedRelease(bed, `${bed.root}/fixture`, values.size ? sizedFixture(parseSplitSize(values.size, '--size')) : TINY);
  const env = envLines(bed, fixture);
  const text = envFileText(env);
  if (envFile) {
    // Written whole, then renamed: whoever polls for the file never reads half of it.
    await writeFile(`${envFile}.partial`, text, { mode: 0o600 });
    await rename(`${envFile}.partial`, envFile);
  }
  console.log(`testbed: servers up in ${((upAt - t0) / 1000).toFixed(2)} s, seeded in ${((performance.now() - upAt) / 1000).toFixed(2)} s`);
  console.log(`  source registry   https://${env.AIRGAP_SOURCE_REGISTRY}  (token auth; _json_key with ${env.AIRGAP_SA_KEY})`);
  console.log(`  private registry  https://${env.AIRGAP_PRIVATE_REGISTRY}  (basic auth ${env.AIRGAP_PRIVATE_REGISTRY_USER}; CA ${env.AIRGAP_CA_FILE})`);
  console.log(`  plain registry    http://${env.AIRGAP_PLAIN_REGISTRY}`);
  console.log(`  GCS               ${env.AIRGAP_GCS_ENDPOINT}  (gs://${fixture.release.bucket}, gs://cartesia-${fixture.customer})`);
  console.log(`  S3                ${env.AIRGAP_S3_ENDPOINT}`);
  console.log(`  release           ${fixture.release.version} (${fixture.release.releaseTag}), ${fixture.images.length} images, ${fixture.objects.length} objects`);
  console.log(envFile ? `  env file          ${envFile}  (source it in another shell)` : '  (pass --env-file FILE to get these as shell variables)');
  console.log('testbed: up; Ctrl-C or SIGTERM stops every server');
} catch (err) {
  console.error(`testbed: ${(err as Error).message}`);
  await bed.stop();
  process.exit(1);
}
