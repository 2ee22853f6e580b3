/** The steps of a bundle written in place (direct.ts), with the cache or `--direct`, as the bundle phases call them. */
import { rm, stat } from 'node:fs/promises';
import pLimit from 'p-limit';
import { LayoutDirectory } from '../oci/layout/writer.ts';
import { mapBounded, mapBySize } from '../util/bounded.ts';
import { SMALL_LANES, SMALL_OBJECT } from '../objects/cache.ts';
import { digestHex } from '../oci/digest.ts';
import type { Descriptor } from '../oci/types.ts';
import { bundleContent } from './content.ts';
import { manifestSha256Of } from './manifest.ts';
import { fetchImages, fetchOrder } from './images.ts';
import { closeDirect, finishDirect, openDirect, PLACEHOLDER, writeHead } from './direct.ts';
import { BundleSlots, fetchObjectInto, fillLocal } from './direct-fill.ts';
import { openBundle } from './reader.ts';
import type { BundleContext, BundleOptions } from './tasks.ts';
import { bundleHead, bundleJson, checkEntries, checkMtime, existingBundle, type WriteBundleResult } from './writer.ts';


/** The signing key, for the options of bundleJson and bundleHead (which name the signer in bundle.json). */
const signing = (o: BundleOptions) => (o.signingKey ? { signingKey: o.signingKey } : {});

/**
 * Fixes every entry's place and opens the partial file. When the output already holds a bundle,
 * its artifacts' sha256 stand in for the ones not fetched yet wherever the store reports the same
 * version (size, md5, crc32c): an identical bundle is then found before any byte is downloaded,
 * and a different one refused.
 */
export async function planDirect(o: BundleOptions, ctx: BundleContext): Promise<void> {
  ctx.carried = ctx.objects!.map((info) => ({ ...info, sha256: PLACEHOLDER }));
  if (await stat(o.output).then(() => true, () => false)) {
    const old = await openBundle(o.output).catch(() => undefined);
    const known = new Map((old?.manifest.artifacts ?? []).map((a) => [`${a.bucket}/${a.key}`, a]));
    const adopted = ctx.carried.map((c) => {
      const was = known.get(`${c.bucket}/${c.key}`);
      const same = was && was.size === c.size && was.md5 === c.md5 && was.crc32c === c.crc32c && (c.md5 !== undefined || c.crc32c !== undefined);
      return same ? { ...c, sha256: was.sha256 } : c;
    });
    const c = await bundleContent(o, ctx, adopted);
    const { json, manifest } = bundleJson({ ...c, ...signing(o) });
    const size = await existingBundle(o.output, json, o.signingKey, old); // throws when it holds another bundle
    ctx.result = { path: o.output, size: size!, sha256: null, manifest, manifestSha256: manifestSha256Of(json), upToDate: true };
    await rm(`${o.output}.partial.done`, { force: true }); // left only by a kill between the rename and its removal
    return;
  }
  const c = await bundleContent(o, ctx, ctx.carried);
  const { entries, mtime } = c;
  const head = bundleHead({ manifest: c.manifest, entries, ...signing(o) });
  checkMtime(mtime);
  checkEntries(entries);
  // An artifact overwritten since an interrupted run makes that run's partial file useless.
  const versions = ctx.objects!.map((x) => `${x.bucket}/${x.key} ${x.size} ${x.generation ?? ''} ${x.md5 ?? ''} ${x.crc32c ?? ''}`);
  ctx.direct = await openDirect(o.output, head.head, entries, mtime, versions);
  try {
    await fillLocal(ctx.direct, entries, fetchedPaths(ctx));
  } catch (err) {
    await closeDirect(ctx.direct);
    throw err;
  }
}

/** The entries the fetch fills: artifacts, image blobs and manifests. */
function fetchedPaths(ctx: BundleContext): Set<string> {
  const paths = new Set<string>(ctx.carried!.map((c) => `artifacts/${c.bucket}/${c.key}`));
  for (const p of ctx.planned!) for (const d of [...p.graph.manifests, ...p.graph.blobs]) paths.add(pathOf(d));
  return paths;
}

