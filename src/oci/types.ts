import type { Readable } from 'node:stream';

/** OCI Image Spec descriptor.md: the platform object of an index entry. */
export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
  'os.version'?: string;
  'os.features'?: string[];
}

/** OCI Image Spec descriptor.md. `size` is a JS number: exact up to 2^53 bytes. */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: Platform;
  urls?: string[];
  artifactType?: string;
}

/** Opens a blob's bytes from `offset` (0 = the start); lets a destination resume a partial copy. */
export type OpenBlob = (offset: number) => Promise<Readable>;

/** Where a blob came from, so a destination on the same registry can mount instead of upload. */
export interface BlobOrigin {
  registry: string;
  repository: string;
}

/**
 * Progress of one blob: how many of its bytes are in place so far (a position, not a delta, so a
 * restarted attempt moves it back instead of past 100 %).
 */
export type OnBytes = (position: number) => void;

export interface PushBlobResult {
  /** 'uploaded' moved bytes, 'mounted' was a cross-repository mount, 'existed' needed nothing. */
  how: 'uploaded' | 'mounted' | 'existed';
  /**
   * Bytes read from the source, every attempt included: less than size when a partial copy was
   * resumed, more when a failed attempt had to start over.
   */
  bytesTransferred: number;
}

/** Read side of a store (DESIGN.md §2): a registry repository, a layout directory, a bundle. */
export interface ReadTarget {
  /** For messages: `docker://host/repo`, `oci:DIR`, … */
  readonly description: string;
  /** Set when blobs can be mounted from here by a destination on the same registry. */
  readonly origin?: BlobOrigin;
  /** A tag or `sha256:…` digest → the descriptor of the manifest or index it names. */
  resolve(reference: string): Promise<Descriptor>;
  /** The manifest's exact bytes, verified against desc.digest and desc.size. */
  fetchManifest(desc: Descriptor): Promise<Buffer>;
  /** The blob's bytes from `offset`, unverified: destinations verify while they write. */
  openBlob(desc: Descriptor, offset: number): Promise<Readable>;
  /**
   * Set when every blob here was hashed against its digest just before (install's bundle, verified
   * first): a destination that checks digests on its own side (a registry) need not hash them again.
   */
  readonly verifiedBlobs?: boolean;
}

/** Write side of a store. Every method is idempotent and verifies digests before committing. */
export interface WriteTarget {
  readonly description: string;
  hasBlob(desc: Descriptor): Promise<boolean>;
  hasManifest(desc: Descriptor): Promise<boolean>;
  /**
   * Stores a blob from `open`, verifying size and digest while streaming; nothing is visible under
   * the digest unless it verified. With `origin`, a remote destination on the same registry tries
   * a cross-repository mount first.
   */
  pushBlob(desc: Descriptor, open: OpenBlob, opts?: { origin?: BlobOrigin; onBytes?: OnBytes; verified?: boolean }): Promise<PushBlobResult>;
  /** Stores a manifest or index by digest (exact bytes); it must already be verified. */
  pushManifest(desc: Descriptor, bytes: Buffer): Promise<void>;
  /** Points `reference` (a tag or layout ref name) at a stored manifest: always the last step. */
  tag(desc: Descriptor, bytes: Buffer, reference: string): Promise<void>;
}

/**
 * Read access to the files of an OCI image layout, wherever they are: a directory, or entries of
 * a tar read by byte offset. Paths are layout-relative with `/` separators (`index.json`,
 * `blobs/sha256/<hex>`).
 */
export interface LayoutFiles {
  readonly description: string;
  /** Size in bytes, or undefined when the file is absent. */
  size(path: string): Promise<number | undefined>;
  /** The whole file; callers bound the size first (manifests, index.json). */
  read(path: string): Promise<Buffer>;
  /** The file's bytes from `offset` to its end. */
  open(path: string, offset: number): Promise<Readable>;
}
