/**
 * The bytes of one tar file as it is written: gathered into large buffers, each written with one
 * positional write and hashed (sha256) on its way out, so the file's digest costs no second read.
 *
 * Per-chunk stream machinery (a fresh buffer per chunk, then garbage), many small writes and
 * hashing everything on the main thread were what made the bundle writer slow. Here bytes land
 * in one of a few 1 MiB buffers (shared memory), read there straight from a local file (`fill`)
 * or copied (`append`); a full buffer is written by libuv's threads and hashed by a worker thread
 * (hash-thread.ts) while the caller fills the next one, and is filled again only when both are
 * done. A tar smaller than one buffer is hashed in place: it is not worth a thread.
 */
import { createHash } from 'node:crypto';
import { sharedBuffer, type BlockFile } from '../util/direct-io.ts';
import { HashThread } from './hash-thread.ts';

const BUFFER = 1 << 20;
const BUFFERS = 4;
/**
 * The first buffer is written this much short, so later writes do not start on 1 MiB boundaries.
 * Linux 6.x gives aligned large writes large page-cache folios, and in a VM that hands free memory
 * back to its host those are fresh memory every time: aligned 1 MiB writes ran at 800-1000 MiB/s
 * on our test VM, the same writes a page off at 2300-3000 (measured). Elsewhere it costs nothing.
 */
const SKEW = 4096;

export class TarOutput {
  /** Written around the page cache where it can be (util/direct-io.ts): the buffers are aligned for it. */
  readonly #file: BlockFile;
  readonly #pairs = Array.from({ length: BUFFERS }, () => sharedBuffer(BUFFER));
  readonly #shared = this.#pairs.map((p) => p.shared);
  readonly #buffers = this.#pairs.map((p) => p.buf);
  /** Per buffer: its write and hash, settled (a failure lands in #failure). */
  readonly #busy: (Promise<void> | undefined)[] = [];
  #current = 0;
  #filled = 0;
  /** Bytes in buffers already handed on: where the current buffer goes in the file. */
  #size = 0;
  #thread: HashThread | undefined;
  /** The last write handed to libuv, settled either way. */
  #lastWrite: Promise<void> = Promise.resolve();
  #failure: Error | undefined;

  constructor(file: BlockFile) {
    this.#file = file;
  }

  /** Appends a copy of `bytes`. Rejects with the first write (or hashing) failure. */
  async append(bytes: Uint8Array): Promise<void> {
    if (this.#failure) throw this.#failure;
    for (let off = 0; off < bytes.length; ) {
      const n = Math.min(bytes.length - off, this.#end() - this.#filled);
      this.#buffers[this.#current]!.set(bytes.subarray(off, off + n), this.#filled);
      this.#filled += n;
      off += n;
      if (this.#filled === this.#end()) await this.#flush();
    }
  }

  /**
   * Lets `read` put bytes straight into the free part of the current buffer (no copy); it returns
   * how many it put there, 0 for none. Resolves to that count.
   */
  async fill(read: (room: Buffer) => Promise<number>): Promise<number> {
    if (this.#failure) throw this.#failure;
    const n = await read(this.#buffers[this.#current]!.subarray(this.#filled, this.#end()));
    this.#filled += n;
    if (this.#filled === this.#end()) await this.#flush();
    return n;
  }

  /** Writes what is buffered and waits for every write; the file's size and sha256. */
  async finish(): Promise<{ size: number; sha256: string }> {
    if (!this.#thread) {
      const bytes = this.#buffers[this.#current]!.subarray(0, this.#filled);
      await this.#write(this.#current, bytes.length, this.#size);
      return { size: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') };
    }
    await this.#flush();
    await Promise.all(this.#busy);
    if (this.#failure) throw this.#failure;
    const sha256 = await this.#thread.digest();
    await this.abort();
    return { size: this.#size, sha256 };
  }

  /** Waits for the writes in flight, ignoring their outcome (the file may be closed after that), and stops the hashing thread. */
  async abort(): Promise<void> {
    await Promise.all(this.#busy);
    await this.#thread?.close();
  }

  /** Where the current buffer is full. */
  #end(): number {
    return this.#size === 0 ? BUFFER - SKEW : BUFFER;
  }

  /** Hands the current buffer on to be written and hashed, and waits until the next one is free. */
  async #flush(): Promise<void> {
    const i = this.#current;
    const length = this.#filled;
    if (length === 0) return;
    this.#thread ??= new HashThread(this.#shared);
    const at = this.#size;
    this.#size += length;
    // One write at a time: the file system serializes writes to one file anyway (ext4 spins on the
    // inode lock when several libuv threads write at once, measured). None after a failure.
    const write = this.#lastWrite.then(() => (this.#failure ? undefined : this.#write(i, length, at)));
    this.#lastWrite = write.catch(() => {});
    this.#busy[i] = Promise.all([write, this.#thread.update(i, length)]).then(
      () => {},
      (err: unknown) => {
        this.#failure ??= err as Error;
      },
    );
    this.#current = (i + 1) % BUFFERS;
    this.#filled = 0;
    await this.#busy[this.#current];
    if (this.#failure) throw this.#failure;
  }

  async #write(i: number, length: number, at: number): Promise<void> {
    try {
      await this.#file.write(this.#buffers[i]!, length, at);
    } catch (err) {
      throw new Error(`cannot write ${this.#file.path}: ${(err as Error).message}`, { cause: err });
    }
  }
}