/**
 * Each planned image's manifests and blobs into their places (every one once, however many images
 * share it), mostly in the order they lie in the file, so the whole-file hash can follow close behind.
 * One at a time until `artifacts` settles, then `concurrency`: bundle.json lists the artifacts'
 * sha256 and the hash starts only once it is written, so the artifacts go first without leaving
 * the registry idle. The plan walked every graph already: nothing is left to discover. With a
 * cache, blobs it holds are copied from it, the others fetched into both; its manifests and tags
 * are stored last, as a cache may hold a manifest only with all it points to.
 */
export async function fetchImagesDirect(ctx: BundleContext, concurrency: number, artifacts: Promise<unknown>, progress: (bytes: number) => void, cache?: LayoutDirectory): Promise<void> {
  const d = ctx.direct!;
  const slots = new BundleSlots(d, cache);
  const lanes = pLimit(1);
  void artifacts.finally(() => (lanes.concurrency = concurrency)).catch(() => {});
  const order = fetchOrder(ctx.planned!, (desc) => d.places.get(pathOf(desc))!.offset);
  ctx.imageBytesFetched = 0;
  try {
    await mapBounded(order, lanes, async ({ desc, manifest, repository, uses }) => {
      if (manifest) {
        if (!(await slots.hasManifest(desc))) await slots.pushManifest(desc, await repository.fetchManifest(desc));
      } else {
        const r = await slots.pushBlob(desc, (offset) => repository.openBlob(desc, offset));
        ctx.imageBytesFetched += r.bytesTransferred; // not `+= await`: that would add to the value read before the wait
      }
      progress(desc.size * uses); // as each image that has it would count it
    });
    if (cache) await fetchImages(ctx.planned!, cache, { concurrency });
  } finally {
    await cache?.close();
  }
}

const pathOf = (desc: Descriptor) => `images/blobs/sha256/${digestHex(desc.digest)}`;

/**
 * Images and artifacts side by side, artifacts first (see fetchImagesDirect): [images, artifacts].
 * Through the cache unless --direct.
 */
export function fetchDirect(o: BundleOptions, ctx: BundleContext, imagesDir: string, progress: (bytes: number) => void): [Promise<void>, Promise<void>] {
  const artifacts = fetchArtifactsDirect(o, ctx, progress);
  const images = (async () => fetchImagesDirect(ctx, o.concurrency, artifacts, progress, o.direct ? undefined : await LayoutDirectory.open(imagesDir)))();
  return [images, artifacts];
}

/** Each listed artifact into its place; its sha256 recorded for bundle.json. */
export async function fetchArtifactsDirect(o: BundleOptions, ctx: BundleContext, progress: (bytes: number) => void): Promise<void> {
  await mapBySize(ctx.carried!, (c) => c.size, { small: SMALL_OBJECT, lanes: o.concurrency, smallLanes: SMALL_LANES * o.concurrency }, async (c) => {
    const path = `artifacts/${c.bucket}/${c.key}`;
    const had = ctx.direct!.done.get(path);
    if (had) {
      c.sha256 = had; // landed whole before an interruption, and re-hashed since
      progress(c.size);
      return;
    }
    const got = await fetchObjectInto(o.gcs, c, ctx.direct!, path, o.direct ? undefined : o.cacheDir);
    c.sha256 = got.sha256;
    if (got.fetched) ctx.objectBytesFetched += c.size;
    progress(c.size);
  });
  // Every sha256 bundle.json lists is known now: it can be written, and the whole-file hash start.
  const { entries, manifest, mtime } = await bundleContent(o, ctx, ctx.carried!);
  const { head, manifest: full } = bundleHead({ manifest, entries, ...signing(o) });
  await writeHead(ctx.direct!, head, mtime, full);
}

/** The hash of the whole file (mostly taken while fetching), then the rename. */
export async function writeDirect(o: BundleOptions, ctx: BundleContext): Promise<WriteBundleResult> {
  const tar = await finishDirect(ctx.direct!);
  return { path: o.output, size: tar.size, sha256: tar.sha256, manifest: tar.manifest, manifestSha256: tar.manifestSha256, upToDate: false };
}
