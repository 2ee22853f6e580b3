import type { Readable } from 'node:stream';
import { digestHex, isDigest, verifyBytes } from '../digest.ts';
import { OciError } from '../errors.ts';
import { MAX_MANIFEST_BYTES, sniffMediaType } from '../media-types.ts';
import type { Descriptor, LayoutFiles, ReadTarget } from '../types.ts';
import { MAX_INDEX_JSON_BYTES, parseIndexJson, REF_NAME, type ImageIndex } from './index-json.ts';

export const blobPath = (digest: string): string => `blobs/sha256/${digestHex(digest)}`;

/** An OCI image layout as a source: a directory, or one inside a bundle read by offset. */
export class LayoutReader implements ReadTarget {
  readonly files: LayoutFiles;
  readonly description: string;
  readonly verifiedBlobs: boolean;

  /** `verifiedBlobs`: the caller hashed every blob against its digest already (see ReadTarget). */
  constructor(files: LayoutFiles, opts: { verifiedBlobs?: boolean } = {}) {
    this.files = files;
    this.description = files.description;
    this.verifiedBlobs = opts.verifiedBlobs ?? false;
  }

  async index(): Promise<ImageIndex> {
    const size = await this.files.size('index.json');
    if (size === undefined) throw new OciError('LAYOUT', `${this.description} is not an OCI image layout (no index.json)`);
    if (size > MAX_INDEX_JSON_BYTES) throw new OciError('TOO_LARGE', `${this.description}/index.json is ${size} bytes; refusing it`);
    return parseIndexJson(await this.files.read('index.json'), this.description);
  }

  /** A ref name (`org.opencontainers.image.ref.name`), a digest, or '' for a layout's only image. */
  async resolve(reference: string): Promise<Descriptor> {
    const { manifests } = await this.index();
    if (isDigest(reference)) {
      const listed = manifests.find((m) => m.digest === reference);
      if (listed) return strip(listed);
      const size = await this.files.size(blobPath(reference));
      if (size === undefined || size > MAX_MANIFEST_BYTES) throw new OciError('NOT_FOUND', `${this.description}@${reference} not found`);
      const bytes = await this.files.read(blobPath(reference));
      const mediaType = sniffMediaType(bytes);
      if (!mediaType) throw new OciError('UNSUPPORTED', `${this.description}@${reference} is not a manifest or index`);
      return { mediaType, digest: reference, size };
    }
    const matches = reference ? manifests.filter((m) => m.annotations?.[REF_NAME] === reference) : manifests;
    if (matches.length === 1) return strip(matches[0]!);
    const names = manifests.map((m) => m.annotations?.[REF_NAME]).filter(Boolean);
    if (!reference) throw new OciError('BAD_REFERENCE', `${this.description} holds ${manifests.length} images; name one (oci:DIR:REF) from: ${names.slice(0, 10).join(', ')}`);
    if (matches.length === 0) throw new OciError('NOT_FOUND', `${this.description}:${reference} not found; the layout has ${names.length ? names.slice(0, 10).join(', ') : 'no named images'}`);
    throw new OciError('LAYOUT', `${this.description}:${reference} names ${matches.length} different entries in index.json`);
  }

  async fetchManifest(desc: Descriptor): Promise<Buffer> {
    if (desc.size > MAX_MANIFEST_BYTES) throw new OciError('TOO_LARGE', `manifest ${desc.digest} declares ${desc.size} bytes; refusing it`);
    const path = blobPath(desc.digest);
    const size = await this.files.size(path);
    if (size === undefined) throw new OciError('NOT_FOUND', `${this.description}: manifest ${desc.digest} is missing`);
    if (size !== desc.size) throw new OciError('SIZE_MISMATCH', `${this.description}: manifest ${desc.digest} is ${size} bytes, expected ${desc.size}`);
    const bytes = await this.files.read(path);
    verifyBytes(desc, bytes, `manifest in ${this.description}`);
    return bytes;
  }

  async openBlob(desc: Descriptor, offset: number): Promise<Readable> {
    return this.files.open(blobPath(desc.digest), offset);
  }
}

/** Index entries carry layout annotations that belong to the entry, not to the image. */
function strip(d: Descriptor): Descriptor {
  return { mediaType: d.mediaType, digest: d.digest, size: d.size, ...(d.platform ? { platform: d.platform } : {}) };
}
