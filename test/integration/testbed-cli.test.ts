import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fetchRaw } from './helpers.ts';
import { scratchDir } from '../unit/helpers.ts';

const REQUIRED = [
  'AIRGAP_GCS_ENDPOINT', 'AIRGAP_SOURCE_REGISTRY', 'AIRGAP_SA_KEY', 'AIRGAP_PRIVATE_REGISTRY', 'AIRGAP_PRIVATE_REGISTRY_USER',
  'AIRGAP_PRIVATE_REGISTRY_PASSWORD', 'AIRGAP_PLAIN_REGISTRY', 'AIRGAP_CA_FILE', 'AIRGAP_S3_ENDPOINT', 'AWS_ACCESS_KEY_ID',
  'AWS_SECRET_ACCESS_KEY', 'AIRGAP_CUSTOMER', 'AIRGAP_RELEASE_VERSION', 'AIRGAP_RELEASE_TAG',
];

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('npm run testbed -- --env-file FILE', () => {
  it('is up and seeded within seconds, writes a sourceable env file, and leaves no child after SIGTERM', async () => {
    const envFile = join(await scratchDir('airgap-envfile-'), 'testbed.env');
    const started = Date.now();
    const npm = spawn('npm', ['run', '--silent', 'testbed', '--', '--env-file', envFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    npm.stdout.on('data', (d) => (output += d));
    npm.stderr.on('data', (d) => (output += d));
    const exited = new Promise<number | null>((resolve) => npm.once('exit', (code) => resolve(code)));
    while (!existsSync(envFile)) {
      if (npm.exitCode !== null) throw new Error(`testbed exited early:\n${output}`);
      if (Date.now() - started > 60_000) throw new Error(`no env file after 60 s:\n${output}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const upSeconds = (Date.now() - started) / 1000;
    console.log(`testbed up and seeded in ${upSeconds.toFixed(1)} s`);
    expect(upSeconds).toBeLessThan(30);

    // Source it with a real shell: the file must be valid sh.
    const { execFileSync } = await import('node:child_process');
    const env = JSON.parse(execFileSync('sh', ['-c', `. "${envFile}" && node -e 'console.log(JSON.stringify(process.env))'`], { env: { PATH: process.env.PATH } }).toString()) as Record<string, string>;
    for (const k of REQUIRED) expect(env[k], k).toBeTruthy();
    expect(env.AIRGAP_SOURCE_REGISTRY).toMatch(/^127\.0\.0\.1:\d+\/cartesia-external\/self-serve$/);
    expect(JSON.parse(await readFile(env.AIRGAP_SA_KEY!, 'utf8'))).toMatchObject({ type: 'service_account' });
    expect((await fetchRaw(`http://${env.AIRGAP_PLAIN_REGISTRY}/v2/`)).status).toBe(200);
    expect((await fetchRaw(`https://${env.AIRGAP_PRIVATE_REGISTRY}/v2/`, { ca: await readFile(env.AIRGAP_CA_FILE!) })).status).toBe(401);

    const pids = env.AIRGAP_TESTBED_PIDS!.split(' ').map(Number);
    expect(pids.length).toBe(6); // the bed itself + 3 registries + moto + GCS
    expect(pids.every(alive)).toBe(true);

    npm.kill('SIGTERM');
    await exited;
    const deadline = Date.now() + 10_000;
    while (pids.some(alive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(pids.filter(alive)).toEqual([]);
  });
});
