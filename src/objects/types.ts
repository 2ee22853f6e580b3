import type { Readable } from 'node:stream';

/** One object as a store reports it. Hashes are as GCS gives them: base64 of the raw digest. */
export interface ObjectInfo {
  bucket: string;
  key: string;
  size: number;
  /** GCS generation (changes on every overwrite); absent where the store has none. */
  generation?: string;
  /** base64 MD5, absent for composite objects. */
  md5?: string;
  /** base64 big-endian CRC32C. */
  crc32c?: string;
}

/** Read side of an object store (DESIGN.md §2: GCS, S3/MinIO, a directory, the bundle). */
export interface ObjectSource {
  readonly description: string;
  /** Every object under `prefix`, in key order. */
  list(bucket: string, prefix: string): AsyncIterable<ObjectInfo>;
  /** The object's current metadata, or undefined when it does not exist. */
  stat(bucket: string, key: string): Promise<ObjectInfo | undefined>;
  /**
   * The bytes of exactly the generation `info` names (so a concurrent overwrite is noticed), from
   * byte `offset` on (a resumed read; default 0). Errors another attempt may cure are `retryable`.
   */
  read(info: ObjectInfo, offset?: number): Promise<Readable>;
}

/** An object fetched into the local cache, verified, with the sha256 the bundle records. */
export interface CachedObject extends ObjectInfo {
  sha256: string;
  /** Path of the verified bytes in the cache. */
  path: string;
  /** True when the bytes came over the network in this run (false: already cached). */
  fetched: boolean;
}
