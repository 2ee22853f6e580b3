/**
 * Reads `length` bytes of an open file from `start`, handing each chunk to `use` before the buffer
 * is reused. Two buffers alternate so the next read (on libuv's thread pool) runs while `use`
 * (a hash update, on the main thread) works on the current one: no stream, no allocation per
 * chunk, one open file for many ranges. `use` must not keep the chunk. The buffers are
 * page-aligned, so the DirectReader can read around the page cache into them where it does.
 * Around the page cache the reads are 4 MiB, in buffers of the reader's own: on the test VM sha256
 * of what an O_DIRECT read had just brought in ran at 1.2 GB/s in 1 MiB reads and 1.5-1.9 GB/s in
 * 4 MiB ones. Through the page cache, 1 MiB from the shared pool (the kernel's copy is what costs).
 */
import { alignedBuffer, releaseBuffer, takeBuffer, DIRECT_BUFFER, type DirectReader } from './direct-io.ts';

/** The largest chunk `read` hands over: a direct reader's. */
export const RANGE_CHUNK = 4 * DIRECT_BUFFER;

export class RangeReader {
  readonly #file: DirectReader;
  readonly #buffers: Buffer[];
  readonly #chunk: number;

  constructor(file: DirectReader) {
    this.#file = file;
    this.#chunk = file.direct ? RANGE_CHUNK : DIRECT_BUFFER;
    this.#buffers = file.direct ? [alignedBuffer(RANGE_CHUNK), alignedBuffer(RANGE_CHUNK)] : [takeBuffer(), takeBuffer()];
  }

  /** The largest chunk `read` hands over with this file. */
  get chunkSize(): number {
    return this.#chunk;
  }

  /** Resolves with the bytes read, fewer than `length` only when the file ends first. */
  async read(start: number, length: number, use: (chunk: Buffer) => void): Promise<number> {
    const fill = (k: number, at: number): Promise<number> => this.#file.read(this.#buffers[k]!, Math.min(this.#chunk, length - at), start + at);
    let done = 0;
    let k = 0;
    let pending: Promise<number> | undefined = length > 0 ? fill(k, 0) : undefined;
    while (pending) {
      const n = await pending;
      if (n === 0) break;
      const chunk = this.#buffers[k]!.subarray(0, n);
      done += n;
      k ^= 1;
      pending = done < length ? fill(k, done) : undefined;
      try {
        use(chunk);
      } catch (err) {
        await pending?.catch(() => {}); // no read left running into a buffer after we return
        throw err;
      }
    }
    return done;
  }

  /** Gives the buffers back (pooled ones to the pool); no read may be running. */
  release(): void {
    this.#buffers.forEach(releaseBuffer);
  }
}
