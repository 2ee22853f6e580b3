/**
 * Files stored as byte ranges ("extents") of local files and read in place: the entries of one
 * uncompressed tar, or an entry cut into pieces across the volume tars of a split bundle. Nothing
 * is extracted or joined on disk; a file in several extents streams from one after the other.
 */
import { createReadStream } from 'node:fs';
import { open as openFile } from 'node:fs/promises';
import { PassThrough, Readable } from 'node:stream';
import { OciError } from '../oci/errors.ts';
import type { LayoutFiles } from '../oci/types.ts';
import { readAt } from './index.ts';

export interface Extent {
  file: string;
  /** Byte offset in `file`. */
  offset: number;
  size: number;
}

/** read() holds the whole file in memory; files read that way are manifests and index.json. */
const MAX_READ = 64 * 1024 * 1024;
/**
 * 64 KiB reads, not 1 MiB: a chunk this size goes into the socket at once and dies young, where a
 * 1 MiB one waited in the socket's queue long enough to be promoted, and V8 frees promoted chunks
 * only once external memory has grown ~64 MiB. 4 GiB install on one bed: peak RSS 227-264 MiB
 * (8 runs) → 157-216 (11 runs), time the same within the runs' spread (256 KiB: 188-250).
 */
const HIGH_WATER_MARK = 64 * 1024;

interface Stored {
  size: number;
  extents: readonly Extent[];
}

export class ExtentFiles implements LayoutFiles {
  readonly description: string;
  readonly #files: Map<string, Stored>;

  /** `files`: path → its extents in order (one for a plain tar entry). */
  constructor(description: string, files: Iterable<[string, readonly Extent[]]>) {
    this.description = description;
    this.#files = new Map([...files].map(([p, extents]) => [p, { size: extents.reduce((n, e) => n + e.size, 0), extents }]));
  }

  /** The files under `prefix` (e.g. `images/`), with paths relative to it. */
  under(prefix: string, description: string): ExtentFiles {
    const dir = prefix === '' || prefix.endsWith('/') ? prefix : `${prefix}/`;
    const out: [string, readonly Extent[]][] = [];
    for (const [p, s] of this.#files) if (p.startsWith(dir)) out.push([p.slice(dir.length), s.extents]);
    return new ExtentFiles(description, out);
  }

  has(path: string): boolean {
    return this.#files.has(path);
  }

  /** The first extent (where the file starts) and the whole size. */
  location(path: string): { file: string; offset: number; size: number } | undefined {
    const s = this.#files.get(path);
    const first = s?.extents[0];
    return s && { file: first?.file ?? '', offset: first?.offset ?? 0, size: s.size };
  }

  async size(path: string): Promise<number | undefined> {
    return this.#files.get(path)?.size;
  }

  async read(path: string): Promise<Buffer> {
    const s = this.#stored(path);
    if (s.size > MAX_READ) {
      throw new OciError('TOO_LARGE', `${this.description}: ${path} is ${s.size} bytes, more than the ${MAX_READ} read into memory`);
    }
    const parts: Buffer[] = [];
    for (const e of s.extents) {
      const fh = await openFile(e.file, 'r');
      try {
        parts.push(await readAt(fh, e.offset, e.size));
      } finally {
        await fh.close();
      }
    }
    const buf = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    if (buf.length !== s.size) {
      throw new OciError('LAYOUT', `${this.description}: ${path} ends after ${buf.length} of ${s.size} bytes (was the tar changed?)`);
    }
    return buf;
  }

  async open(path: string, offset: number): Promise<Readable> {
    return this.stream(path, offset);
  }

  /** The file's bytes from `offset` on (`length` of them, else to its end), straight from the extents. */
  stream(path: string, offset = 0, length?: number): Readable {
    const s = this.#stored(path);
    const end = length === undefined ? s.size : offset + length;
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(end) || end < offset || end > s.size) {
      throw new OciError('LAYOUT', `${this.description}: bytes ${offset} to ${end} are outside ${path} (${s.size} bytes)`);
    }
    const ranges: { file: string; start: number; end: number }[] = [];
    // Extent by extent: the part of [offset, end) each one holds, in file positions.
    let at = 0;
    for (const e of s.extents) {
      const from = Math.max(offset, at);
      const to = Math.min(end, at + e.size);
      if (from < to) ranges.push({ file: e.file, start: e.offset + (from - at), end: e.offset + (to - at) - 1 });
      at += e.size;
    }
    if (ranges.length === 0) {
      // createReadStream refuses start > end, so an empty range gets an empty stream of its own.
      const empty = new PassThrough();
      empty.end();
      return empty;
    }
    if (ranges.length === 1) return rangeStream(ranges[0]!);
    return Readable.from(concat(ranges), { objectMode: false, highWaterMark: HIGH_WATER_MARK });
  }

  #stored(path: string): Stored {
    const s = this.#files.get(path);
    if (s === undefined) throw new OciError('NOT_FOUND', `${this.description}: no file ${path}`);
    return s;
  }
}

const rangeStream = (r: { file: string; start: number; end: number }): Readable => createReadStream(r.file, { start: r.start, end: r.end, highWaterMark: HIGH_WATER_MARK });

/** One extent after the other; each file is opened only when its turn comes, and closed after. */
async function* concat(ranges: { file: string; start: number; end: number }[]): AsyncGenerator<Buffer> {
  for (const r of ranges) {
    const s = rangeStream(r);
    try {
      for await (const chunk of s as AsyncIterable<Buffer>) yield chunk;
    } finally {
      s.destroy();
    }
  }
}
