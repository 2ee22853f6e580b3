import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyGraph, type CopyEvent, type CopyOptions } from '../../src/oci/copy.ts';
import { isOciError } from '../../src/oci/errors.ts';
import { DirectoryFiles } from '../../src/oci/layout/directory-files.ts';
import { LayoutReader } from '../../src/oci/layout/reader.ts';
import { INGEST_DIR, LayoutDirectory } from '../../src/oci/layout/writer.ts';
import { parsePlatform } from '../../src/oci/platform.ts';
import type { ReadTarget } from '../../src/oci/types.ts';
import { OCI, PLATFORMS } from '../fixtures/images.ts';
import { LayoutWriter, type Descriptor } from '../fixtures/oci-layout.ts';

const REF_NAME = 'org.opencontainers.image.ref.name';
let root: string;
let n = 0;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'oci-copy-'));
});
afterAll(() => rm(root, { recursive: true, force: true }));

interface Image {
  dir: string;
  index: Descriptor;
  shared: Descriptor;
  arch: Record<string, { manifest: Descriptor; config: Descriptor; own: Descriptor }>;
}

/** A two-platform image built with the fixture writer (not the engine): a shared layer and one own layer each. */
async function buildSource(): Promise<Image> {
  const dir = join(root, `src${++n}`);
  const w = await new LayoutWriter(dir).init();
  const blob = (size: number) => w.putStream(OCI.layer, Readable.from([randomBytes(size)]));
  const shared = await blob(30_000);
  const arch: Image['arch'] = {};
  const manifests: Descriptor[] = [];
  for (const p of PLATFORMS) {
    const own = await blob(p.architecture === 'amd64' ? 100_000 : 60_000);
    const config = await w.putJson(OCI.config, { architecture: p.architecture, os: p.os, rootfs: { type: 'layers', diff_ids: [] } });
    const manifest = await w.putJson(OCI.manifest, { schemaVersion: 2, mediaType: OCI.manifest, config, layers: [shared, own] });
    manifests.push({ ...manifest, platform: { ...p } });
    arch[p.architecture] = { manifest, config, own };
  }
  const index = await w.putJson(OCI.index, { schemaVersion: 2, mediaType: OCI.index, manifests });
  w.addRef(index, 'img:1');
  await w.writeIndex();
  return { dir, index, shared, arch };
}

const hexOf = (d: { digest: string }) => d.digest.slice('sha256:'.length);
const blobFile = (dir: string, d: { digest: string }) => join(dir, 'blobs', 'sha256', hexOf(d));
const exists = (p: string) => stat(p).then(() => true, () => false);
const blobNames = async (dir: string) => (await readdir(join(dir, 'blobs', 'sha256'))).filter((f) => !f.startsWith('.')).sort();
const indexJson = async (dir: string) => JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as { manifests: Descriptor[] };

async function copy(src: Image | ReadTarget, opts: CopyOptions & { dst?: string; ref?: string } = {}) {
  const dst = opts.dst ?? join(root, `dst${++n}`);
  const reader = 'dir' in src ? new LayoutReader(new DirectoryFiles(src.dir)) : src;
  const layout = await LayoutDirectory.open(dst);
  const events: CopyEvent[] = [];
  try {
    const result = await copyGraph(reader, layout, 'img:1', opts.ref ?? 'img:1', { ...opts, onEvent: (e) => events.push(e) });
    return { dst, events, result };
  } catch (err) {
    throw Object.assign(err as Error, { dst, events });
  } finally {
    await layout.close();
  }
}

async function failure(p: Promise<unknown>): Promise<Error & { dst: string; events: CopyEvent[] }> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err, 'expected the copy to fail').toBeInstanceOf(Error);
  return err as Error & { dst: string; events: CopyEvent[] };
}

async function flipByte(file: string, at: number) {
  const bytes = await readFile(file);
  bytes[at] = bytes[at]! ^ 0xff;
  await writeFile(file, bytes);
}

