import { mib } from '../util/format.ts';
import { mkdir, readdir, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { KeyObject } from 'node:crypto';
import type { ListrTask } from 'listr2';
import { OciError } from '../oci/errors.ts';
import { throttledOutput } from '../progress/throttle.ts';
import type { Transport } from '../oci/http/transport.ts';
import { LayoutDirectory } from '../oci/layout/writer.ts';
import { parseReference } from '../oci/reference.ts';
import type { Platform } from '../oci/types.ts';
import { syncPrefix } from '../objects/cache.ts';
import type { CachedObject, ObjectInfo, ObjectSource } from '../objects/types.ts';
import { openSignedManifest, type SignedManifest } from './base.ts';
import { savedBytes } from './delta.ts';
import { fetchImages, planImages, shortName, type ImageSpec, type PlannedImage, SourceRegistries } from './images.ts';
import { checkSpace, explainNoSpace } from './plan.ts';
import type { Installer } from './installer.ts';
import { selectImages, type LoadedRecipe } from './recipe.ts';
import { resolveRelease, type ResolvedRelease } from './release.ts';
import { writeVolumes } from './volume-writer.ts';
import { parseVolumeFile } from './volumes.ts';
import { openBundle } from './reader.ts';
import { writeBundle, type WriteBundleResult } from './writer.ts';
import { bundleContent, type CarriedObject } from './content.ts';
import { closeDirect, type DirectBundle } from './direct.ts';
import { fetchDirect, planDirect, writeDirect } from './direct-tasks.ts';
import { Arrivals, prefetchBlobs } from './arrivals.ts';
import pLimit, { type LimitFunction } from 'p-limit';

export interface BundleOptions {
  recipe: LoadedRecipe;
  gcs: ObjectSource;
  transport: Transport;
  registries: SourceRegistries;
  release: string;
  releaseTag?: string;
  models?: string[];
  platform?: Platform;
  /** `HOST/PATH` the Cartesia images are pulled from (the recipe's, or a mirror). */
  sourceRegistry: string;
  customer?: { name?: string; bucket: string };
  cacheDir: string;
  output: string;
  /** Split into volumes of at most this many bytes (--split-size). */
  splitSize?: number;
  signingKey?: KeyObject;
  /** Cut a delta against this earlier bundle, trusted once its signature verifies with `publicKey`. */
  base?: { file: string; publicKey: KeyObject };
  concurrency: number;
  toolVersion: string;
  /** The executable to carry in tool/; absent with --no-installer. */
  installer?: Installer;
  /** Leave the cache out: images and artifacts go only into the bundle (direct.ts). */
  direct?: boolean;
}

/**
 * A single-file bundle that is not a delta is written in place (direct.ts): every entry's place is
 * fixed first and each byte goes there as it arrives (and into the cache, unless --direct). Volumes
 * and deltas are written from the cache once it holds everything.
 */
export const writesInPlace = (o: BundleOptions): boolean => o.direct === true || (o.splitSize === undefined && !o.base);

export interface BundleContext {
  base?: SignedManifest;
  release?: ResolvedRelease;
  planned?: PlannedImage[];
  objects?: ObjectInfo[];
  cached?: CachedObject[];
  /** Bytes downloaded by this run (what was cached already is not counted). */
  releaseBytesFetched: number;
  imageBytesFetched: number;
  objectBytesFetched: number;
  /** From the plan: image bytes not in the cache yet, and the bundle's size (each blob once). */
  imageBytesMissing?: number;
  bundleBytes?: number;
  result?: WriteBundleResult;
  /** The open file of a bundle written in place, and its artifacts (sha256 filled in as each arrives). */
  direct?: DirectBundle;
  carried?: CarriedObject[];
  /** A cached single-file bundle being written while the images arrive; `progress` set by the write phase. */
  writing?: { result: Promise<WriteBundleResult>; progress?: (done: number, total: number) => void };
}


/** Progress text: bytes, rate and time left, throttled. */
function meter(task: { output?: string }, total: number, what = '') {
  const started = Date.now();
  const show = throttledOutput(task);
  return (done: number) => {
    const rate = done / Math.max((Date.now() - started) / 1000, 0.001);
    const eta = rate > 0 ? Math.max(0, (total - done) / rate) : 0;
    show(`${what}${mib(done)} of ${mib(total)}, ${mib(rate)}/s, ${Math.round(eta)} s left`, done >= total);
  };
}

/**
 * Every image into the cache's layout: the blobs in the order the bundle writer reads them (see
 * arrivals.ts), then the manifests and tags. `arrivals` hears of each blob, and of a failure.
 */
async function fetchImagesTask(o: BundleOptions, ctx: BundleContext, imagesDir: string, progress: (bytes: number) => void, lanes: LimitFunction, arrivals: Arrivals): Promise<void> {
  let done = 0;
  try {
    await mkdir(imagesDir, { recursive: true });
    const cache = await LayoutDirectory.open(imagesDir);
    try {
      ctx.imageBytesFetched = await prefetchBlobs(ctx.planned!, cache, lanes, arrivals, (n) => progress((done += n, n)));
      // Every blob is in: this stores the manifests, children before parents, and the cache's tags.
      const results = await fetchImages(ctx.planned!, cache, { concurrency: o.concurrency });
      ctx.imageBytesFetched += results.reduce((n, r) => n + r.bytesTransferred, 0);
    } finally {
      await cache.close();
    }
  } catch (err) {
    arrivals.fail(err);
    throw await explainNoSpace(err, { dir: imagesDir, doing: 'fetching the images into the cache', flag: '--cache-dir', needed: Math.max(0, (ctx.imageBytesMissing ?? 0) - done) });
  }
}

/** The customer's artifacts into the object cache (progress in bytes, as objects complete). */
async function fetchArtifactsTask(o: BundleOptions, ctx: BundleContext, progress: (bytes: number) => void): Promise<void> {
  const total = ctx.objects!.reduce((n, x) => n + x.size, 0);
  let done = 0;
  ctx.cached = await syncPrefix(o.gcs, o.customer!.bucket, o.recipe.recipe.customer.prefixes, o.cacheDir, {
    concurrency: o.concurrency,
    listed: ctx.objects!, // the plan sized exactly these
    onObject: (c) => {
      if (c.fetched) ctx.objectBytesFetched += c.size;
      done += c.size;
      progress(c.size);
    },
  }).catch(async (err: unknown) => {
    throw await explainNoSpace(err, { dir: o.cacheDir, doing: 'fetching the customer artifacts into the cache', flag: '--cache-dir', needed: Math.max(0, total - done) });
  });
}

/** The phases of `bundle` (DESIGN.md §2: the command parses flags and runs these). */
export function bundleTasks(o: BundleOptions): ListrTask<BundleContext>[] {
  const { recipe } = o.recipe;
  const imagesDir = join(o.cacheDir, 'images');
  return [
    {
      title: 'Read the base bundle and check its signature',
      skip: () => !o.base && 'no --base given',
      task: async (ctx, task) => {
        const { file, publicKey } = o.base!;
        try {
          ctx.base = await openSignedManifest(file, publicKey);
        } catch (err) {
          // One line that says which bundle it is about; the code (VERIFY, IO) is kept.
          (err as Error).message = `the base ${file}: ${(err as Error).message}`;
          throw err;
        }
        const m = ctx.base.manifest;
        task.title = `Base: release ${m.release.version} (tag ${m.release.tag}), signed by ${ctx.base.verifiedBy}${m.base ? ', itself a delta' : ''}`;
      },
    },
    {
      title: 'Resolve the release and check it against SHA256SUMS',
      task: async (ctx, task) => {
        ctx.release = await resolveRelease(o.gcs, recipe, o.release, o.cacheDir, o.releaseTag ? { releaseTag: o.releaseTag } : {}).catch(async (err: unknown) => {
          throw await explainNoSpace(err, { dir: o.cacheDir, doing: 'fetching the release into the cache', flag: '--cache-dir' });
        });
        const r = ctx.release;
        ctx.releaseBytesFetched = [r.archive, r.sums, ...(r.versionFile ? [r.versionFile] : [])].reduce((n, x) => n + (x.fetched ? x.size : 0), 0);
        task.title = `Release ${ctx.release.version} (tag ${ctx.release.tag}) checked against SHA256SUMS`;
      },
    },
    {
      title: 'Plan the images and artifacts',
      task: async (ctx, task) => {
        const tag = ctx.release!.tag;
        const specs: ImageSpec[] = selectImages(recipe, o.models).map((i) => ({ name: i.name, source: parseReference(`${o.sourceRegistry}/${i.name}:${tag}`) }));
        const nats = parseReference(ctx.release!.nats);
        specs.push({ name: shortName(nats), source: nats });
        ctx.planned = await planImages(specs, o.registries, o.platform);
        ctx.objects = [];
        if (o.customer) {
          for (const prefix of recipe.customer.prefixes) for await (const info of o.gcs.list(o.customer.bucket, prefix)) ctx.objects.push(info);
          // An empty customer bucket is almost always a mistyped name (and GCS emulators answer an
          // unknown bucket with an empty list rather than a 404).
          if (ctx.objects.length === 0) {
            throw new OciError('NOT_FOUND', `gs://${o.customer.bucket} has no objects under ${recipe.customer.prefixes.join(' or ')}; check --customer / --customer-bucket`);
          }
        }
        const cache = await LayoutDirectory.open(imagesDir);
        let missing = 0;
        // The bundle's layout holds each blob once, however many images share it.
        let distinct = 0;
        const seen = new Set<string>();
        for (const p of ctx.planned) {
          for (const d of [...p.graph.manifests, ...p.graph.blobs]) {
            if (seen.has(d.digest)) continue;
            seen.add(d.digest);
            distinct += d.size;
            if (!(await cache.hasBlob(d))) missing += d.size;
          }
        }
        const objectBytes = ctx.objects.reduce((n, x) => n + x.size, 0);
        const imageBytes = ctx.planned.reduce((n, p) => n + p.graph.size, 0);
        const bundleBytes = distinct + objectBytes + ctx.release!.archive.size;
        if (o.direct) missing = distinct; // the cache is neither read nor written
        ctx.imageBytesMissing = missing;
        ctx.bundleBytes = bundleBytes;
        // Objects already cached are not known until fetched; count them all (the cache dedupes).
        await checkSpace([
          ...(o.direct ? [] : [{ dir: o.cacheDir, bytes: missing + objectBytes, what: 'cache', flag: '--cache-dir' }]),
          { dir: dirname(o.output), bytes: bundleBytes, what: 'bundle', flag: '--output' },
        ]);
        task.title = `${ctx.planned.length} images (${mib(imageBytes)}, ${mib(missing)} to fetch), ${ctx.objects.length} artifacts (${mib(objectBytes)})`;
        if (writesInPlace(o)) await planDirect(o, ctx);
      },
    },
    {
      // Images come from the registry, artifacts from GCS: two servers, kept busy at once.
      title: 'Fetch the images and the customer artifacts',
      skip: (ctx) => ctx.result?.upToDate === true && `${o.output} is already this bundle`,
      task: async (ctx, task) => {
        const imageTotal = ctx.planned!.reduce((n, p) => n + p.graph.size, 0);
        const objectTotal = o.customer ? ctx.objects!.reduce((n, x) => n + x.size, 0) : 0;
        const show = meter(task, imageTotal + objectTotal);
        let done = 0;
        const progress = (n: number): void => show((done += n));
        // Both run to their end, so a failure is reported the same way whichever came first
        // (images before artifacts), and what either finished stays in the cache for the re-run.
        const [images, artifacts] = await Promise.allSettled(ctx.direct ? fetchDirect(o, ctx, imagesDir, progress) : fetchCached(o, ctx, imagesDir, progress));
        const failed = images.status === 'rejected' ? images.reason : artifacts.status === 'rejected' ? artifacts.reason : undefined;
        if (failed !== undefined && ctx.direct) {
          await closeDirect(ctx.direct);
          const cache = o.direct ? {} : { or: { dir: o.cacheDir, flag: '--cache-dir' } };
          const doing = o.direct ? `writing ${o.output}` : `fetching into ${o.output} and the cache`;
          throw await explainNoSpace(failed, { dir: dirname(o.output), doing, flag: '--output', needed: ctx.bundleBytes ?? 0, ...cache });
        }
        // The writer stops at the first blob that will not come; its partial file is gone before this reports.
        if (failed !== undefined) await ctx.writing?.result.catch(() => {});
        if (failed !== undefined) throw failed;
        const fromCache = `${mib(Math.max(0, imageTotal - ctx.imageBytesFetched))} from the cache or shared`;
        const objects = o.customer ? `; ${(ctx.cached ?? ctx.carried)!.length} artifacts fetched and verified (${mib(ctx.objectBytesFetched)} transferred)` : '; no --customer or --customer-bucket given, no artifacts';
        task.title = `Images ready (${mib(ctx.imageBytesFetched)} transferred, ${fromCache})${objects}`;
      },
    },
    {
      title: 'Write the bundle',
      task: async (ctx, task) => {
        let show: ((done: number) => void) | undefined;
        let hashing: ((done: number) => void) | undefined;
        const progress = (done: number, total: number) => (show ??= meter(task, total))(done);
        if (ctx.writing) ctx.writing.progress = progress;
        ctx.result ??= await (ctx.writing?.result ?? writeOut(o, ctx, progress, (done, total) => (hashing ??= meter(task, total, 'hashing the pieces of entries larger than a volume: '))(done))).catch(async (err: unknown) => {
          throw await explainNoSpace(err, { dir: dirname(o.output), doing: `writing ${o.output}`, flag: '--output', ...(ctx.bundleBytes !== undefined ? { needed: ctx.bundleBytes } : {}) });
        });
        const v = ctx.result.volumes;
        const base = ctx.result.manifest.base;
        const saved = base ? savedBytes(base) : undefined;
        const delta = saved ? `, a delta leaving out ${mib(saved.images + saved.artifacts)} its base holds` : '';
        task.title = ctx.result.upToDate
          ? `${o.output} is already this bundle (${mib(ctx.result.size)}); nothing written`
          : v
          ? `Wrote ${v.length} volumes ${basename(v[0]!.path)} … ${basename(v.at(-1)!.path)} (${mib(ctx.result.size)}, each at most ${o.splitSize} bytes)${delta}`
          : `Wrote ${o.output} (${mib(ctx.result.size)}, sha256 ${ctx.result.sha256})${delta}`;
      },
    },
  ];
}

/**
 * The cached fetch of volumes and deltas: [images, artifacts], side by side. A single-file delta's writer starts as
 * soon as the artifacts (which bundle.json lists) are in and follows the images as they land
 * (ctx.writing); until then the images get one lane, so the artifacts go first. Volumes are
 * written after the fetch.
 */
function fetchCached(o: BundleOptions, ctx: BundleContext, imagesDir: string, progress: (bytes: number) => void): [Promise<void>, Promise<void>] {
  const follow = o.splitSize === undefined; // volumes are written after the fetch: nothing to go first for
  const lanes = pLimit(follow ? 1 : o.concurrency);
  const arrivals = new Arrivals();
  const artifacts = o.customer ? fetchArtifactsTask(o, ctx, progress) : Promise.resolve();
  void artifacts.finally(() => (lanes.concurrency = o.concurrency)).catch(() => {});
  if (follow) {
    const writing: NonNullable<BundleContext['writing']> = { result: artifacts.then(() => writeOut(o, ctx, (done, total) => writing.progress?.(done, total), () => {}, arrivals)) };
    writing.result.catch(() => {}); // awaited by the write phase, or after a failed fetch
    ctx.writing = writing;
  }
  return [fetchImagesTask(o, ctx, imagesDir, progress, lanes, arrivals), artifacts];
}

async function writeOut(o: BundleOptions, ctx: BundleContext, progress: (done: number, total: number) => void, hashing: (done: number, total: number) => void, arrivals?: Arrivals): Promise<WriteBundleResult> {
  if (ctx.direct) return writeDirect(o, ctx);
  const { entries, manifest, mtime } = await bundleContent(o, ctx, ctx.cached ?? [], arrivals);
  const total = entries.reduce((n, e) => n + e.size, 0);
  // Bytes written per tar entry (a volume's pieces count as entries of their own), summed.
  const written = new Map<string, number>();
  let done = 0;
  const opts = {
    output: o.output,
    manifest,
    entries,
    ...(o.signingKey ? { signingKey: o.signingKey } : {}),
    mtime,
    onBytes: (path: string, bytes: number) => {
      done += bytes - (written.get(path) ?? 0);
      written.set(path, bytes);
      progress(done, total);
    },
  };
  return o.splitSize === undefined ? writeBundle(opts) : writeVolumes({ ...opts, limit: o.splitSize, onHashing: hashing });
}

/** The tool's own version, for bundle.json. */
export { toolVersion } from '../util/package-files.ts';

/**
 * Fails fast when the output name is taken by something other than a bundle. An existing bundle is
 * compared once this run knows its bundle.json: identical means up to date, else it is refused.
 * (Volumes are written under their own names, refused in the volume writer.)
 */
export async function refuseExisting(output: string, split = false): Promise<void> {
  if (split || !(await stat(output).then(() => true, () => false))) return;
  if (await openBundle(output).then(() => false, () => true)) {
    throw new OciError('BUSY', `${output} already exists and is not a bundle; choose another --output or move it away`);
  }
  if (!split) return;
  // Any volume of that name, whatever the count: a new set must not mix with an old one.
  const name = basename(output).replace(/\.tar$/, '');
  const old = (await readdir(dirname(output)).catch(() => [])).filter((f) => parseVolumeFile(f)?.name === name).sort();
  if (old.length > 0) throw new OciError('BUSY', `${join(dirname(output), old[0]!)} already exists; choose another --output or move the old volumes away`);
}
