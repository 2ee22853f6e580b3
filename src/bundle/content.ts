/**
 * What a bundle carries, in tar order, and its bundle.json before the entries are listed: one
 * function for volumes and deltas (written from the cache: artifacts from the cache) and the bundle
 * written in place (direct.ts: artifacts planned from the bucket listing, their sha256 filled in
 * as they arrive).
 */
import { join } from 'node:path';
import { OciError } from '../oci/errors.ts';
import type { ObjectInfo } from '../objects/types.ts';
import { cutDelta } from './delta.ts';
import type { Arrivals } from './arrivals.ts';
import { imageEntries } from './images.ts';
import { installerEntry, installerRecord } from './installer.ts';
import type { BundleArtifact, BundleManifest } from './manifest.ts';
import type { ResolvedRelease } from './release.ts';
import type { BundleContext, BundleOptions } from './tasks.ts';
import { fileEntry, type EntrySource } from './writer.ts';

/** SOURCE_DATE_EPOCH wins (reproducible-builds.org); else the newest time inside the release. */
export function bundleDate(release: ResolvedRelease): Date {
  const epoch = process.env.SOURCE_DATE_EPOCH;
  if (epoch && /^\d+$/.test(epoch)) return new Date(Number(epoch) * 1000);
  return release.date;
}

/** An artifact as the bundle records it: from the cache (with its file), or planned for a bundle written in place (sha256 filled in as it arrives). */
export type CarriedObject = ObjectInfo & { sha256: string; path?: string; fetched?: boolean };

/** The bundle's content in tar order and its bundle.json without entries: the same however it is written. */
export async function bundleContent(o: BundleOptions, ctx: BundleContext, objects: readonly CarriedObject[], arrivals?: Arrivals): Promise<{ entries: EntrySource[]; manifest: Omit<BundleManifest, 'entries' | 'signer'>; mtime: Date }> {
  const release = ctx.release!;
  const releaseEntries: EntrySource[] = [
    fileEntry(`release/${release.archiveName}`, release.archive.path, release.archive.size, release.archive.sha256),
    fileEntry('release/SHA256SUMS', release.sums.path, release.sums.size, release.sums.sha256),
    ...(release.versionFile ? [fileEntry('release/VERSION', release.versionFile.path, release.versionFile.size, release.versionFile.sha256)] : []),
  ].sort((a, b) => (a.path < b.path ? -1 : 1));
  const { images, entries: imageFiles } = await imageEntries(ctx.planned!, join(o.cacheDir, 'images'), arrivals && ((digest) => arrivals.wait(digest)));
  const sorted = [...objects].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const artifacts: BundleArtifact[] = sorted.map((c) => ({
    bucket: c.bucket,
    key: c.key,
    size: c.size,
    sha256: c.sha256,
    ...(c.md5 ? { md5: c.md5 } : {}),
    ...(c.crc32c ? { crc32c: c.crc32c } : {}),
    path: `artifacts/${c.bucket}/${c.key}`,
  }));
  // An object fetched by this run was checked against its sha256 as it landed: the writer only counts it.
  const artifactEntries = sorted.map((c, i): EntrySource => (c.path ? { ...fileEntry(artifacts[i]!.path, c.path, c.size, c.sha256), ...(c.fetched ? { arrival: verifiedNow } : {}) } : slotEntry(artifacts[i]!)));
  // The installer first: `tar -xf BUNDLE tool/` finds it at once, and in the first volume. The
  // artifacts before the images: they are fetched first (bundle.json lists their sha256, so the
  // whole-file hash starts when they are in), and the hash, which goes in file order, can then take
  // them at once instead of after the last image blob (4 GiB bed, 4 alternating runs each: median
  // 13.5 → 12.3 s; the hash left after the fetch 2.4 → 1.5 s).
  let entries = [...(o.installer ? [installerEntry(o.installer)] : []), ...releaseEntries, ...artifactEntries, ...imageFiles];
  let carried = artifacts;
  let base: BundleManifest['base'];
  if (ctx.base) {
    const graphs = ctx.planned!.map((p) => ({ name: p.spec.name, manifests: p.graph.manifests, blobs: p.graph.blobs }));
    ({ entries, artifacts: carried, base } = cutDelta({ entries, artifacts, graphs }, ctx.base));
  }
  const mtime = bundleDate(release);
  const manifest: Omit<BundleManifest, 'entries' | 'signer'> = {
    formatVersion: 1,
    tool: { name: 'cartesia-airgap', version: o.toolVersion },
    ...(o.installer ? { installer: installerRecord(o.installer) } : {}),
    created: mtime.toISOString(),
    recipe: { name: o.recipe.recipe.name, sha256: o.recipe.sha256 },
    release: { version: release.version, tag: release.tag, archive: { path: `release/${release.archiveName}`, sha256: release.archive.sha256, size: release.archive.size } },
    customer: o.customer ? { ...(o.customer.name ? { name: o.customer.name } : {}), bucket: o.customer.bucket } : null,
    images,
    artifacts: carried,
    ...(base ? { base } : {}),
  };
  return { entries, manifest, mtime };
}

const verifiedNow = async () => ({ verified: true });

/** An artifact a bundle written in place takes as it arrives: it has no other source to open. */
const slotEntry = (a: BundleArtifact): EntrySource => ({
  path: a.path,
  size: a.size,
  sha256: a.sha256,
  open: () => Promise.reject(new OciError('NOT_FOUND', `${a.path} is written straight from gs://${a.bucket}/${a.key}; it has no cached copy`)),
});