describe('copyGraph between layout directories', () => {
  it('copies a two-platform index: identical blobs, one named index.json entry, nothing left over', async () => {
    const img = await buildSource();
    const { dst, result } = await copy(img);
    expect(await blobNames(dst)).toEqual(await blobNames(img.dir));
    for (const name of await blobNames(img.dir)) {
      expect((await readFile(join(dst, 'blobs', 'sha256', name))).equals(await readFile(join(img.dir, 'blobs', 'sha256', name)))).toBe(true);
    }
    const { manifests } = await indexJson(dst);
    expect(manifests).toEqual([{ mediaType: OCI.index, digest: img.index.digest, size: img.index.size, annotations: { [REF_NAME]: 'img:1' } }]);
    expect(result).toMatchObject({ digest: img.index.digest, blobs: { total: 5, uploaded: 5, mounted: 0, existed: 0 }, manifests: { total: 3, pushed: 3, existed: 0 } });
    expect(result.bytesTransferred).toBe(result.bytesTotal);
    expect(JSON.parse(await readFile(join(dst, 'oci-layout'), 'utf8'))).toEqual({ imageLayoutVersion: '1.0.0' });
    expect(await exists(join(dst, INGEST_DIR))).toBe(false);
    expect(await exists(join(dst, '.cartesia-airgap.lock'))).toBe(false);
  });

  it('emits every blob-done before its manifest, children before the index, and tagged last', async () => {
    const img = await buildSource();
    const { events } = await copy(img);
    const at = (type: CopyEvent['type'], digest: string) => events.findIndex((e) => e.type === type && 'digest' in e && e.digest === digest);
    expect(events[0]?.type).toBe('resolved');
    expect(events.at(-1)).toEqual({ type: 'tagged', reference: 'img:1', digest: img.index.digest });
    expect(events.filter((e) => e.type === 'tagged')).toHaveLength(1);
    for (const a of Object.values(img.arch)) {
      const done = at('manifest-done', a.manifest.digest);
      expect(done).toBeGreaterThan(0);
      for (const b of [a.config, a.own, img.shared]) {
        expect(at('blob-start', b.digest)).toBeLessThan(at('blob-done', b.digest));
        expect(at('blob-done', b.digest)).toBeGreaterThan(0);
        expect(at('blob-done', b.digest)).toBeLessThan(done);
      }
      expect(done).toBeLessThan(at('manifest-done', img.index.digest));
    }
    // The shared layer moves once.
    expect(events.filter((e) => e.type === 'blob-done' && e.digest === img.shared.digest)).toHaveLength(1);
    const bytes = events.filter((e): e is Extract<CopyEvent, { type: 'blob-bytes' }> => e.type === 'blob-bytes' && e.digest === img.arch.amd64!.own.digest);
    expect(bytes.at(-1)?.bytes).toBe(img.arch.amd64!.own.size);
  });

  it('copies only the linux/arm64 manifest when asked, and tags it directly', async () => {
    const img = await buildSource();
    const arm = img.arch.arm64!;
    const { dst, result } = await copy(img, { platform: parsePlatform('linux/arm64') });
    expect(result).toMatchObject({ digest: arm.manifest.digest, platform: 'linux/arm64/v8', indexDigest: img.index.digest });
    expect(await blobNames(dst)).toEqual([arm.manifest, arm.config, arm.own, img.shared].map(hexOf).sort());
    const { manifests } = await indexJson(dst);
    expect(manifests).toHaveLength(1);
    expect(manifests[0]).toMatchObject({ mediaType: OCI.manifest, digest: arm.manifest.digest, annotations: { [REF_NAME]: 'img:1' } });
  });

  it('fails NOT_FOUND naming what the index has when the platform is absent', async () => {
    const err = await failure(copy(await buildSource(), { platform: parsePlatform('linux/s390x') }));
    expect(isOciError(err, 'NOT_FOUND'), String(err)).toBe(true);
    expect(err.message).toContain('linux/amd64, linux/arm64/v8');
    expect(await exists(join(err.dst, 'index.json'))).toBe(false);
  });

  it('checks a single-platform image against --platform through its config', async () => {
    const img = await buildSource();
    const { dst } = await copy(img, { platform: parsePlatform('linux/arm64') });
    const single = new LayoutReader(new DirectoryFiles(dst));
    const again = await copy(single, { platform: parsePlatform('linux/arm64') });
    expect(again.result).toMatchObject({ digest: img.arch.arm64!.manifest.digest, platform: 'linux/arm64' });
    const err = await failure(copy(single, { platform: parsePlatform('linux/amd64') }));
    expect(isOciError(err, 'NOT_FOUND'), String(err)).toBe(true);
    expect(err.message).toContain('is a single linux/arm64 image, not linux/amd64');
  });

  it('reports nothing uploaded on a second copy, and adds a second name without copying', async () => {
    const img = await buildSource();
    const { dst } = await copy(img);
    const again = await copy(img, { dst });
    expect(again.result.blobs).toEqual({ total: 0, uploaded: 0, mounted: 0, existed: 0 });
    expect(again.result.manifests).toEqual({ total: 1, pushed: 0, existed: 1 });
    expect(again.result.bytesTransferred).toBe(0);
    expect(again.events.map((e) => e.type)).toEqual(['resolved', 'manifest-done', 'tagged']);
    await copy(img, { dst, ref: 'img:alias' });
    const names = (await indexJson(dst)).manifests.map((m) => m.annotations?.[REF_NAME]);
    expect(names).toEqual(['img:1', 'img:alias']);
  });

  it('fails DIGEST_MISMATCH on a corrupted source blob, leaving no blob file and no index entry', async () => {
    const img = await buildSource();
    const bad = img.arch.arm64!.own;
    await flipByte(blobFile(img.dir, bad), 1000);
    const err = await failure(copy(img));
    expect(isOciError(err, 'DIGEST_MISMATCH'), String(err)).toBe(true);
    expect(err.message).toContain(bad.digest);
    await sleep(300); // let transfers that were still running finish (see the in-flight test below)
    expect(await exists(blobFile(err.dst, bad))).toBe(false);
    expect(await exists(join(err.dst, INGEST_DIR, hexOf(bad)))).toBe(false);
    expect(await exists(blobFile(err.dst, img.arch.arm64!.manifest))).toBe(false);
    expect(await exists(blobFile(err.dst, img.index))).toBe(false);
    expect((await indexJson(err.dst)).manifests).toEqual([]);
    expect(err.events.some((e) => e.type === 'tagged')).toBe(false);
  });

  it('fails DIGEST_MISMATCH on a corrupted source manifest', async () => {
    const img = await buildSource();
    await flipByte(blobFile(img.dir, img.arch.amd64!.manifest), 5);
    const err = await failure(copy(img));
    expect(isOciError(err, 'DIGEST_MISMATCH'), String(err)).toBe(true);
    expect(err.message).toContain(img.arch.amd64!.manifest.digest);
  });

  // The copy command closes the layout when copyGraph returns: nothing may still be running then.
  it('settles every transfer before rejecting: no source reads after copyGraph fails', async () => {
    const img = await buildSource();
    await flipByte(blobFile(img.dir, img.arch.arm64!.own), 10);
    const reader = new LayoutReader(new DirectoryFiles(img.dir));
    const activity: string[] = [];
    const slow: ReadTarget = {
      description: reader.description,
      resolve: (r) => reader.resolve(r),
      fetchManifest: (d) => reader.fetchManifest(d),
      openBlob: async (d, o) => {
        activity.push(`open ${d.digest}`);
        if (d.digest === img.arch.amd64!.own.digest) await sleep(500);
        activity.push(`opened ${d.digest}`);
        return reader.openBlob(d, o);
      },
    };
    const err = await failure(copy(slow));
    expect(isOciError(err, 'DIGEST_MISMATCH')).toBe(true);
    const seen = activity.length;
    await sleep(1_000);
    expect(activity.slice(seen)).toEqual([]);
  });
});

