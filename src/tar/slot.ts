/**
 * A Writable that fills one entry's data area of a tar being assembled in place: bytes go to
 * `offset …offset+size` of an open file by positional writes, so several entries (layers and
 * artifacts arriving side by side) fill their own areas at once. Network chunks are gathered into
 * 1 MiB buffers first: one write per MiB, not one per 16-64 KiB chunk (the dispatch cost of small
 * writes was a tenth of bundle's CPU), and each a whole number of blocks, so it can go around the
 * page cache (util/direct-io.ts). Two pooled buffers, so one fills while the other is written
 * (and hashed, when the slot has a hash); they go back to the pool when the slot is done.
 */
import { open } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { OciError } from '../oci/errors.ts';
import type { EntryHash } from './hash-thread.ts';
import { BLOCK, BlockFile, DIRECT_BUFFER, releaseBuffer, takeBuffer } from '../util/direct-io.ts';

export class SlotWriter extends Writable {
  readonly #file: BlockFile;
  readonly #offset: number;
  readonly #size: number;
  readonly #what: string;
  readonly #buffers: Buffer[] = [];
  readonly #bufferSize: number;
  #filling = 0;
  #fill = 0;
  /** Bytes accepted so far, counted from the slot's start (`from` included). */
  #accepted: number;
  /** Bytes known written to the file, from the slot's start: a retry resumes here. */
  #written: number;
  #pending: Promise<void> = Promise.resolve();

  readonly #onWritten: ((start: number, end: number) => void) | undefined;

  /** Whether the bytes after the slot's end, up to the next block, may be written as zeros (tar padding). */
  readonly #pad: boolean;
  /** A second file the same bytes go to, from its start (the cache's copy of what fills the bundle). */
  readonly #also: BlockFile | undefined;
  /** The entry's sha256, fed each buffer as it is written. */
  readonly #hash: EntryHash | undefined;
  /** Sees each chunk as it is taken (progress, a checksum): no stream stage of its own for that. */
  readonly #onChunk: ((chunk: Buffer) => void) | undefined;

  /**
   * Fills the slot from byte `from` of the entry (an earlier attempt wrote the ones before).
   * `onWritten` hears of each piece once it is in the file (file positions; pieces in order).
   * `slot.also`: each buffer is written there too (at the entry's own position, unpadded), from
   * the same memory: a second copy costs a second write, not a second copy of every chunk.
   * `slot.hash`: each buffer is hashed there (on another thread) while it is written; it must
   * already have the entry's bytes before `from`. `slot.onChunk` sees each chunk as it comes:
   * each stream stage costs a few µs per chunk, and a TLS stream comes in 16 KiB chunks.
   */
  constructor(file: BlockFile, slot: { offset: number; size: number; what: string; pad?: boolean; also?: BlockFile | undefined; hash?: EntryHash | undefined; onChunk?: ((chunk: Buffer) => void) | undefined }, from = 0, onWritten?: (start: number, end: number) => void) {
    // Our own buffers do the batching; the stream's queue only has to keep the pipe moving.
    super({ highWaterMark: 64 * 1024 });
    this.#file = file;
    this.#onWritten = onWritten;
    this.#offset = slot.offset;
    this.#size = slot.size;
    this.#pad = slot.pad ?? true;
    this.#also = slot.also;
    this.#hash = slot.hash;
    this.#onChunk = slot.onChunk;
    this.#what = slot.what;
    this.#accepted = from;
    this.#written = from;
    this.#bufferSize = Math.max(1, Math.min(DIRECT_BUFFER, slot.size - from));
  }

  /** Bytes of the entry in the file for sure, even after a failure. */
  get written(): number {
    return this.#written;
  }

  /** Bytes taken so far, from the slot's start (`from` included): the entry's size once it is whole. */
  get accepted(): number {
    return this.#accepted;
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    if (this.#accepted + chunk.length > this.#size) {
      done(new OciError('SIZE_MISMATCH', `${this.#what} is longer than the ${this.#size} bytes planned for it: its source changed since the plan (run again) or is corrupt`));
      return;
    }
    this.#accepted += chunk.length;
    this.#onChunk?.(chunk);
    void this.#take(chunk).then(() => done(), done);
  }

  override _final(done: (err?: Error | null) => void): void {
    void this.#flush()
      .then(() => this.#pending)
      .then(() => done(), done);
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    // A write in flight must finish before the caller reuses or closes the file, or the buffer is reused.
    const settled = () => {
      this.#buffers.splice(0).forEach(releaseBuffer);
      done(err);
    };
    void this.#pending.then(settled, settled);
  }

  async #take(chunk: Buffer): Promise<void> {
    for (let at = 0; at < chunk.length; ) {
      const buf = (this.#buffers[this.#filling] ??= takeBuffer());
      const n = chunk.copy(buf, this.#fill, at, at + Math.min(chunk.length - at, this.#bufferSize - this.#fill));
      this.#fill += n;
      at += n;
      if (this.#fill === this.#bufferSize) await this.#flush();
    }
  }

  /** Starts writing the filled buffer (after the one before it has landed) and switches buffers. */
  async #flush(): Promise<void> {
    if (this.#fill === 0) return;
    await this.#pending;
    const buf = this.#buffers[this.#filling]!;
    const length = this.#fill;
    const at = this.#offset + this.#written;
    // The padding after the entry's last byte is the tar's, zeros: the last block may be written whole.
    const padTo = this.#pad ? this.#offset + Math.ceil(this.#size / BLOCK) * BLOCK : undefined;
    // Padding zeros land in the buffer past `length` only: the second write never reads them.
    const writes = [this.#file.write(buf, length, at, padTo), ...(this.#also ? [this.#also.write(buf, length, this.#written)] : []), ...(this.#hash ? [this.#hash.update(buf, length)] : [])];
    this.#pending = Promise.all(writes).then(() => {
      this.#written += length;
      this.#onWritten?.(at, at + length);
    });
    this.#filling ^= 1;
    this.#fill = 0;
  }
}

/**
 * A whole file written at positions (a cached blob or object being downloaded): around the page
 * cache like the bundle (on the test VM buffered writes cost 4 CPU s per GiB, direct ones 0.25),
 * except its last partial block, which goes through the page cache: padding it would leave the
 * file longer than its bytes until cut back, and a kill in between would leave a partial that is
 * not a prefix of the blob. `finish` fsyncs it; `close` closes it either way, never fails, and may
 * be called again.
 */
export async function openWholeFile(path: string, flags: 'w' | 'wx' | 'r+'): Promise<{ file: BlockFile; finish(): Promise<void>; close(): Promise<void> }> {
  const fh = await open(path, flags);
  let file: BlockFile;
  try {
    file = await BlockFile.open(fh, path);
  } catch (err) {
    await fh.close();
    throw err;
  }
  return {
    file,
    finish: () => fh.sync(),
    close: async () => {
      await file.close();
      await fh.close().catch(() => {}); // the first error is the one to report
    },
  };
}

/** A whole file (openWholeFile) as one slot, filled from byte `from`. */
export async function openFileSlot(path: string, size: number, what: string, opts: { flags: 'w' | 'wx' | 'r+'; from?: number }): Promise<{ sink: SlotWriter; finish(): Promise<void>; close(): Promise<void> }> {
  const whole = await openWholeFile(path, opts.flags);
  return { ...whole, sink: new SlotWriter(whole.file, { offset: 0, size, what, pad: false }, opts.from ?? 0) };
}
