import type { FileHandle } from 'node:fs/promises';

/** Bytes landed between two flushes to disk while fetching. */
const FLUSH_EVERY = 256 << 20;

/**
 * Flushes a file being filled to disk after every FLUSH_EVERY bytes landed, one flush at a time
 * and not awaited, so what the page cache holds of it (all of it when the file system refuses
 * direct writes; writeback costs ~3.3 CPU s per GiB on this project's test VMs) and the device's
 * cache are written out while fetching, not all in the final fsync. Its error is kept for the
 * finish: Linux reports a writeback error to one fsync only, so the final one might not see it.
 */
export class Flusher {
  readonly #fh: FileHandle;
  #unflushed = 0;
  #running: Promise<void> | undefined;
  #error: unknown;

  constructor(fh: FileHandle) {
    this.#fh = fh;
  }

  landed(bytes: number): void {
    if ((this.#unflushed += bytes) < FLUSH_EVERY || this.#running) return;
    this.#unflushed = 0;
    this.#running = this.#fh
      .datasync()
      .catch((err: unknown) => void (this.#error ??= err))
      .finally(() => (this.#running = undefined));
  }

  /** Waits for the flush in flight; throws what any flush failed with. */
  async settled(): Promise<void> {
    await this.#running;
    if (this.#error) throw this.#error;
  }
}