describe('LayoutDirectory resume and lock', () => {
  it('resumes a partial blob left in the ingest directory, reading only the rest', async () => {
    const img = await buildSource();
    const big = img.arch.amd64!.own;
    const dst = join(root, `dst${++n}`);
    await mkdir(join(dst, INGEST_DIR), { recursive: true });
    const half = Math.floor(big.size / 2);
    await writeFile(join(dst, INGEST_DIR, hexOf(big)), (await readFile(blobFile(img.dir, big))).subarray(0, half));
    const { events, result } = await copy(img, { dst });
    const done = events.find((e) => e.type === 'blob-done' && e.digest === big.digest);
    expect(done).toMatchObject({ how: 'uploaded', bytesTransferred: big.size - half });
    expect(result.bytesTransferred).toBe(result.bytesTotal - half);
    expect((await readFile(blobFile(dst, big))).equals(await readFile(blobFile(img.dir, big)))).toBe(true);
    expect(await exists(join(dst, INGEST_DIR))).toBe(false);
  });

  it('finishes a partial that already holds every byte without reading the source', async () => {
    const img = await buildSource();
    const big = img.arch.amd64!.own;
    const dst = join(root, `dst${++n}`);
    await mkdir(join(dst, INGEST_DIR), { recursive: true });
    await writeFile(join(dst, INGEST_DIR, hexOf(big)), await readFile(blobFile(img.dir, big)));
    const { events } = await copy(img, { dst });
    expect(events.find((e) => e.type === 'blob-done' && e.digest === big.digest)).toMatchObject({ how: 'uploaded', bytesTransferred: 0 });
    expect((await readFile(blobFile(dst, big))).equals(await readFile(blobFile(img.dir, big)))).toBe(true);
  });

  it('throws away a partial longer than the blob and copies it whole', async () => {
    const img = await buildSource();
    const cfg = img.arch.amd64!.config;
    const dst = join(root, `dst${++n}`);
    await mkdir(join(dst, INGEST_DIR), { recursive: true });
    await writeFile(join(dst, INGEST_DIR, hexOf(cfg)), randomBytes(cfg.size + 10));
    const { events } = await copy(img, { dst });
    expect(events.find((e) => e.type === 'blob-done' && e.digest === cfg.digest)).toMatchObject({ bytesTransferred: cfg.size });
    expect((await readFile(blobFile(dst, cfg))).equals(await readFile(blobFile(img.dir, cfg)))).toBe(true);
  });

  // A partial left on disk may itself be the damaged part: start over before blaming the source.
  it('recovers from a corrupt partial by starting the blob over', async () => {
    const img = await buildSource();
    const big = img.arch.amd64!.own;
    const dst = join(root, `dst${++n}`);
    await mkdir(join(dst, INGEST_DIR), { recursive: true });
    await writeFile(join(dst, INGEST_DIR, hexOf(big)), randomBytes(1000));
    const { result } = await copy(img, { dst });
    expect(result.digest).toBe(img.index.digest);
  });

  it('refuses a layout locked by another live process with BUSY, and takes over a stale lock', async () => {
    const img = await buildSource();
    const busy = join(root, `dst${++n}`);
    await mkdir(busy, { recursive: true });
    await writeFile(join(busy, '.cartesia-airgap.lock'), `${process.ppid}\n`);
    const err = await failure(copy(img, { dst: busy }));
    expect(isOciError(err, 'BUSY'), String(err)).toBe(true);
    expect(err.message).toContain(String(process.ppid));
    expect(await readFile(join(busy, '.cartesia-airgap.lock'), 'utf8')).toBe(`${process.ppid}\n`);

    const stale = join(root, `dst${++n}`);
    await mkdir(stale, { recursive: true });
    const dead = spawnSync(process.execPath, ['-e', '0']).pid;
    await writeFile(join(stale, '.cartesia-airgap.lock'), `${dead}\n`);
    const { result } = await copy(img, { dst: stale });
    expect(result.digest).toBe(img.index.digest);
    expect(await exists(join(stale, '.cartesia-airgap.lock'))).toBe(false);
  });
});
