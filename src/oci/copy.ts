import pLimit from 'p-limit';
import { OciError } from './errors.ts';
import { isIndex, isManifest } from './media-types.ts';
import { formatPlatform, platformMatches } from './platform.ts';
import type { Descriptor, Platform, PushBlobResult, ReadTarget, WriteTarget } from './types.ts';

export type CopyEvent =
  | { type: 'resolved'; digest: string; mediaType: string; size: number }
  | { type: 'platform-selected'; platform: string; digest: string; indexDigest: string }
  | { type: 'blob-start'; digest: string; size: number }
  | { type: 'blob-bytes'; digest: string; bytes: number; size: number }
  | { type: 'blob-done'; digest: string; size: number; how: PushBlobResult['how']; bytesTransferred: number }
  | { type: 'manifest-done'; digest: string; mediaType: string; how: 'pushed' | 'existed' }
  | { type: 'tagged'; reference: string; digest: string };

export interface CopyOptions {
  /** Copy only this platform's manifest out of an index, and tag it directly. */
  platform?: Platform;
  /** Blob transfers at once. */
  concurrency?: number;
  /** Extra annotations for the destination's index entry (layouts keep them). */
  annotations?: Record<string, string>;
  onEvent?: (event: CopyEvent) => void;
}

export interface CopyResult {
  /** What the destination reference now points at. */
  digest: string;
  mediaType: string;
  size: number;
  /** When a platform was selected: the index it came from, which was not copied. */
  platform?: string;
  indexDigest?: string;
  blobs: { total: number; uploaded: number; mounted: number; existed: number };
  manifests: { total: number; pushed: number; existed: number };
  /** Bytes read from the source for blobs (resumed copies read less than the total). */
  bytesTransferred: number;
  bytesTotal: number;
}

interface Parsed {
  manifests?: Descriptor[];
  config?: Descriptor;
  layers?: Descriptor[];
}

const parse = (bytes: Buffer, desc: Descriptor): Parsed => {
  try {
    return JSON.parse(bytes.toString('utf8')) as Parsed;
  } catch {
    throw new OciError('UNSUPPORTED', `manifest ${desc.digest} is not JSON`);
  }
};

/**
 * Copies the graph under one reference (DESIGN.md §2): index → manifests → config and layers.
 * Children are stored before their parents and the reference is set last, so a tag never points
 * at incomplete content; whatever the destination has is skipped (a stored manifest implies its
 * subtree); blobs move with bounded concurrency and are verified by the destination as they land.
 */
export async function copyGraph(src: ReadTarget, dst: WriteTarget, srcReference: string, dstReference: string, opts: CopyOptions = {}): Promise<CopyResult> {
  const emit = opts.onEvent ?? (() => {});
  const limit = pLimit(opts.concurrency ?? 4);
  const result: CopyResult = {
    digest: '',
    mediaType: '',
    size: 0,
    blobs: { total: 0, uploaded: 0, mounted: 0, existed: 0 },
    manifests: { total: 0, pushed: 0, existed: 0 },
    bytesTransferred: 0,
    bytesTotal: 0,
  };
  const blobs = new Map<string, Promise<void>>();

  let root = await src.resolve(srcReference);
  emit({ type: 'resolved', digest: root.digest, mediaType: root.mediaType, size: root.size });
  let rootBytes = await src.fetchManifest(root);
  if (opts.platform && isIndex(root.mediaType)) {
    const wanted = opts.platform;
    const entries = parse(rootBytes, root).manifests ?? [];
    const chosen = entries.find((m) => platformMatches(wanted, m.platform));
    if (!chosen) {
      const have = entries.map((m) => (m.platform ? formatPlatform(m.platform) : 'unknown')).join(', ');
      throw new OciError('NOT_FOUND', `${src.description}:${srcReference} has no ${formatPlatform(wanted)} image (it has ${have || 'none'})`);
    }
    result.indexDigest = root.digest;
    result.platform = formatPlatform(chosen.platform!);
    root = { mediaType: chosen.mediaType, digest: chosen.digest, size: chosen.size, platform: chosen.platform! };
    emit({ type: 'platform-selected', platform: result.platform, digest: root.digest, indexDigest: result.indexDigest });
    rootBytes = await src.fetchManifest(root);
  }

  const copyBlob = (desc: Descriptor): Promise<void> => {
    let p = blobs.get(desc.digest);
    if (!p) {
      result.blobs.total++;
      result.bytesTotal += desc.size;
      p = limit(async () => {
        let how: PushBlobResult['how'] = 'existed';
        let moved = 0;
        if (!(await dst.hasBlob(desc))) {
          emit({ type: 'blob-start', digest: desc.digest, size: desc.size });
          let bytes = 0;
          const pushed = await dst.pushBlob(desc, (offset) => src.openBlob(desc, offset), {
            ...(src.origin ? { origin: src.origin } : {}),
            onBytes: (n) => {
              bytes += n;
              emit({ type: 'blob-bytes', digest: desc.digest, bytes, size: desc.size });
            },
          });
          how = pushed.how;
          moved = pushed.bytesTransferred;
        }
        result.blobs[how]++;
        result.bytesTransferred += moved;
        emit({ type: 'blob-done', digest: desc.digest, size: desc.size, how, bytesTransferred: moved });
      });
      blobs.set(desc.digest, p);
    }
    return p;
  };

  const copyNode = async (desc: Descriptor, bytes: Buffer): Promise<void> => {
    result.manifests.total++;
    if (await dst.hasManifest(desc)) {
      result.manifests.existed++;
      emit({ type: 'manifest-done', digest: desc.digest, mediaType: desc.mediaType, how: 'existed' });
      return;
    }
    const doc = parse(bytes, desc);
    if (isIndex(desc.mediaType)) {
      await Promise.all((doc.manifests ?? []).map(async (child) => copyNode(child, await src.fetchManifest(child))));
    } else if (isManifest(desc.mediaType)) {
      if (!doc.config || !Array.isArray(doc.layers)) throw new OciError('UNSUPPORTED', `manifest ${desc.digest} has no config or layers`);
      await Promise.all([doc.config, ...doc.layers].map(copyBlob));
    } else {
      throw new OciError('UNSUPPORTED', `${desc.digest} has media type ${desc.mediaType}, which this tool does not copy`);
    }
    await dst.pushManifest(desc, bytes);
    result.manifests.pushed++;
    emit({ type: 'manifest-done', digest: desc.digest, mediaType: desc.mediaType, how: 'pushed' });
  };

  await copyNode(root, rootBytes);
  await dst.tag({ ...root, ...(opts.annotations ? { annotations: opts.annotations } : {}) }, rootBytes, dstReference);
  emit({ type: 'tagged', reference: dstReference, digest: root.digest });
  return { ...result, digest: root.digest, mediaType: root.mediaType, size: root.size };
}
