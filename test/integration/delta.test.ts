import { randomBytes } from 'node:crypto';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { Storage } from '@google-cloud/storage';
import { beforeAll, describe, expect, inject, it } from 'vitest';
import type { BundleManifest } from '../../src/bundle/manifest.ts';
import { seedNextRelease, type NextRelease } from '../fixtures/next-release.ts';
import { run } from '../testbed/run.ts';
import { runCli } from './cli.ts';
import { authFile, sha256, skopeo } from './helpers.ts';
import { installArgs, installEnv, objectsIn, repoExists, s3 } from './install-target.ts';

const bed = inject('testbed');
const fixture = inject('fixture');
const id = randomBytes(3).toString('hex');
const work = join(bed.root, `delta-test-${id}`);
const keys = join(work, 'keys');
const pub = join(keys, 'bundle.pub');
const customer = `delta${id}`;
const bucket = `cartesia-${customer}`;
/** The one image whose one layer (linux/amd64's own layer) changes in the next release. */
const CHANGED = 'cartesia-sonic-rosy-dragon';
const NEW_LORA = 'loras/sonic-3/voice-new.safetensors';
const files = { base: join(work, 'base.tar'), full: join(work, 'full.tar'), delta: join(work, 'delta.tar') };
const sourceArgs = ['--key-file', bed.saKeyFile, '--gcs-endpoint', bed.gcs.endpoint, '--source-registry', `${bed.source.host}/${bed.source.prefix}`, '--source-ca-file', bed.caFile];
const name = (repo: string) => repo.split('/').at(-1)!;
const exists = (p: string) => stat(p).then(() => true, () => false);
const bundleJson = async (tar: string) => JSON.parse(await run('tar', ['-xOf', tar, 'bundle.json'])) as BundleManifest;

let next: NextRelease;
let newLora: { size: number; sha256: string };
let deltaSummary: { base: { manifestSha256: string; saved: { total: number } } };

async function bundle(out: string, extra: string[]) {
  return runCli(['bundle', '--output', out, ...sourceArgs, '--customer', customer, '--signing-key', join(keys, 'bundle.key'), '--cache-dir', join(work, 'cache'), ...extra]);
}

beforeAll(async () => {
  await mkdir(work, { recursive: true });
  expect((await runCli(['keys', 'generate', '--out', keys])).code).toBe(0);
  expect((await runCli(['keys', 'generate', '--out', join(work, 'other-keys')])).code).toBe(0);
  // A customer bucket of our own, holding what the seeded one holds.
  const storage = new Storage({ apiEndpoint: bed.gcs.endpoint, projectId: 'cartesia-airgap-testbed' });
  for (const o of fixture.objects.filter((x) => x.bucket === `cartesia-${fixture.customer}`)) {
    const [bytes] = await storage.bucket(o.bucket).file(o.key).download();
    await storage.bucket(bucket).file(o.key).save(bytes, { resumable: false });
  }
  const base = await bundle(files.base, []);
  expect(base.code, base.stderr).toBe(0);

  // The next release: a new version and tag, one layer of one image changed, and one more LoRA.
  next = await seedNextRelease(bed, join(work, 'next'), {
    bucket: `release-delta-${id}`,
    version: '2025.12.02-1',
    releaseTag: 'sonic-20251202',
    created: new Date('2025-12-02T00:00:00Z'),
    layerSeed: (s) => (s === `${CHANGED}-amd64` ? `${s}-v2` : s),
  });
  const lora = randomBytes(40 * 1024 + 7);
  newLora = { size: lora.length, sha256: sha256(lora) };
  await storage.bucket(bucket).file(NEW_LORA).save(lora, { resumable: false });

  const full = await bundle(files.full, ['--recipe', next.recipeFile]);
  expect(full.code, full.stderr).toBe(0);
  const delta = await bundle(files.delta, ['--recipe', next.recipeFile, '--base', files.base, '--json']);
  expect(delta.code, delta.stderr).toBe(0);
  deltaSummary = JSON.parse(delta.stdout) as typeof deltaSummary;
});

