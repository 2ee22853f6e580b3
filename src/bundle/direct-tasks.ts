/** The steps of `bundle --direct` (direct.ts) as the bundle phases call them. */
import { rm, stat } from 'node:fs/promises';
import { mapBounded } from '../util/bounded.ts';
import { digestHex } from '../oci/digest.ts';
import { IMAGE_NAME } from '../oci/layout/index-json.ts';
import { copyGraph } from '../oci/copy.ts';
import { formatReference } from '../oci/reference.ts';
import { bundleContent, type CarriedObject } from './content.ts';
import { BundleSlots, fetchObjectInto, finishDirect, openDirect, PLACEHOLDER } from './direct.ts';
import { refName } from './images.ts';
import { openBundle } from './reader.ts';
import type { BundleContext, BundleOptions } from './tasks.ts';
import { bundleHead, checkEntries, checkMtime, existingBundle, type WriteBundleResult } from './writer.ts';


/**
 * Fixes every entry's place and opens the partial file. When the output already holds a bundle,
 * its artifacts' sha256 stand in for the ones not fetched yet wherever the store reports the same
 * version (size, md5, crc32c): an identical bundle is then found before any byte is downloaded,
 * and a different one refused.
 */
export async function planDirect(o: BundleOptions, ctx: BundleContext): Promise<void> {
  const signing = o.signingKey ? { signingKey: o.signingKey } : {};
  const layout = async (objects: CarriedObject[]) => {
    const c = await bundleContent(o, ctx, objects);
    return { ...c, head: bundleHead({ manifest: c.manifest, entries: c.entries, ...signing }) };
  };
  ctx.carried = ctx.objects!.map((info) => ({ ...info, sha256: PLACEHOLDER }));
  if (await stat(o.output).then(() => true, () => false)) {
    const known = await existingArtifacts(o.output);
    const adopted = ctx.carried.map((c) => {
      const old = known.get(`${c.bucket}/${c.key}`);
      const same = old && old.size === c.size && old.md5 === c.md5 && old.crc32c === c.crc32c && (c.md5 !== undefined || c.crc32c !== undefined);
      return same ? { ...c, sha256: old.sha256 } : c;
    });
    const { head } = await layout(adopted);
    const size = await existingBundle(o.output, head.json, head.sig); // throws when it holds another bundle
    ctx.result = { path: o.output, size: size!, sha256: null, manifest: head.manifest, upToDate: true };
    await rm(`${o.output}.partial.done`, { force: true }); // left only by a kill between the rename and its removal
    return;
  }
  const { entries, mtime, head } = await layout(ctx.carried);
  checkMtime(mtime);
  checkEntries(entries);
  // An artifact overwritten since an interrupted run makes that run's partial file useless.
  const versions = ctx.objects!.map((x) => `${x.bucket}/${x.key} ${x.size} ${x.generation ?? ''} ${x.md5 ?? ''} ${x.crc32c ?? ''}`);
  ctx.direct = await openDirect(o.output, head.head, entries, mtime, versions);
}

async function existingArtifacts(output: string): Promise<Map<string, { size: number; md5?: string; crc32c?: string; sha256: string }>> {
  const old = await openBundle(output).catch(() => undefined);
  return new Map((old?.manifest.artifacts ?? []).map((a) => [`${a.bucket}/${a.key}`, a]));
}

/** Each planned image's blobs and manifests into their places (every blob once, however many images share it). */
export async function fetchImagesDirect(ctx: BundleContext, concurrency: number, progress: (bytes: number) => void): Promise<void> {
  const slots = new BundleSlots(ctx.direct!);
  ctx.imageBytesFetched = 0;
  for (const p of ctx.planned!) {
    const r = await copyGraph(p.repository, slots, p.selected.root.digest, refName(p), {
      concurrency,
      annotations: { [IMAGE_NAME]: formatReference(p.spec.source) },
      onEvent: (e) => {
        if (e.type === 'blob-done') progress(e.size);
      },
    });
    ctx.imageBytesFetched += r.bytesTransferred;
  }
}

/** Each listed artifact into its place; its sha256 recorded for bundle.json. */
export async function fetchArtifactsDirect(o: BundleOptions, ctx: BundleContext, progress: (bytes: number) => void): Promise<void> {
  await mapBounded(ctx.carried!, o.concurrency, async (c) => {
    const path = `artifacts/${c.bucket}/${c.key}`;
    const had = ctx.direct!.done.get(path);
    if (had) {
      c.sha256 = had; // landed whole before an interruption, and re-hashed since
      progress(c.size);
      return;
    }
    c.sha256 = await fetchObjectInto(o.gcs, c, ctx.direct!, path);
    ctx.objectBytesFetched += c.size;
    progress(c.size);
  });
}

/** Headers, small entries and bundle.json with the real hashes, then the rename. */
export async function writeDirect(o: BundleOptions, ctx: BundleContext): Promise<WriteBundleResult> {
  const { entries, manifest, mtime } = await bundleContent(o, ctx, ctx.carried!);
  const { head, manifest: full } = bundleHead({ manifest, entries, ...(o.signingKey ? { signingKey: o.signingKey } : {}) });
  const filled = new Set<string>([...ctx.carried!.map((c) => `artifacts/${c.bucket}/${c.key}`)]);
  for (const p of ctx.planned!) for (const d of [...p.graph.manifests, ...p.graph.blobs]) filled.add(`images/blobs/sha256/${digestHex(d.digest)}`);
  const tar = await finishDirect(ctx.direct!, head, entries, mtime, filled);
  return { path: o.output, size: tar.size, sha256: tar.sha256, manifest: full, upToDate: false };
}

