/**
 * Writing a large file around the page cache (O_DIRECT). On this project's test VMs a buffered
 * write costs ~4 CPU s per GiB in the kernel (every new page-cache page is a fault the host must
 * back) and reading an uncached file buffered ~2.6: `dd` wrote 4 GiB in 16.5 s buffered and
 * 3.0-3.9 s with O_DIRECT at ~1 CPU s. On any machine it keeps a bundle of tens of GiB from
 * flooding the page cache and its writeback.
 *
 * O_DIRECT wants the memory, the file offset and the length aligned to the device's block (512
 * bytes here, 4096 at most in practice). Tar data starts on 512-byte boundaries and its padding is
 * zeros, so an entry's last block can be written whole. Node has no aligned allocation, but a
 * WebAssembly memory starts on a page: the buffers come from those. Where O_DIRECT is refused (a
 * filesystem without it, an unaligned request) the same bytes go through the page cache instead.
 */
import { createHash, type Hash } from 'node:crypto';
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { writeAll } from './write-all.ts';

// @types/node does not declare WebAssembly; the one part used here:
declare const WebAssembly: { Memory: new (d: { initial: number; maximum?: number; shared?: boolean }) => { buffer: ArrayBuffer } };

/**
 * Alignment of a direct request: tar's block, the logical block of most disks. On a disk of 4 KiB
 * blocks the first request is refused (EINVAL) and the file goes through the page cache.
 */
export const BLOCK = 512;
/** Size of each pooled buffer. */
export const DIRECT_BUFFER = 1 << 20;

const free: Buffer[] = [];
/** Buffers that start on a page: whole ones can be written direct. */
const aligned = new WeakSet<Buffer>();
/** The pool's buffers: only these go back to it. */
const pooled = new WeakSet<Buffer>();
/** Memories that start on a page: a view into one at a block offset can take a direct read. */
const alignedMemory = new WeakSet<ArrayBufferLike>();

/** A page-aligned 1 MiB buffer over a SharedArrayBuffer; give it back with `releaseBuffer` once no write or read uses it. */
export function takeBuffer(): Buffer {
  if (free.length === 0) {
    // 16 MiB per memory: few memories (each reserves address space), little untouched memory.
    // Shared, so a hashing thread can read a buffer where it is (tar/hash-thread.ts EntryHashes).
    const { shared } = sharedBuffer(16 * DIRECT_BUFFER);
    for (let at = 0; at < shared.byteLength; at += DIRECT_BUFFER) {
      const b = Buffer.from(shared, at, DIRECT_BUFFER);
      aligned.add(b);
      pooled.add(b);
      free.push(b);
    }
  }
  return free.pop()!;
}

/**
 * A page-aligned buffer of `size` bytes (a multiple of 64 KiB) of its own, outside the pool: for a
 * reader that wants larger direct reads than the pool's 1 MiB. Freed when no longer referenced.
 */
export function alignedBuffer(size: number): Buffer {
  const memory = new WebAssembly.Memory({ initial: size / 65536 });
  alignedMemory.add(memory.buffer);
  const b = Buffer.from(memory.buffer);
  aligned.add(b);
  return b;
}

/** A page-aligned SharedArrayBuffer of `size` bytes (a multiple of 64 KiB) and a Buffer over it, for a worker to read too. */
export function sharedBuffer(size: number): { shared: SharedArrayBuffer; buf: Buffer } {
  const pages = size / 65536;
  const shared = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true }).buffer as unknown as SharedArrayBuffer;
  const buf = Buffer.from(shared);
  aligned.add(buf);
  alignedMemory.add(shared);
  return { shared, buf };
}

export function releaseBuffer(b: Buffer): void {
  if (pooled.has(b)) free.push(b); // a buffer of its own (alignedBuffer, sharedBuffer) is left to the collector
}

const roundUp = (n: number) => Math.ceil(n / BLOCK) * BLOCK;

/** Off by `CARTESIA_AIRGAP_BUFFERED_IO=1`: every write through the page cache (to compare the two). */
const wanted = () => process.env.CARTESIA_AIRGAP_BUFFERED_IO !== '1';

