/**
 * Deltas by content (research/anchors.md §5 item 10): a delta is the full bundle of the new
 * release minus every image blob or manifest the base holds (by digest) and every artifact the
 * base installed under the same key with the same sha256. The release files are always carried:
 * install renders values.yaml from the chart inside them, and neither the registry nor the bucket
 * holds them, so the target could not prove it has them.
 */
import type { Descriptor } from '../oci/types.ts';
import type { SignedManifest } from './base.ts';
import type { AnyManifest, BundleArtifact, BundleBase } from './manifest.ts';
import type { EntrySource } from './writer.ts';

const BLOB_PREFIX = 'images/blobs/sha256/';

/** Everything a bundle puts into a target when installed: what it carries plus what its own base put there. */
export interface BundleContents {
  /** Manifests and blobs by digest, with their sizes. */
  digests: Map<string, number>;
  /** Artifacts by key. */
  artifacts: Map<string, { bucket: string; key: string; size: number; sha256: string; md5?: string }>;
  /** Image names: the repositories an install pushes to. */
  images: string[];
}

export function contentsOf(m: AnyManifest): BundleContents {
  const digests = new Map<string, number>();
  for (const e of m.entries) if (e.path.startsWith(BLOB_PREFIX)) digests.set(`sha256:${e.path.slice(BLOB_PREFIX.length)}`, e.size);
  for (const i of m.base?.relies.images ?? []) for (const d of [...i.manifests, ...i.blobs]) digests.set(d.digest, d.size);
  const artifacts: BundleContents['artifacts'] = new Map();
  for (const a of [...(m.base?.relies.artifacts ?? []), ...m.artifacts]) artifacts.set(a.key, { bucket: a.bucket, key: a.key, size: a.size, sha256: a.sha256, ...(a.md5 ? { md5: a.md5 } : {}) });
  const images = [...new Set([...m.images.map((i) => i.name), ...(m.base?.images ?? [])])].sort();
  return { digests, artifacts, images };
}

/** Every artifact a bundle's install leaves in the bucket, carried or relied on, by key. */
export const allArtifacts = (m: AnyManifest): BundleContents['artifacts'] => contentsOf(m).artifacts;

/** Digests a delta relies on (empty for a full bundle). */
export function reliedDigests(m: AnyManifest): Set<string> {
  return new Set((m.base?.relies.images ?? []).flatMap((i) => [...i.manifests, ...i.blobs].map((d) => d.digest)));
}

/** Bytes a delta leaves out: each relied-on digest once, plus the relied-on artifacts. */
export function savedBytes(base: BundleBase): { images: number; artifacts: number } {
  const digests = new Map<string, number>();
  for (const i of base.relies.images) for (const d of [...i.manifests, ...i.blobs]) digests.set(d.digest, d.size);
  return { images: [...digests.values()].reduce((n, s) => n + s, 0), artifacts: base.relies.artifacts.reduce((n, a) => n + a.size, 0) };
}

export interface ImageGraph {
  name: string;
  manifests: Descriptor[];
  blobs: Descriptor[];
}

export interface CutDelta {
  entries: EntrySource[];
  artifacts: BundleArtifact[];
  base: BundleBase;
}

/**
 * Cuts the full bundle's entries down to a delta against `base` (whose signature the caller has
 * verified: `base.verifiedBy` is the signer recorded). Entry order is kept, so the delta's entries
 * are the full bundle's in the same order, minus the omitted ones.
 */
export function cutDelta(full: { entries: EntrySource[]; artifacts: BundleArtifact[]; graphs: ImageGraph[] }, base: SignedManifest): CutDelta {
  if (base.verifiedBy === null) throw new Error('cutDelta needs a base whose signature was verified');
  const have = contentsOf(base.manifest);
  const relied = (a: BundleArtifact): boolean => {
    const b = have.artifacts.get(a.key);
    return b !== undefined && b.sha256 === a.sha256 && b.size === a.size;
  };
  const omittedPaths = new Set(full.artifacts.filter(relied).map((a) => a.path));
  const entries = full.entries.filter((e) => {
    if (omittedPaths.has(e.path)) return false;
    return !(e.path.startsWith(BLOB_PREFIX) && have.digests.has(`sha256:${e.path.slice(BLOB_PREFIX.length)}`));
  });
  const pick = (ds: Descriptor[]) => ds.filter((d) => have.digests.has(d.digest)).map((d) => ({ digest: d.digest, size: d.size }));
  const images = full.graphs
    .map((g) => ({ name: g.name, manifests: pick(g.manifests), blobs: pick(g.blobs) }))
    .filter((i) => i.manifests.length + i.blobs.length > 0)
    .sort((a, b) => (a.name < b.name ? -1 : 1));
  const artifacts = full.artifacts.filter((a) => !relied(a));
  const reliedArtifacts = full.artifacts.filter(relied).map((a) => ({ bucket: a.bucket, key: a.key, size: a.size, sha256: a.sha256, ...(a.md5 ? { md5: a.md5 } : {}) }));
  const m = base.manifest;
  return {
    entries,
    artifacts,
    base: {
      manifestSha256: base.manifestSha256,
      signer: { algorithm: 'ecdsa-p256-sha256', fingerprint: base.verifiedBy },
      release: { version: m.release.version, tag: m.release.tag },
      images: have.images,
      relies: { images, artifacts: reliedArtifacts },
    },
  };
}

/** What `bundle --json` and `inspect` say about a delta's base. */
export interface DeltaSummary {
  manifestSha256: string;
  signer: string;
  release: { version: string; tag: string };
  relies: { manifests: number; blobs: number; artifacts: number };
  saved: { images: number; artifacts: number; total: number };
}

export function deltaSummary(base: BundleBase): DeltaSummary {
  const manifests = new Set(base.relies.images.flatMap((i) => i.manifests.map((d) => d.digest)));
  const blobs = new Set(base.relies.images.flatMap((i) => i.blobs.map((d) => d.digest)));
  const saved = savedBytes(base);
  return {
    manifestSha256: base.manifestSha256,
    signer: base.signer.fingerprint,
    release: base.release,
    relies: { manifests: manifests.size, blobs: blobs.size, artifacts: base.relies.artifacts.length },
    saved: { ...saved, total: saved.images + saved.artifacts },
  };
}
