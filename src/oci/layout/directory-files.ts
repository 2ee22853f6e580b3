import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { join, sep } from 'node:path';
import { Readable } from 'node:stream';
import { OciError } from '../errors.ts';
import type { LayoutFiles } from '../types.ts';

/** The files of an image layout on disk. */
export class DirectoryFiles implements LayoutFiles {
  readonly dir: string;
  readonly description: string;

  constructor(dir: string) {
    this.dir = dir;
    this.description = `oci:${dir}`;
  }

  #path(p: string): string {
    if (p.split('/').some((c) => c === '..' || c === '') || p.includes('\\')) throw new OciError('LAYOUT', `refusing layout path "${p}"`);
    return join(this.dir, ...p.split('/'));
  }

  async size(p: string): Promise<number | undefined> {
    try {
      const s = await stat(this.#path(p));
      return s.isFile() ? s.size : undefined;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  read(p: string): Promise<Buffer> {
    return readFile(this.#path(p));
  }

  async open(p: string, offset: number): Promise<Readable> {
    const size = await this.size(p);
    if (size === undefined) throw new OciError('NOT_FOUND', `${this.description}: ${p.split(sep).join('/')} is missing`);
    if (offset >= size) return Readable.from([], { objectMode: false });
    return createReadStream(this.#path(p), { start: offset, highWaterMark: 1 << 20 });
  }
}
