import { randomBytes } from 'node:crypto';
import { mkdir, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, inject, it } from 'vitest';
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
  size: number;
  upToDate: boolean;
  transferred: { release: number; images: number; artifacts: number };
}

const args = (out: string, cache: string, extra: string[] = []) => ['bundle', '--output', out, ...sourceArgs, '--customer', fixture.customer, '--signing-key', join(keys, 'bundle.key'), '--cache-dir', cache, '--json', ...extra];

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
    expect(JSON.parse(again.stdout)).toMatchObject({ upToDate: true, sha256: null, size: direct.size, transferred: { images: 0, artifacts: 0 } });
    const after = await stat(directOut);
    expect([after.ino, after.mtimeMs]).toEqual([before.ino, before.mtimeMs]);

    const other = await runCli(args(directOut, directCache, ['--direct', '--models', 'sonic-3']));
    expect(other.code).toBe(1);
    expect(errorLines(other).filter((l) => l.startsWith('Error:'))).toEqual([`Error: ${directOut} already exists and holds a different bundle; choose another --output or move the old one away`]);
    expect(other.stderr).not.toMatch(/Images ready/);
    expect(await fileSha(directOut)).toBe(cached.sha256);
  });

  it('killed mid-fetch: nothing under the final name; the next run replaces the partial file and gives the same bytes', async () => {
    const out = join(work, 'killed.tar');
    const partial = `${out}.partial`;
    const { child, done } = startCli(args(out, join(work, 'killed-cache'), ['--direct']));
    // Killed once the partial file exists and the fetch has begun filling it.
    const killed = (async () => {
      for (let i = 0; i < 600; i++) {
        const s = await stat(partial).catch(() => undefined);
        if (s && s.blocks > 64) return child.kill('SIGKILL');
        await new Promise((r) => setTimeout(r, 5));
      }
      return false;
    })();
    const r = await done;
    expect(await killed, 'the run ended before it could be killed').toBe(true);
    expect(r.signal).toBe('SIGKILL');
    expect(await exists(out)).toBe(false);
    expect(await exists(partial)).toBe(true);

    const again = await runCli(args(out, join(work, 'killed-cache'), ['--direct']));
    expect(again.code, again.stderr).toBe(0);
    expect((JSON.parse(again.stdout) as Summary).sha256).toBe(cached.sha256);
    expect(await exists(partial)).toBe(false);
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
