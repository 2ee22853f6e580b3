/**
 * The sha256 of a file filled out of order (a direct bundle's entries land as they arrive),
 * computed in file order while it fills: each range is read back and hashed as soon as everything
 * before it has landed, so the whole-file hash mostly overlaps the fetch instead of following it.
 * Ranges are announced whole and must tile the file; a range must not change once announced.
 */
import { createHash } from 'node:crypto';
import type { BlockFile } from '../util/direct-io.ts';

const PIECE = 64 << 20;

export class HashCursor {
  readonly #file: BlockFile;
  readonly #size: number;
  readonly #hash = createHash('sha256');
  /** Landed ranges not hashed yet: start → end. */
  readonly #landed = new Map<number, number>();
  #at = 0;
  #wake: (() => void) | undefined;
  #stopped = false;
  readonly #done: Promise<string>;

  constructor(file: BlockFile, size: number) {
    this.#file = file;
    this.#size = size;
    this.#done = this.#run();
    this.#done.catch(() => {}); // seen by whoever asks for the digest; a stopped cursor is nobody's error
  }

  /** Bytes `start…end` are final in the file. */
  landed(start: number, end: number): void {
    if (end > start && start >= this.#at) this.#landed.set(start, end);
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
    await this.#done.catch(() => {});
  }

  async #run(): Promise<string> {
    while (this.#at < this.#size) {
      let end = this.#at;
      for (let next = this.#landed.get(end); next !== undefined; next = this.#landed.get(end)) {
        this.#landed.delete(end);
        end = next;
      }
      if (end === this.#at) {
        await new Promise<void>((resolve) => (this.#wake = resolve));
        this.#wake = undefined;
        if (this.#stopped) throw new Error(`hashing ${this.#file.path} stopped at byte ${this.#at}`);
        continue;
      }
      // In pieces, so a stop is seen within one piece.
      while (this.#at < end) {
        const n = Math.min(PIECE, end - this.#at);
        await this.#file.hashRange(this.#hash, this.#at, n);
        this.#at += n;
        if (this.#stopped) throw new Error(`hashing ${this.#file.path} stopped at byte ${this.#at}`);
      }
    }
    return this.#hash.digest('hex');
  }
}
