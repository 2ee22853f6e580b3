import pLimit, { type LimitFunction } from 'p-limit';
import { OciError } from './errors.ts';
import { parseManifest, resolveRoot } from './graph.ts';
import { isIndex, isManifest } from './media-types.ts';
import type { BlobOrigin, Descriptor, Platform, PushBlobResult, ReadTarget, WriteTarget } from './types.ts';

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
  /** A limiter shared with other copies running beside this one (instead of `concurrency`): their transfers at once, together. */
  limit?: LimitFunction;
  /** Extra annotations for the destination's index entry (layouts keep them). */
  annotations?: Record<string, string>;
  onEvent?: (event: CopyEvent) => void;
  /**
   * Where else on the destination's registry a blob already is (a sibling repository pushed
   * earlier, or being pushed there now: the answer may wait for that push): the destination
   * mounts it from there instead of uploading it again.
   */
  mountFrom?: (desc: Descriptor) => BlobOrigin | undefined | Promise<BlobOrigin | undefined>;
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

/**
 * Copies the graph under one reference (DESIGN.md §2): index → manifests → config and layers.
 * Children are stored before their parents and the reference is set last, so a tag never points
 * at incomplete content; whatever the destination has is skipped (a stored manifest implies its
 * subtree); blobs move with bounded concurrency and are verified by the destination as they land.
 */
export async function copyGraph(src: ReadTarget, dst: WriteTarget, srcReference: string, dstReference: string, opts: CopyOptions = {}): Promise<CopyResult> {
  const emit = opts.onEvent ?? (() => {});
  const limit = opts.limit ?? pLimit({ concurrency: opts.concurrency ?? 4, rejectOnClear: true });
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
  // After the first failure, queued transfers are dropped (rejectOnClear) and running ones are
  // awaited, so the caller never closes a store under work still in flight; the first error wins.
  let firstError: unknown;
  const settle = async (work: Promise<unknown>[]): Promise<void> => {
    const results = await Promise.allSettled(work);
    const rejected = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (rejected) throw firstError ?? rejected.reason;
  };

  const selected = await resolveRoot(src, srcReference, opts.platform);
  emit({ type: 'resolved', digest: selected.resolved.digest, mediaType: selected.resolved.mediaType, size: selected.resolved.size });
  const { root, bytes: rootBytes } = selected;
  if (selected.platform) result.platform = selected.platform;
  if (selected.indexDigest) {
    result.indexDigest = selected.indexDigest;
    emit({ type: 'platform-selected', platform: selected.platform!, digest: root.digest, indexDigest: selected.indexDigest });
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
          const origin = src.origin ?? (await opts.mountFrom?.(desc));
          const pushed = await dst.pushBlob(desc, (offset) => src.openBlob(desc, offset), {
            ...(origin ? { origin } : {}),
            ...(src.verifiedBlobs ? { verified: true } : {}),
            onBytes: (bytes) => emit({ type: 'blob-bytes', digest: desc.digest, bytes, size: desc.size }),
          });
          how = pushed.how;
          moved = pushed.bytesTransferred;
        }
        result.blobs[how]++;
        result.bytesTransferred += moved;
        emit({ type: 'blob-done', digest: desc.digest, size: desc.size, how, bytesTransferred: moved });
      }).catch((err: unknown) => {
        firstError ??= err;
        limit.clearQueue();
        throw err;
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
    const doc = parseManifest(bytes, desc);
    if (isIndex(desc.mediaType)) {
      await settle((doc.manifests ?? []).map(async (child) => copyNode(child, await src.fetchManifest(child))));
    } else if (isManifest(desc.mediaType)) {
      if (!doc.config || !Array.isArray(doc.layers)) throw new OciError('UNSUPPORTED', `manifest ${desc.digest} has no config or layers`);
      await settle([doc.config, ...doc.layers].map(copyBlob));
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
