import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, open, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { DeleteObjectCommand, GetObjectCommand } from '@aws-sdk/client-s3';
import { beforeAll, describe, expect, inject, it } from 'vitest';
import { openBundle } from '../../src/bundle/reader.ts';
import { walkGraph } from '../../src/oci/graph.ts';
import { LayoutReader } from '../../src/oci/layout/reader.ts';
import { installArgs, installEnv, objectsIn, repoExists, s3 } from './install-target.ts';
import { run } from '../testbed/run.ts';
import { runCli } from './cli.ts';
import { authFile, sha256, skopeo } from './helpers.ts';

const bed = inject('testbed');
const fixture = inject('fixture');
const work = join(bed.root, `install-test-${randomBytes(3).toString('hex')}`);
const keys = join(work, 'keys');
const good = join(work, 'good.tar');
const name = (repo: string) => repo.split('/').at(-1)!;
const exists = (p: string) => stat(p).then(() => true, () => false);

interface Summary {
  images?: { repository: string; tag: string; digest: string; blobsUploaded: number }[];
  artifacts?: { uploaded: number; skipped: number };
  values?: string;
  receipt?: string;
}


beforeAll(async () => {
  await mkdir(work, { recursive: true });
  expect((await runCli(['keys', 'generate', '--out', keys])).code).toBe(0);
  const r = await runCli(['bundle', '--output', good, '--key-file', bed.saKeyFile, '--gcs-endpoint', bed.gcs.endpoint, '--source-registry', `${bed.source.host}/${bed.source.prefix}`, '--source-ca-file', bed.caFile, '--customer', fixture.customer, '--signing-key', join(keys, 'bundle.key'), '--cache-dir', join(work, 'cache')]);
  expect(r.code, r.stderr).toBe(0);
});

