// `npm run demo`: the main job end to end on local stand-ins. Today (foundation + OCI engine) that
// is: start the loopback test bed, seed a synthetic Cartesia release, show what the connected side
// will carry, carry every image across with `copy` (source registry → one OCI layout → the private
// registry, digests checked by skopeo), and make a signing key. `bundle` and `install` join as
// they land.
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
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

  say('cartesia-airgap copy: every image from the source registry into one OCI layout, then into the private registry');
  const layout = join(bed.root, 'demo-layout');
  const auths = await skopeoAuthFile(bed.root, bed.private.host, bed.private.username, bed.private.password);
  for (const img of fx.images) {
    const name = `${img.repository.split('/').at(-1)}:${img.tag}`;
    const t0 = performance.now();
    const pulled = JSON.parse(await run(process.execPath, [cli, 'copy', `docker://${bed.source.host}/${img.repository}:${img.tag}`, `oci:${layout}:${name}`, '--src-sa-key', bed.saKeyFile, '--src-ca-file', bed.caFile, '--json'])) as { digest: string; blobs: { uploaded: number; existed: number } };
    const pushed = JSON.parse(await run(process.execPath, [cli, 'copy', `oci:${layout}:${name}`, `docker://${bed.private.host}/cartesia/${name}`, '--dest-creds', `${bed.private.username}:${bed.private.password}`, '--dest-ca-file', bed.caFile, '--json'])) as { digest: string; blobs: { uploaded: number } };
    const raw = await run('skopeo', ['inspect', '--raw', '--cert-dir', bed.certDir, '--authfile', auths, `docker://${bed.private.host}/cartesia/${name}`]);
    const seen = `sha256:${createHash('sha256').update(raw).digest('hex')}`;
    const ok = pulled.digest === img.digest && pushed.digest === img.digest && seen === img.digest;
    console.log(`${name.padEnd(44)} pulled ${pulled.blobs.uploaded} blobs (${pulled.blobs.existed} shared, already in the layout), pushed ${pushed.blobs.uploaded}; skopeo reads ${seen.slice(0, 19)}… ${ok ? 'OK' : 'MISMATCH'} (${Math.round(performance.now() - t0)} ms)`);
    if (!ok) throw new Error(`${name}: digest changed on the way`);
  }

  say('cartesia-airgap keys generate: the signing key a bundle will be signed with');
  console.log((await run(process.execPath, [cli, 'keys', 'generate', '--out', join(bed.root, 'keys')])).trimEnd());
  console.log('\n(bundle, verify, inspect and install arrive with the next issues; the bed above is what they run against)');
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
