import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createCRC32, type IHasher } from 'hash-wasm';
import type { ObjectDigests } from '../tar/hash-thread.ts';
import { QUEUE_BYTES } from '../util/queue-bytes.ts';

/** What one pass over an object's bytes yields: its digests (ObjectDigests' encodings) and size. */
export interface ObjectHashes extends ObjectDigests {
  size: number;
}

const CHUNK = 1 << 20;
// The reversed Castagnoli polynomial: CRC32C, not the zlib CRC32 that is hash-wasm's default.
const CASTAGNOLI = 0x82f63b78;

/** A pass-through Transform that hashes (sha256, crc32c, md5 if asked) and counts what flows through it. */
export class MultiHasher extends Transform {
  private readonly sha256: Hash;
  private readonly md5: Hash | undefined;
  private readonly crc: IHasher;
  private done: ObjectHashes | undefined;
  size = 0;

  private constructor(crc: IHasher, md5: boolean) {
    super({ highWaterMark: QUEUE_BYTES });
    this.crc = crc;
    this.md5 = md5 ? createHash('md5') : undefined;
    this.sha256 = createHash('sha256');
  }

  /**
   * Async because hash-wasm instantiates its WebAssembly module on first use. MD5 costs more CPU
   * than the other two together; callers skip it when the store gives a CRC32C to check instead.
   * (A bundle written in place hashes its objects on a thread instead: tar/hash-thread.ts.)
   */
  static async create(opts: { md5?: boolean } = {}): Promise<MultiHasher> {
    return new MultiHasher(await createCRC32(CASTAGNOLI), opts.md5 ?? true);
  }

  /** Hashes bytes without a stream (tests, small buffers). */
  update(chunk: Uint8Array): this {
    if (this.done) throw new Error('MultiHasher: update() after result()');
    this.sha256.update(chunk);
    this.md5?.update(chunk);
    this.crc.update(chunk);
    this.size += chunk.length;
    return this;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.update(chunk);
    cb(null, chunk);
  }

  /** The digests of everything seen; callable more than once, but ends hashing. */
  result(): ObjectHashes {
    this.done ??= {
      size: this.size,
      sha256: this.sha256.digest('hex'),
      ...(this.md5 ? { md5: this.md5.digest('base64') } : {}),
      crc32c: Buffer.from(this.crc.digest('binary')).toString('base64'),
    };
    return this.done;
  }
}

/** Hashes a file already on disk (the cache's re-verification). */
export async function hashFile(path: string, opts: { md5?: boolean } = {}): Promise<ObjectHashes> {
  const hasher = await MultiHasher.create(opts);
  await pipeline(createReadStream(path, { highWaterMark: CHUNK }), hasher, async (source: AsyncIterable<unknown>) => {
    for await (const _ of source); // drain: the hasher is the point
  });
  return hasher.result();
}