describe('install: bundle → TLS registry, S3 and values.yaml', () => {
  const prefix = 'inst-a/cartesia';
  const bucket = `inst-a-${randomBytes(3).toString('hex')}`;
  const out = join(work, 'out-a');

  it('pushes digest-identical images, uploads every artifact, keeps every chart comment, and lists it all in the receipt', async () => {
    await mkdir(out);
    const r = await runCli([...installArgs(good, join(keys, 'bundle.pub'), prefix, bucket, out), '--json'], { env: installEnv });
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout) as Summary;
    const auth = await authFile(bed.private.host, bed.private.username, bed.private.password);
    for (const img of fixture.images) {
      const raw = await skopeo(['inspect', '--raw', '--cert-dir', bed.certDir, '--authfile', auth, `docker://${bed.private.host}/${prefix}/${name(img.repository)}:${img.tag}`]);
      expect(raw.ok && `sha256:${sha256(raw.stdout)}`, img.repository).toBe(img.digest);
    }
    const customer = fixture.objects.filter((o) => o.bucket === `cartesia-${fixture.customer}`);
    expect(summary.artifacts).toEqual({ uploaded: customer.length, skipped: 0 });
    for (const o of customer) {
      const got = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: o.key }));
      expect(sha256(Buffer.from(await got.Body!.transformToByteArray())), o.key).toBe(o.sha256);
    }

    const values = await readFile(join(out, 'values.yaml'), 'utf8');
    expect(values).toMatch(new RegExp(`imageRegistry: ${bed.private.host.replace('.', '\\.')}/${prefix}\\n`));
    expect(values).toContain(`releaseTag: ${fixture.release.releaseTag}`);
    expect(values).toContain('authenticate: false');
    const chart = (await runTarValues()).split('\n');
    for (const line of chart.filter((l) => l.includes('#'))) {
      const comment = line.slice(line.indexOf('#'));
      expect(values, comment).toContain(comment);
    }
    expect(await readFile(join(out, '.env'), 'utf8')).toContain(`IMAGE_REGISTRY=${bed.private.host}/${prefix}`);

    const receipt = JSON.parse(await readFile(summary.receipt!, 'utf8')) as Record<string, any>;
    // No --file-sha256: the signed bundle.json's sha256 names the bundle (`tar -xOf … bundle.json | sha256sum`).
    expect(receipt.bundle.sha256).toBeNull();
    expect(receipt.bundle.manifestSha256).toBe(sha256(await run('tar', ['-xOf', good, 'bundle.json'])));
    expect(receipt.bundle.verified).toBe(true);
    expect(receipt.registry.images.map((i: { digest: string }) => i.digest).sort()).toEqual(fixture.images.map((i) => i.digest).sort());
    // The images go side by side: a blob they share is uploaded once and mounted everywhere else.
    const b = await openBundle(good);
    const layout = new LayoutReader(b.layoutFiles('images/'));
    const graphs = await Promise.all(b.manifest.images.map(async (i) => walkGraph(layout, await layout.resolve(i.ref))));
    const blobs = receipt.registry.images.map((i: { blobs: { uploaded: number; mounted: number; existed: number } }) => i.blobs);
    expect(blobs.reduce((n: number, c: { uploaded: number }) => n + c.uploaded, 0)).toBe(new Set(graphs.flatMap((g) => g.blobs.map((d) => d.digest))).size);
    expect(blobs.reduce((n: number, c: { uploaded: number; mounted: number; existed: number }) => n + c.uploaded + c.mounted + c.existed, 0)).toBe(graphs.reduce((n, g) => n + g.blobs.length, 0));
    expect(receipt.storage.objects).toHaveLength(customer.length);
    expect(JSON.stringify(receipt)).not.toContain(bed.private.password);
    expect(JSON.stringify(receipt)).not.toContain(bed.s3.secretAccessKey);
    expect(r.stderr).not.toContain(bed.private.password);
  });

  it('a second install sends nothing and reads none of the payload: damage there goes unread, but not once a key must be sent again', async () => {
    const b = await openBundle(good);
    const blob = b.manifest.entries.filter((e) => e.path.startsWith('images/blobs/')).sort((x, y) => y.size - x.size)[0]!.path;
    const [first, second] = b.manifest.artifacts;
    // Damage the target already holds: the re-run must not need (so not read) these bytes.
    const damaged = await flipped(blob, first!.path);
    const r = await runCli([...installArgs(damaged, join(keys, 'bundle.pub'), prefix, bucket, out), '--json'], { env: installEnv });
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout) as Summary & { bundle: { sha256: string | null; manifestSha256: string } };
    expect(summary.images!.reduce((n, i) => n + i.blobsUploaded, 0)).toBe(0);
    expect(summary.artifacts).toEqual({ uploaded: 0, skipped: b.manifest.artifacts.length });
    // No file sha256 unless asked for; bundle.json's (signed, listing every entry's) names the bundle.
    expect(summary.bundle.sha256).toBeNull();
    expect(summary.bundle.manifestSha256).toBe(sha256(b.manifestBytes));
    const receipt = JSON.parse(await readFile(summary.receipt!, 'utf8')) as { storage: { objects: { etag?: string }[] } };
    expect(receipt.storage.objects.every((o) => /^[0-9a-f]{32}(-\d+)?$/.test(o.etag ?? ''))).toBe(true);

    // One object gone from the target: it must be sent, so it is read and checked first.
    await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: second!.key }));
    const bad = await runCli(installArgs(await flipped(second!.path), join(keys, 'bundle.pub'), prefix, bucket, out), { env: installEnv });
    expect(bad.code).toBe(3);
    expect(bad.stderr).toContain(second!.path);
    expect((await objectsIn(bucket)).map((o) => o.Key)).not.toContain(second!.key);
    const again = await runCli([...installArgs(good, join(keys, 'bundle.pub'), prefix, bucket, out), '--json', '--file-sha256'], { env: installEnv });
    expect(again.code, again.stderr).toBe(0);
    const s2 = JSON.parse(again.stdout) as Summary & { bundle: { sha256: string | null } };
    expect(s2.artifacts).toEqual({ uploaded: 1, skipped: b.manifest.artifacts.length - 1 });
    expect(s2.bundle.sha256).toBe(sha256(await readFile(good)));
  });
});

