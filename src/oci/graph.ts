import { verifyBytes } from './digest.ts';
import { OciError } from './errors.ts';
import { isIndex, isManifest, MAX_MANIFEST_BYTES } from './media-types.ts';
import { formatPlatform, platformMatches } from './platform.ts';
import type { Descriptor, Platform, ReadTarget } from './types.ts';

/** The fields of a manifest or index that name other content. */
export interface ManifestDoc {
  manifests?: Descriptor[];
  config?: Descriptor;
  layers?: Descriptor[];
}

export function parseManifest(bytes: Buffer, desc: Descriptor): ManifestDoc {
  try {
    return JSON.parse(bytes.toString('utf8')) as ManifestDoc;
  } catch {
    throw new OciError('UNSUPPORTED', `manifest ${desc.digest} is not JSON`);
  }
}

/** os/architecture/variant from an image config (OCI image-spec config.md), size-capped. */
async function readConfigPlatform(src: ReadTarget, config: Descriptor): Promise<Platform | undefined> {
  if (config.size > MAX_MANIFEST_BYTES) return undefined;
  const chunks: Buffer[] = [];
  for await (const c of (await src.openBlob(config, 0)) as AsyncIterable<Buffer>) chunks.push(c);
  const bytes = Buffer.concat(chunks);
  verifyBytes(config, bytes, 'image config');
  const doc = JSON.parse(bytes.toString('utf8')) as Partial<Platform>;
  return doc.os && doc.architecture ? { os: doc.os, architecture: doc.architecture, ...(doc.variant ? { variant: doc.variant } : {}) } : undefined;
}

export interface SelectedRoot {
  /** What the reference resolved to (an index when a platform was then picked out of it). */
  resolved: Descriptor;
  /** What is copied and tagged. */
  root: Descriptor;
  bytes: Buffer;
  platform?: string;
  /** Set when a platform's manifest was picked out of this index (which is then not copied). */
  indexDigest?: string;
}

/** Resolves a reference and, when a platform is asked for, picks (or checks) that platform's manifest. */
export async function resolveRoot(src: ReadTarget, reference: string, platform?: Platform): Promise<SelectedRoot> {
  const resolved = await src.resolve(reference);
  const bytes = await src.fetchManifest(resolved);
  if (!platform) return { resolved, root: resolved, bytes };
  if (isIndex(resolved.mediaType)) {
    const entries = parseManifest(bytes, resolved).manifests ?? [];
    const chosen = entries.find((m) => platformMatches(platform, m.platform));
    if (!chosen) {
      const have = entries.map((m) => (m.platform ? formatPlatform(m.platform) : 'unknown')).join(', ');
      throw new OciError('NOT_FOUND', `${src.description}:${reference} has no ${formatPlatform(platform)} image (it has ${have || 'none'})`);
    }
    const root = { mediaType: chosen.mediaType, digest: chosen.digest, size: chosen.size, platform: chosen.platform! };
    return { resolved, root, bytes: await src.fetchManifest(root), platform: formatPlatform(chosen.platform!), indexDigest: resolved.digest };
  }
  // A single-platform image: its config says which platform it is.
  const config = parseManifest(bytes, resolved).config;
  const own = config ? await readConfigPlatform(src, config) : undefined;
  if (!platformMatches(platform, own)) {
    throw new OciError('NOT_FOUND', `${src.description}:${reference} is a single ${own ? formatPlatform(own) : 'unknown-platform'} image, not ${formatPlatform(platform)}`);
  }
  return { resolved, root: resolved, bytes, platform: formatPlatform(own!) };
}

export interface GraphContents {
  /** Every manifest and index under the root, the root included. */
  manifests: Descriptor[];
  /** Every config and layer. */
  blobs: Descriptor[];
  /** Bytes of both, each digest counted once. */
  size: number;
}

/** Everything a root needs, each digest once, sorted by digest (a stable order for bundles). */
export async function walkGraph(src: ReadTarget, root: Descriptor): Promise<GraphContents> {
  const manifests = new Map<string, Descriptor>();
  const blobs = new Map<string, Descriptor>();
  const visit = async (desc: Descriptor): Promise<void> => {
    if (manifests.has(desc.digest)) return;
    manifests.set(desc.digest, { mediaType: desc.mediaType, digest: desc.digest, size: desc.size });
    const doc = parseManifest(await src.fetchManifest(desc), desc);
    if (isIndex(desc.mediaType)) {
      await Promise.all((doc.manifests ?? []).map(visit));
    } else if (isManifest(desc.mediaType)) {
      if (!doc.config || !Array.isArray(doc.layers)) throw new OciError('UNSUPPORTED', `manifest ${desc.digest} has no config or layers`);
      for (const b of [doc.config, ...doc.layers]) blobs.set(b.digest, { mediaType: b.mediaType, digest: b.digest, size: b.size });
    } else {
      throw new OciError('UNSUPPORTED', `${desc.digest} has media type ${desc.mediaType}, which this tool does not carry`);
    }
  };
  await visit(root);
  const sorted = (m: Map<string, Descriptor>) => [...m.values()].sort((a, b) => (a.digest < b.digest ? -1 : 1));
  const all = [...manifests.values(), ...blobs.values()];
  return { manifests: sorted(manifests), blobs: sorted(blobs), size: all.reduce((n, d) => n + d.size, 0) };
}
