import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Storage } from '@google-cloud/storage';
import { beforeAll, describe, expect, inject, it } from 'vitest';
import { run } from '../testbed/run.ts';
import { runCli, type CliResult } from './cli.ts';
import { sha256, skopeo } from './helpers.ts';

const bed = inject('testbed');
const fixture = inject('fixture');
const work = join(bed.root, `bundle-test-${randomBytes(3).toString('hex')}`);
const keys = join(work, 'keys');
const sourceArgs = ['--key-file', bed.saKeyFile, '--gcs-endpoint', bed.gcs.endpoint, '--source-registry', `${bed.source.host}/${bed.source.prefix}`, '--source-ca-file', bed.caFile];
const exists = (p: string) => stat(p).then(() => true, () => false);
const name = (repo: string) => repo.split('/').at(-1)!;

interface Summary {
  path: string;
  sha256: string;
  manifestSha256: string;
  size: number;
  images: { name: string; tag: string; digest: string }[];
  artifacts: { count: number; bytes: number };
  transferred: { release: number; images: number; artifacts: number };
}

async function bundle(out: string, extra: string[]): Promise<{ r: CliResult; summary?: Summary }> {
  const r = await runCli(['bundle', '--output', out, ...sourceArgs, ...extra]);
  return { r, ...(r.code === 0 && extra.includes('--json') ? { summary: JSON.parse(r.stdout) as Summary } : {}) };
}

beforeAll(async () => {
  await mkdir(work, { recursive: true });
  const made = await runCli(['keys', 'generate', '--out', keys]);
  expect(made.code).toBe(0);
});