async function runTarValues(): Promise<string> {
  const b = await openBundle(good);
  const { readArchiveFiles } = await import('../../src/bundle/release-archive.ts');
  return (await readArchiveFiles(b.open(b.manifest.release.archive.path), ['cartesia/values.yaml'])).files.get('cartesia/values.yaml')!;
}

/** A copy of the good bundle with one byte flipped inside each entry of `paths`. */
async function flipped(...paths: string[]): Promise<string> {
  const bundle = await openBundle(good);
  const copy = join(work, `flipped-${randomBytes(3).toString('hex')}.tar`);
  await copyFile(good, copy);
  const fh = await open(copy, 'r+');
  for (const path of paths) {
    const loc = bundle.entry(path)!;
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, loc.offset + Math.floor(loc.size / 2));
    b[0] = b[0]! ^ 0x01;
    await fh.write(b, 0, 1, loc.offset + Math.floor(loc.size / 2));
  }
  await fh.close();
  return copy;
}

describe('install: nothing is written before everything checks out', () => {
  it('refuses a damaged bundle (bundle.json, signature, image blob, artifact, release archive) with exit 3, leaving registry, bucket and files untouched', async () => {
    const b = await openBundle(good);
    const blob = b.manifest.entries.filter((e) => e.path.startsWith('images/blobs/')).sort((x, y) => y.size - x.size)[0]!.path;
    for (const path of ['bundle.json', 'bundle.json.sig', blob, b.manifest.artifacts[0]!.path, b.manifest.release.archive.path]) {
      const tag = randomBytes(3).toString('hex');
      const out = join(work, `out-bad-${tag}`);
      await mkdir(out);
      const r = await runCli(installArgs(await flipped(path), join(keys, 'bundle.pub'), `bad-${tag}/cartesia`, `bad-${tag}`, out), { env: installEnv });
      expect(r.code, path).toBe(3);
      expect(r.stderr.split('\n').filter((l) => l.startsWith('Error:')), path).toHaveLength(1);
      expect(await repoExists(`bad-${tag}/cartesia/cartesia-api`, fixture.release.releaseTag)).toBe(false);
      expect(await objectsIn(`bad-${tag}`)).toHaveLength(0);
      expect(await readdir(out)).toEqual([]);
    }
  });

  it('--dry-run verifies and prints the plan but pushes, uploads and writes nothing', async () => {
    const out = join(work, 'out-dry');
    await mkdir(out);
    const r = await runCli([...installArgs(good, join(keys, 'bundle.pub'), 'dry/cartesia', 'dry-run-bucket', out), '--dry-run'], { env: installEnv });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/Dry run: nothing was pushed, uploaded or written/);
    expect(r.stdout).toContain(`push    ${bed.private.host}/dry/cartesia/cartesia-api:${fixture.release.releaseTag}@`);
    expect(await repoExists('dry/cartesia/cartesia-api', fixture.release.releaseTag)).toBe(false);
    expect(await objectsIn('dry-run-bucket')).toHaveLength(0);
    expect(await readdir(out)).toEqual([]);
    expect(await exists(join(out, 'values.yaml'))).toBe(false);
  });

  it('refuses without a public key unless told, and a bundle signed by another key', async () => {
    const noKey = await runCli(['install', good, '--registry', `${bed.private.host}/x`]);
    expect(noKey.code).toBe(2);
    expect(noKey.stderr).toMatch(/no --public-key given/);
    const other = join(work, 'other');
    expect((await runCli(['keys', 'generate', '--out', other])).code).toBe(0);
    const out = join(work, 'out-other');
    await mkdir(out);
    const r = await runCli([...installArgs(good, join(other, 'bundle.pub'), 'other/cartesia', 'other-key', out)], { env: installEnv });
    expect(r.code).toBe(3);
    expect(await readdir(out)).toEqual([]);
  });
});
