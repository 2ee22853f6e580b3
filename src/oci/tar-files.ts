import { createReadStream } from 'node:fs';
import { open as openFile } from 'node:fs/promises';
import { PassThrough } from 'node:stream';
import type { Readable } from 'node:stream';
import { readAt, scanTar } from '../tar/index.ts';
import type { TarEntry, TarIndex } from '../tar/index.ts';
import { OciError } from './errors.ts';
import type { LayoutFiles } from './types.ts';

/** read() holds the whole file in memory; layout files read that way are manifests and index.json. */
const MAX_READ = 64 * 1024 * 1024;

/**
 * The files of an OCI image layout stored under `prefix` inside an uncompressed tar, served by byte
 * offset from a TarIndex: nothing is extracted. Only regular files are visible.
 */
export class TarLayoutFiles implements LayoutFiles {
  readonly description: string;
  readonly #file: string;
  /** Layout-relative path → tar entry. */
  readonly #files = new Map<string, TarEntry>();

  /** `prefix` is a directory inside the tar (`images/` or `images`), or '' for the whole tar. */
  constructor(file: string, prefix: string, index: TarIndex) {
    const dir = prefix === '' || prefix.endsWith('/') ? prefix : `${prefix}/`;
    this.#file = file;
    this.description = `tar:${file}${dir === '' ? '' : `:${dir}`}`;
    // Every entry under the prefix counts, not just files: with a path stored twice, which one
    // "is" the file depends on the reader (first wins, last wins, extraction order), so refuse.
    const seen = new Set<string>();
    for (const entry of index.entries) {
      if (!entry.path.startsWith(dir)) continue;
      const rel = entry.path.slice(dir.length);
      if (seen.has(rel)) {
        throw new OciError('LAYOUT', `${this.description}: '${entry.path}' appears more than once in the tar (again at byte ${entry.headerOffset})`);
      }
      seen.add(rel);
      if (entry.type === 'file') this.#files.set(rel, entry);
    }
  }

  /** Scans `file` and serves the layout under `prefix`. */
  static async open(file: string, prefix: string): Promise<TarLayoutFiles> {
    return new TarLayoutFiles(file, prefix, await scanTar(file));
  }

  async size(path: string): Promise<number | undefined> {
    return this.#files.get(path)?.size;
  }

  async read(path: string): Promise<Buffer> {
    const entry = this.#entry(path);
    if (entry.size > MAX_READ) {
      throw new OciError('TOO_LARGE', `${this.description}: ${path} is ${entry.size} bytes, more than the ${MAX_READ} read into memory`);
    }
    const fh = await openFile(this.#file, 'r');
    try {
      const buf = await readAt(fh, entry.offset, entry.size);
      if (buf.length !== entry.size) {
        throw new OciError('LAYOUT', `${this.description}: ${path} ends after ${buf.length} of ${entry.size} bytes (was the tar changed?)`);
      }
      return buf;
    } finally {
      await fh.close();
    }
  }

  async open(path: string, offset: number): Promise<Readable> {
    const entry = this.#entry(path);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > entry.size) {
      throw new OciError('LAYOUT', `${this.description}: offset ${offset} is outside ${path} (${entry.size} bytes)`);
    }
    if (offset === entry.size) {
      // createReadStream refuses start > end, so an empty range gets an empty stream of its own.
      const empty = new PassThrough();
      empty.end();
      return empty;
    }
    return createReadStream(this.#file, {
      start: entry.offset + offset,
      end: entry.offset + entry.size - 1,
      highWaterMark: 1 << 20,
    });
  }

  #entry(path: string): TarEntry {
    const entry = this.#files.get(path);
    if (entry === undefined) throw new OciError('NOT_FOUND', `${this.description}: no file ${path}`);
    return entry;
  }
}
