/**
 * What changed between two bundles, from their bundle.json alone: the release, each image's
 * digest (and which platforms moved), the artifacts by key and sha256. A delta is compared by what
 * its install leaves in the target (what it carries plus what it relies on), so a delta and the
 * full bundle of the same release show the same changes.
 */
import type { SignedManifest } from './base.ts';
import { allArtifacts } from './delta.ts';
import type { AnyManifest, BundleImage } from './manifest.ts';

export interface DiffSide {
  file: string;
  manifestSha256: string;
  /** The signer bundle.json names; `verified` says whether a key proved it. */
  signer: string | null;
  verified: boolean;
  delta: boolean;
  release: { version: string; tag: string };
}

type ImageRef = { name: string; tag: string; digest: string };
type ArtifactRef = { bucket: string; key: string; size: number; sha256: string };

export interface BundleDiff {
  old: DiffSide;
  new: DiffSide;
  release: { changed: boolean; version: { old: string; new: string }; tag: { old: string; new: string } };
  images: {
    added: ImageRef[];
    removed: ImageRef[];
    /** Same name, another digest; `platforms` lists only the platforms whose manifest differs. */
    changed: { name: string; old: { tag: string; digest: string }; new: { tag: string; digest: string }; platforms: { platform: string; old: string | null; new: string | null }[] }[];
    /** Same name and digest (the tag may differ with the release's). */
    unchanged: { name: string; digest: string; tag: { old: string; new: string } }[];
  };
  artifacts: {
    added: ArtifactRef[];
    removed: ArtifactRef[];
    changed: { key: string; old: ArtifactRef; new: ArtifactRef }[];
    unchanged: number;
  };
}

const side = (s: SignedManifest): DiffSide => ({
  file: s.source,
  manifestSha256: s.manifestSha256,
  signer: s.signature === undefined ? null : (s.manifest.signer?.fingerprint ?? null),
  verified: s.verifiedBy !== null,
  delta: s.manifest.base !== undefined,
  release: { version: s.manifest.release.version, tag: s.manifest.release.tag },
});

const platformName = (p: BundleImage['platforms'][number]): string => [p.os, p.architecture, ...(p.variant ? [p.variant] : [])].join('/');
const byName = <T extends { name: string }>(a: T, b: T): number => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
const byKey = <T extends { key: string }>(a: T, b: T): number => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);

function platformChanges(o: BundleImage, n: BundleImage): BundleDiff['images']['changed'][number]['platforms'] {
  const old = new Map(o.platforms.map((p) => [platformName(p), p.digest]));
  const now = new Map(n.platforms.map((p) => [platformName(p), p.digest]));
  return [...new Set([...old.keys(), ...now.keys()])]
    .sort()
    .filter((p) => old.get(p) !== now.get(p))
    .map((platform) => ({ platform, old: old.get(platform) ?? null, new: now.get(platform) ?? null }));
}

export function diffManifests(oldSide: SignedManifest, newSide: SignedManifest): BundleDiff {
  const o: AnyManifest = oldSide.manifest;
  const n: AnyManifest = newSide.manifest;
  const oldImages = new Map(o.images.map((i) => [i.name, i]));
  const newImages = new Map(n.images.map((i) => [i.name, i]));
  const ref = (i: BundleImage): ImageRef => ({ name: i.name, tag: i.tag, digest: i.digest });
  const images: BundleDiff['images'] = { added: [], removed: [], changed: [], unchanged: [] };
  for (const i of n.images) if (!oldImages.has(i.name)) images.added.push(ref(i));
  for (const i of o.images) if (!newImages.has(i.name)) images.removed.push(ref(i));
  for (const i of n.images) {
    const was = oldImages.get(i.name);
    if (!was) continue;
    if (was.digest === i.digest) images.unchanged.push({ name: i.name, digest: i.digest, tag: { old: was.tag, new: i.tag } });
    else images.changed.push({ name: i.name, old: { tag: was.tag, digest: was.digest }, new: { tag: i.tag, digest: i.digest }, platforms: platformChanges(was, i) });
  }
  for (const list of Object.values(images)) list.sort(byName);

  const oldArtifacts = allArtifacts(o);
  const newArtifacts = allArtifacts(n);
  const art = (a: ArtifactRef): ArtifactRef => ({ bucket: a.bucket, key: a.key, size: a.size, sha256: a.sha256 });
  const artifacts: BundleDiff['artifacts'] = { added: [], removed: [], changed: [], unchanged: 0 };
  for (const [key, a] of newArtifacts) {
    const was = oldArtifacts.get(key);
    if (!was) artifacts.added.push(art(a));
    else if (was.sha256 !== a.sha256 || was.size !== a.size) artifacts.changed.push({ key, old: art(was), new: art(a) });
    else artifacts.unchanged++;
  }
  for (const [key, a] of oldArtifacts) if (!newArtifacts.has(key)) artifacts.removed.push(art(a));
  artifacts.added.sort(byKey);
  artifacts.removed.sort(byKey);
  artifacts.changed.sort(byKey);

  return {
    old: side(oldSide),
    new: side(newSide),
    release: {
      changed: o.release.version !== n.release.version || o.release.tag !== n.release.tag || o.release.archive.sha256 !== n.release.archive.sha256,
      version: { old: o.release.version, new: n.release.version },
      tag: { old: o.release.tag, new: n.release.tag },
    },
    images,
    artifacts,
  };
}
