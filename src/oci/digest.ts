import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { OciError } from './errors.ts';
import type { Descriptor } from './types.ts';
import { QUEUE_BYTES } from '../util/queue-bytes.ts';

// Only sha256 for now: every registry and layout we meet uses it; anything else is refused, so a
// digest string is always safe to use as a path component.
const DIGEST_RE = /^sha256:([a-f0-9]{64})$/;

/** The hex part of a sha256 digest; throws on anything else. */
export function digestHex(digest: string): string {
  const m = DIGEST_RE.exec(digest);
  if (!m) throw new OciError('BAD_DIGEST', `unsupported or malformed digest "${digest.slice(0, 80)}" (expected sha256:<64 hex>)`);
  return m[1]!;
}

export const isDigest = (s: string): boolean => DIGEST_RE.test(s);

export const sha256Digest = (bytes: Uint8Array): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

/** Throws unless `bytes` are exactly what `desc` names. */
export function verifyBytes(desc: Pick<Descriptor, 'digest' | 'size'>, bytes: Uint8Array, what: string): void {
  if (bytes.length !== desc.size) {
    throw new OciError('SIZE_MISMATCH', `${what} ${desc.digest} is ${bytes.length} bytes, expected ${desc.size}; the source is corrupt or changed`);
  }
  const actual = sha256Digest(bytes);
  if (actual !== desc.digest) {
    throw new OciError('DIGEST_MISMATCH', `${what} ${desc.digest} has digest ${actual}; the source is corrupt or changed`);
  }
}

/** Throws unless a blob's bytes, hashed elsewhere, came out as `desc` names (`sha256` in hex). */
export function checkDigest(desc: Pick<Descriptor, 'digest'>, sha256: string): void {
  const actual = `sha256:${sha256}`;
  if (actual !== desc.digest) throw new OciError('DIGEST_MISMATCH', `blob ${desc.digest} has digest ${actual}; the source is corrupt or changed`);
}

/** A blob whose stream ended before its declared size (worth asking again: the connection may have been cut). */
export const endedShort = (desc: Pick<Descriptor, 'digest' | 'size'>, seen: number): OciError =>
  new OciError('SIZE_MISMATCH', `blob ${desc.digest} ended after ${seen} of ${desc.size} bytes`, { retryable: true });

/**
 * Passes bytes through while hashing them, and fails the stream (so nothing downstream commits)
 * when the total size or the digest differs from the descriptor. `prefix` seeds it with bytes
 * already verified on disk when a copy resumes.
 */
export class VerifyingStream extends Transform {
  readonly #desc: Pick<Descriptor, 'digest' | 'size'>;
  readonly #hash: Hash;
  #seen: number;

  constructor(desc: Pick<Descriptor, 'digest' | 'size'>, prefix?: { hash: Hash; bytes: number }) {
    super({ highWaterMark: QUEUE_BYTES });
    digestHex(desc.digest);
    this.#desc = desc;
    this.#hash = prefix?.hash ?? createHash('sha256');
    this.#seen = prefix?.bytes ?? 0;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.#seen += chunk.length;
    if (this.#seen > this.#desc.size) {
      return done(new OciError('SIZE_MISMATCH', `blob ${this.#desc.digest} is longer than its declared ${this.#desc.size} bytes; the source is corrupt`));
    }
    this.#hash.update(chunk);
    done(null, chunk);
  }

  override _flush(done: TransformCallback): void {
    if (this.#seen !== this.#desc.size) return done(endedShort(this.#desc, this.#seen));
    try {
      checkDigest(this.#desc, this.#hash.digest('hex'));
    } catch (err) {
      return done(err as Error);
    }
    done();
  }
}
