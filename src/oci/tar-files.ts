import { ExtentFiles, type Extent } from '../tar/extents.ts';
import { scanTar } from '../tar/index.ts';
import type { TarIndex } from '../tar/index.ts';
import { OciError } from './errors.ts';

/**
 * The files of an OCI image layout stored under `prefix` inside an uncompressed tar, served by byte
 * offset from a TarIndex: nothing is extracted. Only regular files are visible.
 */
export class TarLayoutFiles extends ExtentFiles {
  /** `prefix` is a directory inside the tar (`images/` or `images`), or '' for the whole tar. */
  constructor(file: string, prefix: string, index: TarIndex) {
    const dir = prefix === '' || prefix.endsWith('/') ? prefix : `${prefix}/`;
    const description = `tar:${file}${dir === '' ? '' : `:${dir}`}`;
    // Every entry under the prefix counts, not just files: with a path stored twice, which one
    // "is" the file depends on the reader (first wins, last wins, extraction order), so refuse.
    const seen = new Set<string>();
    const files: [string, Extent[]][] = [];
    for (const entry of index.entries) {
      if (!entry.path.startsWith(dir)) continue;
      const rel = entry.path.slice(dir.length);
      if (seen.has(rel)) {
        throw new OciError('LAYOUT', `${description}: '${entry.path}' appears more than once in the tar (again at byte ${entry.headerOffset})`);
      }
      seen.add(rel);
      if (entry.type === 'file') files.push([rel, [{ file, offset: entry.offset, size: entry.size }]]);
    }
    super(description, files);
  }

  /** Scans `file` and serves the layout under `prefix`. */
  static async open(file: string, prefix: string): Promise<TarLayoutFiles> {
    return new TarLayoutFiles(file, prefix, await scanTar(file));
  }
}
