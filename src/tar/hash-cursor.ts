/**
 * The sha256 of a file filled out of order (a direct bundle's entries land as they arrive),
 * computed in file order while it fills: each range is read back and hashed as soon as everything
 * before it has landed, so the whole-file hash mostly overlaps the fetch instead of following it.
 * Ranges are announced whole and must tile the file; a range must not change once announced.
 * The reading and hashing run on a worker thread (FileRangeHasher); this side only hands it each
 * range as soon as everything before it has landed.
 */
import type { BlockFile } from '../util/direct-io.ts';
import { FileRangeHasher } from './hash-thread.ts';

const PIECE = 64 << 20;

export class HashCursor {
  readonly #file: BlockFile;
  readonly #size: number;
  readonly #hasher: FileRangeHasher;
  /** Landed ranges not hashed yet: start → end. */
  readonly #landed = new Map<number, number>();
  /** Bytes hashed, from the start of the file. */
  #at = 0;
  /** Bytes handed to the hasher. */
  #posted = 0;
  #wake: (() => void) | undefined;
  #stopped = false;
  readonly #done: Promise<string>;

  constructor(file: BlockFile, size: number) {
    this.#file = file;
    this.#size = size;
    this.#hasher = new FileRangeHasher(file.path, file.direct);
    this.#done = this.#run();
    this.#done.catch(() => {}); // seen by whoever asks for the digest; a stopped cursor is nobody's error
  }

  /** Bytes `start…end` are final in the file. */
  landed(start: number, end: number): void {
    if (end > start && start >= this.#posted) this.#landed.set(start, end);
    this.#wake?.();
  }

  /** Bytes hashed so far, from the start of the file. */
  get hashed(): number {
    return this.#at;
  }

  /** The file's sha256, once every byte has landed and been hashed. */
  digest(): Promise<string> {
    return this.#done;
  }

  /** Stops reading (the file is about to be closed); `digest()` then rejects. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#wake?.();
    await this.#hasher.close(); // what it was reading or about to read is dropped
    await this.#done.catch(() => {});
  }

  async #run(): Promise<string> {
    try {
      return await this.#hashAll();
    } finally {
      await this.#hasher.close();
    }
  }

  async #hashAll(): Promise<string> {
    // Ranges are handed over without waiting for the ones before: the thread takes them in order,
    // and this side's turns come late while the fetch keeps the main thread busy. A failure rejects
    // every range still pending and then the digest, so no answer needs keeping here.
    while (this.#posted < this.#size) {
      let end = this.#posted;
      for (let next = this.#landed.get(end); next !== undefined; next = this.#landed.get(end)) {
        this.#landed.delete(end);
        end = next;
      }
      if (end === this.#posted) {
        await new Promise<void>((resolve) => (this.#wake = resolve));
        this.#wake = undefined;
        if (this.#stopped) throw new Error(`hashing ${this.#file.path} stopped at byte ${this.#at}`);
        continue;
      }
      // In pieces, so `hashed` moves on while a long range is read.
      for (; this.#posted < end; ) {
        const to = Math.min(this.#posted + PIECE, end);
        void this.#hasher.update(this.#posted, to).then(() => void (this.#at = to), () => {});
        this.#posted = to;
      }
    }
    return this.#hasher.digest();
  }
}
