import { stat, statfs } from 'node:fs/promises';
import { dirname } from 'node:path';
import { OciError } from '../oci/errors.ts';

export interface SpaceNeed {
  /** Where bytes will be written (a directory that exists or will be created under an existing one). */
  dir: string;
  bytes: number;
  what: string;
}

async function existingAncestor(dir: string): Promise<string> {
  let d = dir;
  for (;;) {
    try {
      await stat(d);
      return d;
    } catch {
      const up = dirname(d);
      if (up === d) return d;
      d = up;
    }
  }
}

const gib = (n: number) => `${(n / 2 ** 30).toFixed(2)} GiB`;

/**
 * Fails early when a file system lacks room for what is about to be written; needs on the same
 * file system add up. 1 % slack covers tar headers and metadata.
 */
export async function checkSpace(needs: SpaceNeed[]): Promise<void> {
  const byDevice = new Map<number, { dir: string; bytes: number; what: string[] }>();
  for (const n of needs) {
    if (n.bytes <= 0) continue;
    const dir = await existingAncestor(n.dir);
    const dev = (await stat(dir)).dev;
    const cur = byDevice.get(dev) ?? { dir, bytes: 0, what: [] };
    cur.bytes += n.bytes;
    cur.what.push(`${n.what} ${gib(n.bytes)}`);
    byDevice.set(dev, cur);
  }
  for (const { dir, bytes, what } of byDevice.values()) {
    const fs = await statfs(dir);
    const free = fs.bavail * fs.bsize;
    const want = Math.ceil(bytes * 1.01);
    if (free < want) {
      throw new OciError('TOO_LARGE', `not enough space on the file system of ${dir}: ${gib(want)} needed (${what.join(', ')}), ${gib(free)} free; free some space or choose another --cache-dir/--output`);
    }
  }
}