/** The seeded release's record of an image, and the next release's. */
const records = (image: string) => ({
  old: fixture.images.find((i) => name(i.repository) === image)!,
  now: next.images.find((i) => name(i.repository) === image)!,
});

describe('delta bundle: only what the base lacks', () => {
  it('the synthetic next release changes exactly one image (one layer, its config, two manifests)', () => {
    for (const img of fixture.images) {
      const { old, now } = records(name(img.repository));
      if (name(img.repository) === CHANGED) expect(now.digest).not.toBe(old.digest);
      else expect(now.digest, img.repository).toBe(old.digest);
    }
    const { old, now } = records(CHANGED);
    expect(now.blobs.filter((b) => !old.blobs.includes(b))).toHaveLength(2); // the layer and the config naming it
    expect(now.platforms.filter((p) => !old.platforms.some((o) => o.digest === p.digest)).map((p) => p.architecture)).toEqual(['amd64']);
  });

  it('holds the new LoRA, the changed layer and config, the changed manifest and index, and the metadata: nothing else (tar -tf)', async () => {
    const { old, now } = records(CHANGED);
    const amd64 = now.platforms.find((p) => p.architecture === 'amd64')!.digest;
    const newBlobs = [now.digest, amd64, ...now.blobs.filter((b) => !old.blobs.includes(b))].map((d) => `images/blobs/sha256/${d.slice('sha256:'.length)}`).sort();
    const expected = [
      'bundle.json',
      'bundle.json.sig',
      'SHA256SUMS',
      ...['release/SHA256SUMS', 'release/VERSION', `release/${next.archiveName}`].sort(),
      `artifacts/${bucket}/${NEW_LORA}`,
      'images/oci-layout',
      'images/index.json',
      ...newBlobs,
    ];
    expect((await run('tar', ['-tf', files.delta])).trimEnd().split('\n')).toEqual(expected);
    // …and the same images/index.json as the full bundle: every image is still named.
    expect(await run('tar', ['-xOf', files.delta, 'images/index.json'])).toBe(await run('tar', ['-xOf', files.full, 'images/index.json']));
  });

  it('bundle.json records the base (bundle.json sha256, signer) and everything left out, which is everything else of the full bundle', async () => {
    const [base, full, delta] = await Promise.all([bundleJson(files.base), bundleJson(files.full), bundleJson(files.delta)]);
    const baseJson = await run('tar', ['-xOf', files.base, 'bundle.json']);
    expect(delta.base!.manifestSha256).toBe(sha256(baseJson));
    expect(delta.base!.signer.fingerprint).toBe(base.signer!.fingerprint);
    expect(delta.base!.release).toEqual({ version: fixture.release.version, tag: fixture.release.releaseTag });
    expect(delta.images).toEqual(full.images);
    // Every image entry of the full bundle is carried or relied on, never both.
    const carried = new Set(delta.entries.map((e) => e.path));
    const relied = new Set(delta.base!.relies.images.flatMap((i) => [...i.manifests, ...i.blobs]).map((d) => `images/blobs/sha256/${d.digest.slice(7)}`));
    for (const e of full.entries.filter((x) => x.path.startsWith('images/blobs/'))) expect(carried.has(e.path) !== relied.has(e.path), e.path).toBe(true);
    expect(delta.base!.relies.artifacts.map((a) => a.key).sort()).toEqual(full.artifacts.filter((a) => a.key !== NEW_LORA).map((a) => a.key).sort());
    expect(delta.artifacts.map((a) => a.key)).toEqual([NEW_LORA]);
  });

  it('verify accepts it; inspect shows the base and the bytes saved (= the full bundle entries it leaves out)', async () => {
    const v = await runCli(['verify', files.delta, '--public-key', pub]);
    expect(v.code, v.stderr).toBe(0);
    expect(v.stdout).toMatch(/^delta of release 2025\.11\.18-1 \(base bundle\.json sha256 [a-f0-9]{64}\): install needs \d+ manifests, \d+ blobs and 15 artifacts already in the target$/m);
    const r = await runCli(['inspect', files.delta, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { base: { release: { version: string }; saved: { total: number }; relies: { artifacts: number } } };
    const [full, delta] = await Promise.all([bundleJson(files.full), bundleJson(files.delta)]);
    const inDelta = new Set(delta.entries.map((e) => e.path));
    const leftOut = full.entries.filter((e) => !inDelta.has(e.path)).reduce((n, e) => n + e.size, 0);
    expect(out.base.release.version).toBe(fixture.release.version);
    expect(out.base.saved.total).toBe(leftOut);
    expect(deltaSummary.base.saved.total).toBe(leftOut);
    expect(deltaSummary.base.manifestSha256).toBe(sha256(await run('tar', ['-xOf', files.base, 'bundle.json'])));
    expect(out.base.relies.artifacts).toBe(full.artifacts.length - 1);
    console.log(`delta ${(await stat(files.delta)).size} bytes, full ${(await stat(files.full)).size} bytes, ${leftOut} bytes of entries left out`);
    const text = await runCli(['inspect', files.delta]);
    expect(text.stdout).toMatch(/^delta {5}of release 2025\.11\.18-1 \(tag sonic-20251118\)/m);
  });

  it('the same delta from the base\'s bundle.json + bundle.json.sig alone, byte for byte', async () => {
    const dir = join(work, 'base-json');
    await mkdir(dir);
    await run('tar', ['-xf', files.base, '-C', dir, 'bundle.json', 'bundle.json.sig']);
    const out = join(work, 'delta-from-json.tar');
    const r = await bundle(out, ['--recipe', next.recipeFile, '--base', join(dir, 'bundle.json')]);
    expect(r.code, r.stderr).toBe(0);
    expect(sha256(await readFile(out))).toBe(sha256(await readFile(files.delta)));
  });

  it('a base signed by another key is refused before anything is fetched, and nothing is written', async () => {
    const out = join(work, 'delta-bad-key.tar');
    const r = await bundle(out, ['--recipe', next.recipeFile, '--base', files.base, '--base-public-key', join(work, 'other-keys', 'bundle.pub')]);
    expect(r.code).toBe(1);
    expect(r.stderr.split('\n').filter((l) => l.startsWith('Error: '))).toEqual([expect.stringMatching(/^Error: the base .*base\.tar: bundle\.json is signed by SHA256:[a-f0-9]{64}, not by the given key SHA256:[a-f0-9]{64}$/)]);
    expect(await exists(out)).toBe(false);
    expect(await exists(`${out}.partial`)).toBe(false);
  });
});

describe('installing a delta', () => {
  it('onto an empty target: refused before any write, naming every missing item', async () => {
    const prefix = `delta-empty-${id}/cartesia`;
    const target = `delta-empty-${id}`;
    const out = join(work, 'out-empty');
    await mkdir(out);
    const r = await runCli(installArgs(files.delta, pub, prefix, target, out), { env: installEnv });
    expect(r.code).toBe(4);
    const lines = r.stderr.split('\n').filter((l) => l.startsWith('Error: ') || l.startsWith('  missing: '));
    const delta = await bundleJson(files.delta);
    const relied = delta.base!.relies;
    const count = relied.images.reduce((n, i) => n + i.manifests.length + i.blobs.length, 0) + relied.artifacts.length;
    expect(lines[0]).toMatch(new RegExp(`^Error: the target lacks ${count} items this delta relies on; install its base first \\(release 2025\\.11\\.18-1, bundle\\.json sha256 [a-f0-9]{64}\\) .*nothing was written$`));
    expect(lines.slice(1)).toHaveLength(count);
    for (const i of relied.images) {
      for (const d of i.manifests) expect(lines).toContain(`  missing: ${bed.private.host}/${prefix}/${i.name}@${d.digest} (manifest, ${d.size} bytes)`);
      for (const d of i.blobs) expect(lines).toContain(`  missing: ${bed.private.host}/${prefix}/${i.name}@${d.digest} (blob, ${d.size} bytes)`);
    }
    for (const a of relied.artifacts) expect(lines).toContain(`  missing: s3://${target}/${a.key} (sha256 ${a.sha256}, ${a.size} bytes) is absent`);
    // Nothing anywhere: no repository, no bucket content, no values or receipt.
    for (const img of delta.images) expect(await repoExists(`${prefix}/${img.name}`, img.tag), img.name).toBe(false);
    expect(await objectsIn(target)).toEqual([]);
    expect(await exists(join(out, 'values.yaml'))).toBe(false);
    expect(await exists(join(out, 'cartesia-install-receipt.json'))).toBe(false);
  });

  it('base then delta leaves the registry, the bucket and values.yaml as a full install of the new release does', async () => {
    const viaDelta = { prefix: `delta-a-${id}/cartesia`, bucket: `delta-a-${id}`, out: join(work, 'out-delta') };
    const viaFull = { prefix: `delta-b-${id}/cartesia`, bucket: `delta-b-${id}`, out: join(work, 'out-full') };
    await mkdir(viaDelta.out);
    await mkdir(viaFull.out);
    const baseInstall = await runCli(installArgs(files.base, pub, viaDelta.prefix, viaDelta.bucket, viaDelta.out), { env: installEnv });
    expect(baseInstall.code, baseInstall.stderr).toBe(0);
    const deltaInstall = await runCli([...installArgs(files.delta, pub, viaDelta.prefix, viaDelta.bucket, viaDelta.out), '--json'], { env: installEnv });
    expect(deltaInstall.code, deltaInstall.stderr).toBe(0);
    const fullInstall = await runCli(installArgs(files.full, pub, viaFull.prefix, viaFull.bucket, viaFull.out), { env: installEnv });
    expect(fullInstall.code, fullInstall.stderr).toBe(0);

    // Only the changed layer and config were uploaded by the delta's install.
    const summary = JSON.parse(deltaInstall.stdout) as { images: { blobsUploaded: number }[]; artifacts: { uploaded: number } };
    expect(summary.images.reduce((n, i) => n + i.blobsUploaded, 0)).toBe(2);
    expect(summary.artifacts.uploaded).toBe(1);

    // Every tag of the new release, checked by skopeo, in both registries.
    const auth = await authFile(bed.private.host, bed.private.username, bed.private.password);
    const digestOf = async (repo: string, tag: string) => {
      const raw = await skopeo(['inspect', '--raw', '--cert-dir', bed.certDir, '--authfile', auth, `docker://${bed.private.host}/${repo}:${tag}`]);
      return raw.ok ? `sha256:${sha256(raw.stdout)}` : raw.error;
    };
    for (const img of next.images) {
      expect(await digestOf(`${viaDelta.prefix}/${name(img.repository)}`, img.tag), img.repository).toBe(img.digest);
      expect(await digestOf(`${viaFull.prefix}/${name(img.repository)}`, img.tag), img.repository).toBe(img.digest);
    }

    // The same objects with the same sha256 (read back, hashed here).
    const contents = async (b: string) => {
      const out: Record<string, string> = {};
      for (const o of await objectsIn(b)) {
        const got = await s3.send(new GetObjectCommand({ Bucket: b, Key: o.Key! }));
        out[o.Key!] = sha256(Buffer.from(await got.Body!.transformToByteArray()));
      }
      return out;
    };
    const [a, b] = await Promise.all([contents(viaDelta.bucket), contents(viaFull.bucket)]);
    expect(a).toEqual(b);
    expect(a[NEW_LORA]).toBe(newLora.sha256);
    expect(Object.keys(a)).toHaveLength(fixture.objects.filter((o) => o.bucket === `cartesia-${fixture.customer}`).length + 1);

    // values.yaml and .env: identical once the two targets' names are swapped.
    for (const file of ['values.yaml', '.env']) {
      const viaDeltaText = await readFile(join(viaDelta.out, file), 'utf8');
      const viaFullText = (await readFile(join(viaFull.out, file), 'utf8')).replaceAll(viaFull.prefix, viaDelta.prefix).replaceAll(viaFull.bucket, viaDelta.bucket);
      expect(viaDeltaText, file).toBe(viaFullText);
    }
    expect(await readFile(join(viaDelta.out, 'values.yaml'), 'utf8')).toContain('releaseTag: sonic-20251202');
    const receipt = JSON.parse(await readFile(join(viaDelta.out, 'cartesia-install-receipt.json'), 'utf8')) as { base: { release: { version: string } } };
    expect(receipt.base.release.version).toBe(fixture.release.version);
  });
});

describe('installing a delta where the base is only partly there', () => {
  it('names just the objects that are gone or differ, accepts one re-uploaded by another tool with the same bytes, and writes nothing', async () => {
    const prefix = `delta-part-${id}/cartesia`;
    const target = `delta-part-${id}`;
    const out = join(work, 'out-part');
    await mkdir(out);
    const base = await runCli(installArgs(files.base, pub, prefix, target, out), { env: installEnv });
    expect(base.code, base.stderr).toBe(0);
    const relied = (await bundleJson(files.delta)).base!.relies.artifacts;
    const [gone, other, plain] = relied;
    await s3.send(new DeleteObjectCommand({ Bucket: target, Key: gone!.key }));
    await s3.send(new PutObjectCommand({ Bucket: target, Key: other!.key, Body: Buffer.from('other bytes'), Metadata: { sha256: sha256('other bytes') } }));
    // The same bytes without our sha256 metadata: its MD5 ETag proves them.
    const bytes = Buffer.from(await (await s3.send(new GetObjectCommand({ Bucket: target, Key: plain!.key }))).Body!.transformToByteArray());
    await s3.send(new PutObjectCommand({ Bucket: target, Key: plain!.key, Body: bytes }));
    const before = await objectsIn(target);

    for (const dryRun of [['--dry-run'], []]) {
      const r = await runCli([...installArgs(files.delta, pub, prefix, target, out), ...dryRun], { env: installEnv });
      expect(r.code, r.stderr).toBe(4);
      const lines = r.stderr.split('\n').filter((l) => l.startsWith('Error: ') || l.startsWith('  missing: '));
      expect(lines).toEqual([
        expect.stringMatching(/^Error: the target lacks 2 items this delta relies on; /),
        ...[
          `  missing: s3://${target}/${gone!.key} (sha256 ${gone!.sha256}, ${gone!.size} bytes) is absent`,
          `  missing: s3://${target}/${other!.key} (sha256 ${other!.sha256}, ${other!.size} bytes) holds 11 bytes, not ${other!.size}`,
        ].sort(),
      ]);
    }
    // Nothing moved: the new tags are not there, the bucket is as it was, no values were rewritten for the new release.
    for (const img of next.images.filter((i) => i.tag !== fixture.images.find((f) => f.repository === i.repository)!.tag)) {
      expect(await repoExists(`${prefix}/${name(img.repository)}`, img.tag), img.repository).toBe(false);
    }
    expect((await objectsIn(target)).map((o) => [o.Key, o.ETag])).toEqual(before.map((o) => [o.Key, o.ETag]));
    expect(await readFile(join(out, 'values.yaml'), 'utf8')).toContain(`releaseTag: ${fixture.release.releaseTag}`);
  });
});

describe('a delta against a base with fewer images', () => {
  it('mounts the shared layers of images new to the target from the repositories the base filled', async () => {
    const small = join(work, 'base-sonic3.tar');
    const smallDelta = join(work, 'delta-sonic3.tar');
    expect((await bundle(small, ['--models', 'sonic-3'])).code).toBe(0);
    const r = await bundle(smallDelta, ['--recipe', next.recipeFile, '--base', small]);
    expect(r.code, r.stderr).toBe(0);
    const prefix = `delta-mount-${id}/cartesia`;
    const target = `delta-mount-${id}`;
    const out = join(work, 'out-mount');
    await mkdir(out);
    const base = await runCli(installArgs(small, pub, prefix, target, out), { env: installEnv });
    expect(base.code, base.stderr).toBe(0);
    const delta = await runCli(installArgs(smallDelta, pub, prefix, target, out), { env: installEnv });
    expect(delta.code, delta.stderr).toBe(0);

    const auth = await authFile(bed.private.host, bed.private.username, bed.private.password);
    for (const img of next.images) {
      const raw = await skopeo(['inspect', '--raw', '--cert-dir', bed.certDir, '--authfile', auth, `docker://${bed.private.host}/${prefix}/${name(img.repository)}:${img.tag}`]);
      expect(raw.ok && `sha256:${sha256(raw.stdout)}`, img.repository).toBe(img.digest);
    }
    // The three workers the base lacked: base and runtime layers (two platforms) mounted, their own layer and config uploaded.
    const receipt = JSON.parse(await readFile(join(out, 'cartesia-install-receipt.json'), 'utf8')) as { registry: { images: { name: string; blobs: { uploaded: number; mounted: number } }[] } };
    const fresh = ['cartesia-sonic-azure-disco', 'cartesia-sonic-royal-plant', 'cartesia-sonic-voice-clone'];
    expect(receipt.registry.images.filter((i) => fresh.includes(i.name)).map((i) => [i.name, i.blobs])).toEqual(fresh.map((n) => [n, { uploaded: 4, mounted: 4, existed: 0 }]));
  });
});

describe('diff', () => {
  it('of the base and the new release lists exactly the changes made, for the full bundle and the delta alike', async () => {
    const { old, now } = records(CHANGED);
    const expected = {
      release: { changed: true, version: { old: fixture.release.version, new: next.version }, tag: { old: fixture.release.releaseTag, new: next.releaseTag } },
      images: {
        added: [],
        removed: [],
        changed: [
          {
            name: CHANGED,
            old: { tag: fixture.release.releaseTag, digest: old.digest },
            new: { tag: next.releaseTag, digest: now.digest },
            platforms: [{ platform: 'linux/amd64', old: old.platforms.find((p) => p.architecture === 'amd64')!.digest, new: now.platforms.find((p) => p.architecture === 'amd64')!.digest }],
          },
        ],
        unchanged: fixture.images
          .filter((i) => name(i.repository) !== CHANGED)
          .map((i) => ({ name: name(i.repository), digest: i.digest, tag: { old: i.tag, new: i.repository.endsWith('nats') ? i.tag : next.releaseTag } }))
          .sort((x, y) => (x.name < y.name ? -1 : 1)),
      },
      artifacts: {
        added: [{ bucket, key: NEW_LORA, size: newLora.size, sha256: newLora.sha256 }],
        removed: [],
        changed: [],
        unchanged: fixture.objects.filter((o) => o.bucket === `cartesia-${fixture.customer}`).length,
      },
    };
    for (const newer of [files.full, files.delta]) {
      const r = await runCli(['diff', files.base, newer, '--public-key', pub, '--json']);
      expect(r.code, r.stderr).toBe(0);
      const d = JSON.parse(r.stdout) as typeof expected & { old: { verified: boolean }; new: { verified: boolean; delta: boolean } };
      expect({ release: d.release, images: d.images, artifacts: d.artifacts }).toEqual(expected);
      expect([d.old.verified, d.new.verified, d.new.delta]).toEqual([true, true, newer === files.delta]);
    }
    const table = await runCli(['diff', files.base, files.full]);
    expect(table.code, table.stderr).toBe(0);
    expect(table.stderr).toMatch(/signatures not checked/);
    expect(table.stdout).toMatch(new RegExp(`^ {2}changed +${CHANGED} +sonic-20251118@sha256:[a-f0-9]{12}… +sonic-20251202@sha256:[a-f0-9]{12}… +linux/amd64$`, 'm'));
    expect(table.stdout).toMatch(new RegExp(`^ {2}added +${NEW_LORA.replaceAll('.', '\\.')} +- +40\\.0 KiB sha256 ${newLora.sha256.slice(0, 12)}…$`, 'm'));
  });

  it('with --public-key, a bundle signed by another key is refused (exit 3)', async () => {
    const r = await runCli(['diff', files.base, files.full, '--public-key', join(work, 'other-keys', 'bundle.pub')]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/^Error: .*base\.tar: bundle\.json is signed by SHA256:[a-f0-9]{64}, not by the given key/m);
    expect(r.stdout).toBe('');
  });
});
