import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, inject, it } from 'vitest';
import { openBundle } from '../../src/bundle/reader.ts';
import { run } from '../testbed/run.ts';
import { errorLines, runCli, startCli } from './cli.ts';

const bed = inject('testbed');
const fixture = inject('fixture');
const work = join(bed.root, `direct-test-${randomBytes(3).toString('hex')}`);
const keys = join(work, 'keys');
const sourceArgs = ['--key-file', bed.saKeyFile, '--gcs-endpoint', bed.gcs.endpoint, '--source-registry', `${bed.source.host}/${bed.source.prefix}`, '--source-ca-file', bed.caFile];
const exists = (p: string) => stat(p).then(() => true, () => false);
const fileSha = async (p: string) => (await run('sha256sum', [p])).split(' ')[0];

interface Summary {
  sha256: string | null;
  manifestSha256: string;
  size: number;
  upToDate: boolean;
  transferred: { release: number; images: number; artifacts: number };
}

const args = (out: string, cache: string, extra: string[] = []) => ['bundle', '--output', out, ...sourceArgs, '--customer', fixture.customer, '--signing-key', join(keys, 'bundle.key'), '--cache-dir', cache, '--json', ...extra];

/** An image manifest or index (not a config blob, which is JSON too). */
function isManifest(bytes: Buffer): boolean {
  try {
    const doc = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
    return Array.isArray(doc.layers) || Array.isArray(doc.manifests);
  } catch {
    return false;
  }
}

/** Files under `dir` (recursively), or [] when it does not exist. */
async function filesUnder(dir: string): Promise<string[]> {
  const all = (await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => [])) as { isFile(): boolean; name: string }[];
  return all.filter((e) => e.isFile()).map((e) => e.name);
}

beforeAll(async () => {
  await mkdir(work, { recursive: true });
  expect((await runCli(['keys', 'generate', '--out', keys])).code).toBe(0);
});