describe('bundle: the synthetic release, checked by independent tools', () => {
  let first: Summary;
  const out1 = join(work, 'one.tar');

  it('writes a signed bundle that openssl, sha256sum, skopeo and the GCS records all agree with', async () => {
    const { r, summary } = await bundle(out1, ['--customer', fixture.customer, '--signing-key', join(keys, 'bundle.key'), '--cache-dir', join(work, 'cache1'), '--json']);
    expect(r.code, r.stderr).toBe(0);
    first = summary!;
    expect(r.stderr).toBe('');
    expect(first.sha256).toBe((await run('sha256sum', [out1])).split(' ')[0]);

    const x = join(work, 'x1');
    await mkdir(x);
    await run('tar', ['-xf', out1, '-C', x]);
    // What install's receipt names the bundle by.
    expect(first.manifestSha256).toBe((await run('sha256sum', [join(x, 'bundle.json')])).split(' ')[0]);
    await writeFile(join(work, 'sig.der'), Buffer.from(await readFile(join(x, 'bundle.json.sig'), 'utf8'), 'base64'));
    expect(await run('openssl', ['dgst', '-sha256', '-verify', join(keys, 'bundle.pub'), '-signature', join(work, 'sig.der'), join(x, 'bundle.json')])).toBe('Verified OK\n');
    await run('sha256sum', ['--strict', '--quiet', '-c', 'SHA256SUMS'], { cwd: x });
    expect(await run('sha256sum', ['-c', 'SHA256SUMS'], { cwd: join(x, 'release') })).toBe(`${fixture.release.archiveName}: OK\n`);

    for (const img of fixture.images) {
      const raw = await skopeo(['inspect', '--raw', `oci:${join(x, 'images')}:${name(img.repository)}:${img.tag}`]);
      expect(raw.ok && `sha256:${sha256(raw.stdout)}`, img.repository).toBe(img.digest);
    }
    expect(first.images.map((i) => i.name).sort()).toEqual(fixture.images.map((i) => name(i.repository)).sort());

    const customer = fixture.objects.filter((o) => o.bucket === `cartesia-${fixture.customer}`);
    expect(first.artifacts.count).toBe(customer.length);
    for (const o of customer) expect(sha256(await readFile(join(x, 'artifacts', o.bucket, o.key))), o.key).toBe(o.sha256);
    const manifest = JSON.parse(await readFile(join(x, 'bundle.json'), 'utf8')) as { release: { version: string; tag: string }; signer: { fingerprint: string } };
    expect(manifest.release).toMatchObject({ version: fixture.release.version, tag: fixture.release.releaseTag });
    expect(manifest.signer.fingerprint).toMatch(/^SHA256:[a-f0-9]{64}$/);
  });

  it('gives the same bytes from a second empty cache, and fetches no image blob from a warm one', async () => {
    const { r, summary } = await bundle(join(work, 'two.tar'), ['--customer', fixture.customer, '--signing-key', join(keys, 'bundle.key'), '--cache-dir', join(work, 'cache2'), '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(summary!.sha256).toBe(first.sha256);
    expect(summary!.transferred.images).toBeGreaterThan(0);
    const warm = await bundle(join(work, 'three.tar'), ['--customer', fixture.customer, '--signing-key', join(keys, 'bundle.key'), '--cache-dir', join(work, 'cache2'), '--json']);
    expect(warm.r.code, warm.r.stderr).toBe(0);
    expect(warm.summary!.transferred).toEqual({ release: 0, images: 0, artifacts: 0 });
    expect(warm.summary!.sha256).toBe(first.sha256);
  });

  it('a damaged copy in the cache (same size, other bytes) is fetched again, never carried', async () => {
    const cache = join(work, 'cache2');
    const dir = join(cache, 'images', 'blobs', 'sha256');
    const files = await Promise.all((await readdir(dir)).map(async (f) => ({ path: join(dir, f), size: (await stat(join(dir, f))).size })));
    const blob = files.sort((a, b) => b.size - a.size)[0]!;
    // A customer artifact (the release archive is cached there too, and checked by its own SHA256SUMS).
    const artifact = fixture.objects.filter((o) => o.bucket === `cartesia-${fixture.customer}`).sort((a, b) => b.size - a.size)[0]!;
    const object = { path: join(cache, 'objects', 'sha256', artifact.sha256), size: artifact.size };
    for (const f of [blob, object]) {
      const bytes = await readFile(f.path);
      bytes[0] = bytes[0]! ^ 0xff;
      await writeFile(f.path, bytes);
    }
    const { r, summary } = await bundle(join(work, 'four.tar'), ['--customer', fixture.customer, '--signing-key', join(keys, 'bundle.key'), '--cache-dir', cache, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(summary!.sha256).toBe(first.sha256);
    expect(summary!.transferred).toEqual({ release: 0, images: blob.size, artifacts: object.size });
    // Both fetched into the cache again, whole.
    for (const f of [blob, object]) expect(sha256(await readFile(f.path)), f.path).toBe(f.path.split('/').at(-1));
  });

  it('a re-run onto its own output writes nothing; a different bundle or a non-bundle there is refused', async () => {
    const args = ['--customer', fixture.customer, '--signing-key', join(keys, 'bundle.key'), '--cache-dir', join(work, 'cache2'), '--json'];
    const before = await stat(out1);
    const again = await bundle(out1, args);
    expect(again.r.code, again.r.stderr).toBe(0);
    expect(again.summary).toMatchObject({ upToDate: true, sha256: null, manifestSha256: first.manifestSha256, size: first.size, transferred: { images: 0, artifacts: 0 } });
    const after = await stat(out1);
    expect([after.ino, after.mtimeMs]).toEqual([before.ino, before.mtimeMs]);
    // Without --json the phases go to stderr; stdout carries only the result line.
    const plain = await bundle(out1, args.filter((a) => a !== '--json'));
    expect(plain.r.code, plain.r.stderr).toBe(0);
    expect(plain.r.stdout).toBe(`${out1}  already up to date (same bundle.json and signature; \`verify\` re-checks every byte)  ${first.size} bytes\n`);
    expect(plain.r.stderr).toContain('Fetch the images and the customer artifacts');

    const other = await bundle(out1, ['--models', 'sonic-3', ...args]);
    expect(other.r.code).toBe(1);
    expect(other.r.stderr.trim().split('\n').filter((l) => l.startsWith('Error:'))).toEqual([`Error: ${out1} already exists and holds a different bundle; choose another --output or move the old one away`]);
    expect((await run('sha256sum', [out1])).split(' ')[0]).toBe(first.sha256);

    const notBundle = join(work, 'notes.tar');
    await writeFile(notBundle, 'not a bundle\n');
    const refused = await bundle(notBundle, args);
    expect(refused.r.code).toBe(1);
    expect(refused.r.stderr).toContain(`Error: ${notBundle} already exists and is not a bundle; choose another --output or move it away`);
    expect(await readFile(notBundle, 'utf8')).toBe('not a bundle\n');
  });

  it('--models sonic-3 carries the API, the license proxy, NATS and rosy-dragon only', async () => {
    const { r, summary } = await bundle(join(work, 'sonic3.tar'), ['--models', 'sonic-3', '--unsigned', '--cache-dir', join(work, 'cache2'), '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(summary!.images.map((i) => i.name).sort()).toEqual(['cartesia-api', 'cartesia-license-proxy', 'cartesia-sonic-rosy-dragon', 'nats']);
    const listing = await run('tar', ['-tf', join(work, 'sonic3.tar')]);
    expect(listing).not.toContain('artifacts/');
    const index = JSON.parse(await run('tar', ['-xOf', join(work, 'sonic3.tar'), 'images/index.json'])) as { manifests: { annotations: Record<string, string> }[] };
    expect(index.manifests.map((m) => m.annotations['org.opencontainers.image.ref.name']).sort()).toEqual(summary!.images.map((i) => `${i.name}:${i.tag}`).sort());
  });
});

describe('bundle: pinned releases and one platform', () => {
  it('--release VERSION (the latest) pins it; an unknown version is refused', async () => {
    const { r, summary } = await bundle(join(work, 'pinned.tar'), ['--release', fixture.release.version, '--models', 'sonic-2', '--unsigned', '--cache-dir', join(work, 'cache2'), '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(summary!.images.find((i) => i.name === 'cartesia-sonic-royal-plant')?.tag).toBe(fixture.release.releaseTag);
    const old = await bundle(join(work, 'old.tar'), ['--release', '1999.01.01-1', '--unsigned', '--cache-dir', join(work, 'cache2')]);
    expect(old.r.code).toBe(1);
    expect(old.r.stderr).toMatch(/Error: release 1999\.01\.01-1 not found: .*releases\/1999\.01\.01-1\/cartesia-kube-1999\.01\.01-1\.tar\.gz is missing and the latest release is 2025\.11\.18-1/);
    expect(await exists(join(work, 'old.tar'))).toBe(false);
  });

  it('--platform linux/amd64 carries each image as its upstream amd64 manifest', async () => {
    const { r, summary } = await bundle(join(work, 'amd64.tar'), ['--platform', 'linux/amd64', '--models', 'sonic-3', '--unsigned', '--cache-dir', join(work, 'cache2'), '--json']);
    expect(r.code, r.stderr).toBe(0);
    for (const img of summary!.images) {
      const upstream = fixture.images.find((f) => name(f.repository) === img.name)!;
      expect(img.digest, img.name).toBe(upstream.platforms.find((p) => p.architecture === 'amd64')!.digest);
    }
  });
});

describe('bundle: refusals leave nothing under the output name', () => {
  const storage = new Storage({ apiEndpoint: bed.gcs.endpoint, projectId: 'cartesia-airgap-testbed' });

  /** A recipe for another release bucket, so these cases never touch the fixture's. */
  async function recipeFor(bucket: string): Promise<string> {
    const text = (await readFile(join(import.meta.dirname, '..', '..', 'bundles', 'cartesia.yaml'), 'utf8')).replace('bucket: cartesia-onprem', `bucket: ${bucket}`);
    const file = join(work, `${bucket}.yaml`);
    await writeFile(file, text);
    return file;
  }

  async function refused(args: string[], pattern: RegExp): Promise<void> {
    const out = join(work, `refused-${randomBytes(3).toString('hex')}.tar`);
    const { r } = await bundle(out, [...args, '--unsigned', '--cache-dir', join(work, 'cache-refusals')]);
    expect(r.code).not.toBe(0);
    const errors = r.stderr.split('\n').filter((l) => l.startsWith('Error: '));
    expect(errors, r.stderr).toHaveLength(1);
    expect(errors[0]).toMatch(pattern);
    expect(await exists(out)).toBe(false);
    expect(await exists(`${out}.partial`)).toBe(false);
  }

  it('an archive that does not match SHA256SUMS', async () => {
    const bucket = `release-bad-sum-${randomBytes(3).toString('hex')}`;
    const archive = await readFile(join(bed.root, 'fixture', fixture.release.archiveName));
    const b = storage.bucket(bucket);
    await b.file('cartesia-kube/latest/VERSION').save(`${fixture.release.version}\n`);
    await b.file('cartesia-kube/latest/cartesia-kube-latest.tar.gz').save(archive);
    await b.file(`cartesia-kube/releases/${fixture.release.version}/SHA256SUMS`).save(`${'0'.repeat(64)}  ${fixture.release.archiveName}\n`);
    await refused(['--recipe', await recipeFor(bucket)], /has sha256 [a-f0-9]{64}, but SHA256SUMS says 0{64}/);
    // …and one whose SHA256SUMS has no line for it.
    await b.file(`cartesia-kube/releases/${fixture.release.version}/SHA256SUMS`).save(`${sha256(archive)}  something-else.tar.gz\n`);
    await refused(['--recipe', await recipeFor(bucket)], /SHA256SUMS has no line for cartesia-kube-/);
  });

  it('a release bucket without latest/VERSION', async () => {
    const bucket = `release-no-version-${randomBytes(3).toString('hex')}`;
    await storage.bucket(bucket).file('cartesia-kube/releases/x/SHA256SUMS').save('\n');
    await refused(['--recipe', await recipeFor(bucket)], /latest\/VERSION is missing, so there is no latest release; pin one with --release VERSION/);
  });

  it('a malformed service-account key, without echoing it', async () => {
    const key = join(work, 'bad-key.json');
    await writeFile(key, '{"type":"service_account","client_email":"x@y","private_key":"SECRET-NOT-A-KEY"}');
    const out = join(work, 'bad-key.tar');
    const r = await runCli(['bundle', '--output', out, '--key-file', key, '--gcs-endpoint', bed.gcs.endpoint, '--unsigned', '--cache-dir', join(work, 'cache-refusals')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/bad-key\.json is not a service-account JSON key/);
    expect(r.stderr).not.toContain('SECRET-NOT-A-KEY');
    expect(await exists(out)).toBe(false);
  });

  it('an unknown customer bucket', async () => {
    await refused(['--customer', `nobody-${randomBytes(3).toString('hex')}`], /gs:\/\/cartesia-nobody-[a-f0-9]+ has no objects under migrations\/v2\/migrations\/ or loras\/; check --customer/);
  });

  it('bad usage: no signing decision, an unknown model', async () => {
    const out = join(work, 'usage.tar');
    const noKey = await runCli(['bundle', '--output', out, ...sourceArgs]);
    expect(noKey.code).toBe(2);
    expect(noKey.stderr).toMatch(/no --signing-key given/);
    await refused(['--models', 'sonic-9'], /unknown model sonic-9; the recipe knows sonic-3\.5, sonic-3, sonic-2, voice-clone/);
  });
});