/**
 * A second, O_DIRECT handle on the file `fh` has open at `path`, where the file system has one and
 * the switch is on; undefined otherwise, or when the name no longer leads to `fh`'s file.
 */
async function directTwin(fh: FileHandle, path: string, access: number): Promise<FileHandle | undefined> {
  if (!wanted()) return undefined;
  const direct = await open(path, access | constants.O_DIRECT | constants.O_NOFOLLOW).catch(() => undefined);
  if (!direct) return undefined;
  const [a, b] = await Promise.all([fh.stat(), direct.stat()]);
  if (a.dev === b.dev && a.ino === b.ino) return direct;
  await direct.close(); // replaced in between: `fh` alone
  return undefined;
}

/**
 * An open file written at positions. `fh` is the ordinary handle (small writes, reads);
 * `write` goes around the page cache when the request allows it.
 */
export class BlockFile {
  readonly fh: FileHandle;
  /** For messages. */
  readonly path: string;
  /** The direct handle while direct writes work. */
  #direct: FileHandle | undefined;
  /** The direct handle, to close. */
  #opened: FileHandle | undefined;

  constructor(fh: FileHandle, path: string, direct?: FileHandle) {
    this.fh = fh;
    this.path = path;
    this.#direct = this.#opened = direct;
  }

  /** `fh` (open for writing at `path`) plus a second, direct handle on the same file where the filesystem has one. */
  static async open(fh: FileHandle, path: string): Promise<BlockFile> {
    return new BlockFile(fh, path, await directTwin(fh, path, constants.O_RDWR));
  }

  get direct(): boolean {
    return this.#direct !== undefined;
  }

  /**
   * Writes `length` bytes of `buf` at `position`. `padTo`, when given, is where the caller's area
   * ends: the bytes from `position + length` up to the next block boundary (at most `padTo`) may
   * be written as zeros, so the last piece of a tar entry goes out as whole blocks. Without that
   * room, the whole blocks go direct and only the short tail through the page cache.
   */
  async write(buf: Buffer, length: number, position: number, padTo?: number): Promise<void> {
    const direct = this.#direct;
    if (direct && aligned.has(buf) && position % BLOCK === 0) {
      const padded = padTo !== undefined && position + roundUp(length) <= padTo && roundUp(length) <= buf.length;
      // Whole blocks go direct: all of it, padded when the caller allows, else all but the short tail.
      const whole = length % BLOCK === 0 || padded ? roundUp(length) : length - (length % BLOCK);
      if (whole > 0) {
        buf.fill(0, length, Math.max(length, whole));
        try {
          await writeAll(direct, buf.subarray(0, whole), position);
          if (whole < length) await writeAll(this.fh, buf.subarray(whole, length), position + whole);
          return;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
          // Not on this file system after all: the page cache from here on. The handle stays open
          // until `close`, as other writes may still be using it.
          this.#direct = undefined;
        }
      }
    }
    await writeAll(this.fh, buf.subarray(0, length), position);
  }

  /** Writes bytes from anywhere (headers, bundle.json) through pooled buffers, so they can go direct too; `padTo` as in `write`. */
  async writeBytes(bytes: Uint8Array, position: number, padTo?: number): Promise<void> {
    const buf = takeBuffer();
    try {
      for (let at = 0; at < bytes.length; at += DIRECT_BUFFER) {
        const n = Math.min(DIRECT_BUFFER, bytes.length - at);
        buf.set(bytes.subarray(at, at + n));
        await this.write(buf, n, position + at, padTo);
      }
    } finally {
      releaseBuffer(buf);
    }
  }

