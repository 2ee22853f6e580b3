import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, inject, it } from 'vitest';
import { run } from '../testbed/run.ts';
import { runCli, type CliResult } from './cli.ts';

const bed = inject('testbed');
const fixture = inject('fixture');
const work = join(bed.root, `secrets-test-${randomBytes(3).toString('hex')}`);
const passphrase = `PASSPHRASE-${randomBytes(8).toString('hex')}`;
const outputs: { what: string; text: string }[] = [];
let secrets: { name: string; value: string }[] = [];

const keep = (what: string, r: CliResult) => outputs.push({ what: `${what} stdout`, text: r.stdout }, { what: `${what} stderr`, text: r.stderr });

/** Every file a run left behind (bundle.json from the bundle, values, .env, receipts, keys' public half). */
async function filesUnder(dir: string): Promise<{ what: string; text: string }[]> {
  const out: { what: string; text: string }[] = [];
  for (const name of await readdir(dir, { recursive: true })) {
    if (/\.(json|yaml|env|pub)$|^\.env$|\/\.env$/.test(name)) out.push({ what: name, text: await readFile(join(dir, name), 'utf8').catch(() => '') });
  }
  return out;
}

beforeAll(async () => {
  await mkdir(work, { recursive: true });
  const saKey = JSON.parse(await readFile(bed.saKeyFile, 'utf8')) as { private_key: string; private_key_id: string };
  secrets = [
    // A distinctive line of the service-account private key, its id, the whole key file.
    { name: 'service-account private key', value: saKey.private_key.split('\n')[5]! },
    { name: 'service-account key id', value: saKey.private_key_id },
    { name: 'registry password', value: bed.private.password },
    { name: 'S3 secret key', value: bed.s3.secretAccessKey },
    { name: 'signing-key passphrase', value: passphrase },
    { name: 'access token', value: bed.accessToken },
  ];
});

describe('secrets never reach output, receipts, bundle.json, values or errors', () => {
  it('over a whole flow with an encrypted key, and over failures with wrong secrets', async () => {
    const keys = join(work, 'keys');
    const env = { CARTESIA_AIRGAP_KEY_PASSPHRASE: passphrase, AWS_ACCESS_KEY_ID: bed.s3.accessKeyId, AWS_SECRET_ACCESS_KEY: bed.s3.secretAccessKey, CARTESIA_AIRGAP_REGISTRY_PASSWORD: bed.private.password };
    const gen = await runCli(['keys', 'generate', '--out', keys], { env });
    expect(gen.code, gen.stderr).toBe(0);
    keep('keys generate', gen);
    const out = join(work, 'b.tar');
    const source = ['--key-file', bed.saKeyFile, '--gcs-endpoint', bed.gcs.endpoint, '--source-registry', `${bed.source.host}/${bed.source.prefix}`, '--source-ca-file', bed.caFile];
    const bundle = await runCli(['bundle', '--output', out, ...source, '--customer', fixture.customer, '--signing-key', join(keys, 'bundle.key'), '--cache-dir', join(work, 'cache')], { env });
    expect(bundle.code, bundle.stderr).toBe(0);
    keep('bundle', bundle);
    outputs.push({ what: 'bundle.json', text: await run('tar', ['-xOf', out, 'bundle.json']) });

    const installed = join(work, 'installed');
    await mkdir(installed);
    const install = ['install', out, '--public-key', join(keys, 'bundle.pub'), '--registry', `${bed.private.host}/secrets/cartesia`, '--registry-username', bed.private.username, '--registry-ca-file', bed.caFile, '--s3-endpoint', bed.s3.endpoint, '--s3-bucket', `secrets-${randomBytes(3).toString('hex')}`, '--values-out', join(installed, 'values.yaml'), '--env-out', join(installed, '.env')];
    const ok = await runCli(install, { env });
    expect(ok.code, ok.stderr).toBe(0);
    keep('install', ok);
    keep('verify', await runCli(['verify', out, '--public-key', join(keys, 'bundle.pub'), '--json']));
    keep('inspect', await runCli(['inspect', out, '--json']));

    // Failures (the bed's moto accepts any S3 credentials, so no S3 case here): each must fail, and its message must not carry the secret it was given.
    const failures: [string, string[], NodeJS.ProcessEnv][] = [
      ['wrong registry password', install, { ...env, CARTESIA_AIRGAP_REGISTRY_PASSWORD: `${bed.private.password}-wrong` }],
      ['wrong passphrase', ['bundle', '--output', join(work, 'x.tar'), ...source, '--signing-key', join(keys, 'bundle.key'), '--cache-dir', join(work, 'cache')], { ...env, CARTESIA_AIRGAP_KEY_PASSPHRASE: `${passphrase}-wrong` }],
      ['registry login given as flag value', ['copy', `docker://${bed.private.host}/secrets/cartesia/cartesia-api:${fixture.release.releaseTag}`, `oci:${join(work, 'l')}`, '--src-creds', `${bed.private.username}:${bed.private.password}-wrong`, '--src-ca-file', bed.caFile], env],
    ];
    for (const [what, args, e] of failures) {
      const r = await runCli(args, { env: e });
      expect(r.code, what).not.toBe(0);
      keep(what, r);
    }
    outputs.push(...(await filesUnder(installed)), ...(await filesUnder(keys)).filter((f) => f.what.endsWith('.pub')));

    const leaks = outputs.flatMap((o) => secrets.filter((s) => o.text.includes(s.value)).map((s) => `${s.name} in ${o.what}`));
    expect(leaks).toEqual([]);
    // The scan saw real content, including the failures' one-line errors.
    expect(outputs.filter((o) => o.text.includes('Error: ')).length).toBeGreaterThanOrEqual(2);
    expect(outputs.some((o) => o.what === 'bundle.json' && o.text.includes('"formatVersion"'))).toBe(true);
  });
});
