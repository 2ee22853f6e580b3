// `npm run demo`: the main job end to end on local stand-ins: start the loopback test bed, seed a
// synthetic Cartesia release, make a signing key, `bundle` the release, its images and the
// customer's artifacts into one signed tarball, check it with openssl, sha256sum and skopeo alone,
// then `verify`, `inspect` and `install` it into the TLS registry and S3, as the disconnected
// side would.
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { seedRelease, TINY } from '../test/fixtures/release.ts';
import { envFileText, envLines } from '../test/testbed/env.ts';
import { run } from '../test/testbed/run.ts';
import { skopeoAuthFile } from '../test/testbed/skopeo-auth.ts';
import { startTestbed } from '../test/testbed/testbed.ts';

const argv = process.argv.slice(2);
const { values } = parseArgs({ args: argv[0] === '--' ? argv.slice(1) : argv, options: { keep: { type: 'boolean', default: false } } });
const cli = join(import.meta.dirname, '..', 'bin', 'run.js');
const say = (s: string) => console.log(`\n== ${s}`);

const bed = await startTestbed();
const stop = async () => {
  await bed.stop();
  process.exit(0);
};
process.on('SIGINT', () => void stop());
process.on('SIGTERM', () => void stop());

try {
  say('test bed: registries, S3 and GCS on 127.0.0.1, seeded with a synthetic Cartesia release');
  const fx = await seedRelease(bed, join(bed.root, 'fixture'), TINY);
  const env = envLines(bed, fx);
  process.stdout.write(envFileText(env).replace(/(PASSWORD|SECRET_ACCESS_KEY)='[^']*'/g, "$1='***'"));

  say(`release ${fx.release.version} (tag ${fx.release.releaseTag}) in gs://${fx.release.bucket}; archive sha256 ${fx.release.archiveSha256.slice(0, 16)}…`);
  const customer = fx.objects.filter((o) => o.bucket === `cartesia-${fx.customer}`);
  console.log(`customer bucket gs://cartesia-${fx.customer}: ${customer.length} objects, ${customer.reduce((n, o) => n + o.size, 0)} bytes`);

  say('images in the source registry, read back with skopeo (an independent client) as the customer key');
  const key = (await readFile(bed.saKeyFile, 'utf8')).trim();
  const auth = await skopeoAuthFile(bed.root, bed.source.host, '_json_key', key);
  for (const img of fx.images) {
    // Async on purpose: the token issuer runs in this process and must keep answering.
    const raw = await run('skopeo', ['inspect', '--raw', '--cert-dir', bed.certDir, '--authfile', auth, `docker://${bed.source.host}/${img.repository}:${img.tag}`]);
    const digest = `sha256:${createHash('sha256').update(raw).digest('hex')}`;
    const platforms = (JSON.parse(raw) as { manifests: { platform: { architecture: string } }[] }).manifests.map((m) => m.platform.architecture).join(',');
    console.log(`${img.repository.padEnd(56)} ${img.tag.padEnd(16)} ${digest.slice(0, 19)}… ${platforms} ${digest === img.digest ? 'OK' : 'MISMATCH'}`);
  }

  say('cartesia-airgap keys generate: the key the bundle is signed with');
  const keys = join(bed.root, 'keys');
  console.log((await run(process.execPath, [cli, 'keys', 'generate', '--out', keys])).trimEnd());

  say('cartesia-airgap bundle: release + images + customer artifacts → one signed tarball');
  const out = join(bed.root, `cartesia-${fx.release.version}.tar`);
  const summary = JSON.parse(
    await run(process.execPath, [cli, 'bundle', '--output', out, '--customer', fx.customer, '--signing-key', join(keys, 'bundle.key'), '--key-file', bed.saKeyFile, '--gcs-endpoint', bed.gcs.endpoint, '--source-registry', `${bed.source.host}/${bed.source.prefix}`, '--source-ca-file', bed.caFile, '--cache-dir', join(bed.root, 'cache'), '--json']),
  ) as { sha256: string; size: number; images: { name: string; tag: string; digest: string }[]; artifacts: { count: number; bytes: number } };
  console.log(`${out}: ${summary.size} bytes, sha256 ${summary.sha256}`);
  for (const i of summary.images) console.log(`  ${`${i.name}:${i.tag}`.padEnd(44)} ${i.digest}`);
  console.log(`  ${summary.artifacts.count} artifacts, ${summary.artifacts.bytes} bytes`);

  say('checked by hand with openssl, sha256sum and skopeo (no cartesia-airgap code involved)');
  const x = join(bed.root, 'extracted');
  await run('mkdir', ['-p', x]);
  await run('tar', ['-xf', out, '-C', x]);
  await writeFile(join(x, 'sig.der'), Buffer.from(await readFile(join(x, 'bundle.json.sig'), 'utf8'), 'base64'));
  console.log(`openssl: ${(await run('openssl', ['dgst', '-sha256', '-verify', join(keys, 'bundle.pub'), '-signature', join(x, 'sig.der'), join(x, 'bundle.json')])).trim()}`);
  const sums = await run('sha256sum', ['-c', 'SHA256SUMS'], { cwd: x });
  console.log(`sha256sum -c SHA256SUMS: ${sums.trim().split('\n').length} entries OK`);
  for (const img of fx.images) {
    const ref = `${img.repository.split('/').at(-1)}:${img.tag}`;
    const raw = await run('skopeo', ['inspect', '--raw', `oci:${join(x, 'images')}:${ref}`]);
    const digest = `sha256:${createHash('sha256').update(raw).digest('hex')}`;
    console.log(`skopeo oci:images:${ref.padEnd(42)} ${digest === img.digest ? 'same digest as the source registry' : 'MISMATCH'}`);
    if (digest !== img.digest) throw new Error(`${ref}: digest changed`);
  }

  say('the disconnected side — cartesia-airgap verify: the signature first, then every byte, read in place');
  console.log((await run(process.execPath, [cli, 'verify', out, '--public-key', join(keys, 'bundle.pub')])).trimEnd());

  say('cartesia-airgap inspect: what the bundle holds');
  console.log((await run(process.execPath, [cli, 'inspect', out])).trimEnd());

  say('cartesia-airgap install: images → the TLS registry, artifacts → S3, values.yaml for Helm');
  const installed = join(bed.root, 'install');
  await run('mkdir', ['-p', installed]);
  const secrets = { AWS_ACCESS_KEY_ID: bed.s3.accessKeyId, AWS_SECRET_ACCESS_KEY: bed.s3.secretAccessKey, CARTESIA_AIRGAP_REGISTRY_PASSWORD: bed.private.password };
  const result = JSON.parse(
    await run(process.execPath, [cli, 'install', out, '--public-key', join(keys, 'bundle.pub'), '--registry', `${bed.private.host}/cartesia`, '--registry-username', bed.private.username, '--registry-ca-file', bed.caFile, '--s3-endpoint', bed.s3.endpoint, '--storage-class', 'standard', '--values-out', join(installed, 'cartesia-values.yaml'), '--env-out', join(installed, '.env'), '--json'], { env: secrets }),
  ) as { images: { repository: string; tag: string; digest: string }[]; artifacts: { uploaded: number }; values: string; receipt: string };
  const auths = await skopeoAuthFile(bed.root, bed.private.host, bed.private.username, bed.private.password);
  for (const i of result.images) {
    const raw = await run('skopeo', ['inspect', '--raw', '--cert-dir', bed.certDir, '--authfile', auths, `docker://${i.repository}:${i.tag}`]);
    const seen = `sha256:${createHash('sha256').update(raw).digest('hex')}`;
    console.log(`${`${i.repository}:${i.tag}`.padEnd(68)} skopeo: ${seen === i.digest ? 'same digest' : 'MISMATCH'}`);
    if (seen !== i.digest) throw new Error(`${i.repository}: digest changed`);
  }
  console.log(`${result.artifacts.uploaded} artifacts uploaded to s3://cartesia-${fx.customer} at ${bed.s3.endpoint}`);
  console.log(`values for helm:  ${result.values}`);
  console.log(`receipt:          ${result.receipt}`);
  const again = JSON.parse(
    await run(process.execPath, [cli, 'install', out, '--public-key', join(keys, 'bundle.pub'), '--registry', `${bed.private.host}/cartesia`, '--registry-username', bed.private.username, '--registry-ca-file', bed.caFile, '--s3-endpoint', bed.s3.endpoint, '--storage-class', 'standard', '--values-out', join(installed, 'cartesia-values.yaml'), '--json'], { env: secrets }),
  ) as { images: { blobsUploaded: number }[]; artifacts: { uploaded: number; skipped: number } };
  console.log(`install again: ${again.images.reduce((n, i) => n + i.blobsUploaded, 0)} blobs pushed, ${again.artifacts.uploaded} objects uploaded (${again.artifacts.skipped} already in place)`);
  console.log(`\nnext: helm install cartesia ./cartesia -f ${result.values}`);
  if (!values.keep) console.log('(the bed and these files go away when the demo ends; `npm run demo -- --keep` keeps them until Ctrl-C)');
  if (values.keep) {
    console.log('\n--keep: the bed stays up; Ctrl-C stops it');
  } else {
    await stop();
  }
} catch (err) {
  console.error(`demo: ${(err as Error).message}`);
  await bed.stop();
  process.exit(1);
}