describe('bundle --direct: images and artifacts straight into the bundle', () => {
  let cached: Summary;
  let direct: Summary;
  const cachedOut = join(work, 'cached.tar');
  const directOut = join(work, 'direct.tar');
  const directCache = join(work, 'direct-cache');

  it('writes the same bytes as a bundle made through the cache, and leaves no image or artifact in the cache', async () => {
    const a = await runCli(args(cachedOut, join(work, 'cache')));
    expect(a.code, a.stderr).toBe(0);
    cached = JSON.parse(a.stdout) as Summary;
    const b = await runCli(args(directOut, directCache, ['--direct']));
    expect(b.code, b.stderr).toBe(0);
    direct = JSON.parse(b.stdout) as Summary;
    expect(direct.sha256).toBe(cached.sha256);
    expect(direct.manifestSha256).toBe(cached.manifestSha256);
    expect(direct.manifestSha256).toBe(createHash('sha256').update((await openBundle(directOut)).manifestBytes).digest('hex'));
    expect(await fileSha(directOut)).toBe(cached.sha256);
    expect(direct.size).toBe((await stat(directOut)).size);
    // Every byte came over the network once, none through the cache.
    expect(direct.transferred.images).toBe(cached.transferred.images);
    expect(direct.transferred.artifacts).toBe(cached.transferred.artifacts);
    expect(await filesUnder(join(directCache, 'images', 'blobs'))).toEqual([]);
    // The release (a few small files) is still fetched through the cache; no customer artifact is.
    const customer = fixture.objects.filter((o) => o.bucket === `cartesia-${fixture.customer}`).map((o) => o.sha256);
    const inCache = await filesUnder(join(directCache, 'objects', 'sha256'));
    expect(inCache.length).toBeGreaterThan(0);
    expect(inCache.filter((h) => customer.includes(h))).toEqual([]);
    expect(await readdir(work)).not.toContain('direct.tar.partial');
    // An independent reader agrees it is a whole, well-formed bundle.
    const v = await runCli(['verify', directOut, '--public-key', join(keys, 'bundle.pub')]);
    expect(v.code, v.stderr).toBe(0);
  });

  it('a re-run onto its own output fetches nothing; a different bundle there is refused before any download', async () => {
    const before = await stat(directOut);
    const again = await runCli(args(directOut, directCache, ['--direct']));
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ upToDate: true, sha256: null, manifestSha256: direct.manifestSha256, size: direct.size, transferred: { images: 0, artifacts: 0 } });
    const after = await stat(directOut);
    expect([after.ino, after.mtimeMs]).toEqual([before.ino, before.mtimeMs]);

    const other = await runCli(args(directOut, directCache, ['--direct', '--models', 'sonic-3']));
    expect(other.code).toBe(1);
    expect(errorLines(other).filter((l) => l.startsWith('Error:'))).toEqual([`Error: ${directOut} already exists and holds a different bundle; choose another --output or move the old one away`]);
    expect(other.stderr).not.toMatch(/Images ready/);
    expect(await fileSha(directOut)).toBe(cached.sha256);
  });

  it('killed mid-fetch: nothing under the final name; the re-run fetches only what had not landed whole, and gives the same bytes', async () => {
    const out = join(work, 'killed.tar');
    const partial = `${out}.partial`;
    const journal = `${partial}.done`;
    const landed = async () => (await readFile(journal, 'utf8').catch(() => '')).split('\n').slice(1).filter(Boolean);
    const { child, done } = startCli(args(out, join(work, 'killed-cache'), ['--direct']));
    // Killed once a few entries have landed whole, while others are still arriving.
    const killed = (async () => {
      for (let i = 0; i < 2000; i++) {
        if ((await landed()).length >= 3) return child.kill('SIGKILL');
        await new Promise((r) => setTimeout(r, 2));
      }
      return false;
    })();
    const r = await done;
    expect(await killed, 'the run ended before it could be killed').toBe(true);
    expect(r.signal).toBe('SIGKILL');
    expect(await exists(out)).toBe(false);
    const kept = new Map((await landed()).map((l) => [l.slice(65), l.slice(0, 64)] as const));
    expect(kept.size).toBeGreaterThan(0);

    const again = await runCli(args(out, join(work, 'killed-cache'), ['--direct']));
    expect(again.code, again.stderr).toBe(0);
    const summary = JSON.parse(again.stdout) as Summary;
    expect(summary.sha256).toBe(cached.sha256);
    expect(await exists(partial)).toBe(false);
    expect(await exists(journal)).toBe(false);
    // What had landed was re-hashed and kept: the re-run moved everything else, and nothing of it.
    // (Manifests are not counted as transferred bytes; configs and layers are.)
    const x = join(work, 'killed-x');
    await mkdir(x);
    await run('tar', ['-xf', out, '-C', x]);
    let keptBlobs = 0;
    let keptArtifacts = 0;
    for (const [path, sha] of kept) {
      const bytes = await readFile(join(x, path));
      expect(createHash('sha256').update(bytes).digest('hex'), path).toBe(sha);
      if (path.startsWith('artifacts/')) keptArtifacts += bytes.length;
      else if (!isManifest(bytes)) keptBlobs += bytes.length;
    }
    expect(keptBlobs + keptArtifacts).toBeGreaterThan(0);
    expect(summary.transferred.images).toBe(cached.transferred.images - keptBlobs);
    expect(summary.transferred.artifacts).toBe(cached.transferred.artifacts - keptArtifacts);
  });

  it('refuses --direct with --split-size or --base (one file, no delta)', async () => {
    for (const extra of [['--split-size', 'dvd'], ['--base', cachedOut]]) {
      const r = await runCli(args(join(work, 'never.tar'), directCache, ['--direct', ...extra]));
      expect(r.code, extra[0]).toBe(2);
      expect(r.stderr).toMatch(new RegExp(`--${extra[0]!.slice(2)}=.* cannot also be provided when using --direct|--direct=.* cannot also be provided when using ${extra[0]}`));
      expect(await exists(join(work, 'never.tar'))).toBe(false);
    }
  });
});