  /**
   * Feeds `length` bytes from `offset` to `hash`, read around the page cache when the file is
   * written that way (reading it back buffered would fill the cache at the cost `write` avoided,
   * and a stale cached page must never be what is hashed). Four reads in flight, hashed in order.
   */
  async hashRange(hash: Hash, offset: number, length: number): Promise<Hash> {
    const reader = this.#direct && offset % BLOCK === 0 ? this.#direct : this.fh;
    const buffers = Array.from({ length: Math.min(4, Math.ceil(length / DIRECT_BUFFER)) }, takeBuffer);
    const read = async (k: number, at: number) => {
      const want = Math.min(DIRECT_BUFFER, length - at);
      // A direct read asks for whole blocks; what lies past the range (padding, the next entry) is not used.
      const { bytesRead } = await reader.read(buffers[k]!, 0, reader === this.fh ? want : Math.min(DIRECT_BUFFER, roundUp(want)), offset + at);
      if (bytesRead < want) throw new Error(`${this.path} ended at byte ${offset + at + bytesRead}, before ${offset + length}`);
      return want;
    };
    const inflight: Promise<number>[] = [];
    // A read may fail while an earlier one is awaited: handled at once, thrown when its turn comes.
    const start = (k: number, at: number) => {
      const p = read(k, at);
      p.catch(() => {});
      inflight.push(p);
    };
    try {
      let next = 0;
      for (let k = 0; k < buffers.length; k++, next += DIRECT_BUFFER) start(k, next);
      for (let at = 0, k = 0; at < length; k = (k + 1) % buffers.length) {
        const n = await inflight.shift()!;
        hash.update(buffers[k]!.subarray(0, n));
        at += n;
        if (next < length) {
          start(k, next);
          next += DIRECT_BUFFER;
        }
      }
    } finally {
      await Promise.allSettled(inflight);
      buffers.forEach(releaseBuffer);
    }
    return hash;
  }

  /** The sha256 of the first `size` bytes. */
  async sha256(size: number): Promise<string> {
    return (await this.hashRange(createHash('sha256'), 0, size)).digest('hex');
  }

  async close(): Promise<void> {
    await this.#opened?.close().catch(() => {});
    this.#direct = this.#opened = undefined;
  }
}

/**
 * A file read around the page cache where it can be: one written that way is not in the cache,
 * and reading it buffered would fill the cache at the cost the direct write avoided (on the test
 * VM 2.6 CPU s per GiB, against 0.1 direct). A read that is not whole blocks into a page-aligned
 * memory at a block offset, and every read on a file system without O_DIRECT, goes through `fh`.
 * (Reads of our own kept ahead, four 1 MiB ones in flight, measured slower at 4 GiB: they compete
 * with the fetch's writes for the disk.)
 */
export class DirectReader {
  readonly fh: FileHandle;
  #direct: FileHandle | undefined;
  readonly #opened: FileHandle | undefined;

  private constructor(fh: FileHandle, direct: FileHandle | undefined) {
    this.fh = fh;
    this.#direct = this.#opened = direct;
  }

  /** `aroundPageCache: false` reads everything through the cache (the reader's buffers are the same). */
  static async open(path: string, aroundPageCache = true): Promise<DirectReader> {
    const fh = await open(path, 'r');
    return new DirectReader(fh, aroundPageCache ? await directTwin(fh, path, constants.O_RDONLY) : undefined);
  }

  /**
   * Reads up to `want` bytes at `position` into `into`; the count read. A direct read asks for whole
   * blocks, so up to a block past `want` in `into` may be overwritten (the caller's spare room).
   */
  async read(into: Buffer, want: number, position: number): Promise<number> {
    const whole = roundUp(want);
    const direct = this.#direct;
    if (direct && whole <= into.length && position % BLOCK === 0 && into.byteOffset % BLOCK === 0 && alignedMemory.has(into.buffer)) {
      try {
        const { bytesRead } = await direct.read(into, 0, whole, position);
        return Math.min(bytesRead, want);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
        this.#direct = undefined; // not on this file system after all
      }
    }
    return (await this.fh.read(into, 0, want, position)).bytesRead;
  }

  get direct(): boolean {
    return this.#direct !== undefined;
  }

  async close(): Promise<void> {
    await this.#opened?.close().catch(() => {});
    await this.fh.close();
  }
}
