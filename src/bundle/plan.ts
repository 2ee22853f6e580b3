import { stat, statfs } from 'node:fs/promises';
import { dirname } from 'node:path';
import { OciError } from '../oci/errors.ts';
import { noSpaceCode } from '../util/errors.ts';
import { human } from '../util/format.ts';

export interface SpaceNeed {
  /** Where bytes will be written (a directory that exists or will be created under an existing one). */
  dir: string;
  bytes: number;
  what: string;
  /** The option that moves this need elsewhere, for the advice (e.g. --cache-dir). */
  flag?: string;
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

const freeBytes = async (dir: string): Promise<number> => {
  const fs = await statfs(dir);
  return fs.bavail * fs.bsize;
};

const choose = (flags: string[]) => `choose another ${flags.length ? [...new Set(flags)].join('/') : 'location'}`;

/**
 * Fails early when a file system lacks room for what is about to be written; needs on the same
 * file system add up. 1 % slack covers tar headers and metadata.
 */
export async function checkSpace(needs: SpaceNeed[]): Promise<void> {
  const byDevice = new Map<number, { dir: string; bytes: number; what: string[]; flags: string[] }>();
  for (const n of needs) {
    if (n.bytes <= 0) continue;
    const dir = await existingAncestor(n.dir);
    const dev = (await stat(dir)).dev;
    const cur = byDevice.get(dev) ?? { dir, bytes: 0, what: [], flags: [] };
    cur.bytes += n.bytes;
    cur.what.push(`${n.what} ${human(n.bytes)}`);
    if (n.flag) cur.flags.push(n.flag);
    byDevice.set(dev, cur);
  }
  for (const { dir, bytes, what, flags } of byDevice.values()) {
    const free = await freeBytes(dir);
    const want = Math.ceil(bytes * 1.01);
    if (free < want) {
      throw new OciError('TOO_LARGE', `not enough space on the file system of ${dir}: ${human(want)} needed (${what.join(', ')}), ${human(free)} free; free some space or ${choose(flags)}`);
    }
  }
}

/**
 * The space ran out after the pre-flight check (another writer, a quota, a wrong estimate): one
 * line naming the file system, what was being written, the figures and what to do. Other errors
 * pass through unchanged. `or`: a second place the same work wrote to (the cache beside the
 * bundle); the one with less room left is named, as the write that failed cannot say which it was.
 */
export async function explainNoSpace(err: unknown, o: { dir: string; doing: string; flag: string; needed?: number; or?: { dir: string; flag: string } }): Promise<unknown> {
  const code = noSpaceCode(err);
  if (!code) return err;
  const places = await Promise.all([o, ...(o.or ? [o.or] : [])].map(async (p) => {
    const dir = await existingAncestor(p.dir);
    return { dir, flag: p.flag, free: await freeBytes(dir).catch(() => undefined) };
  }));
  const { dir, flag, free } = places.reduce((a, b) => ((b.free ?? Infinity) < (a.free ?? Infinity) ? b : a));
  const figures = [o.needed !== undefined ? `about ${human(o.needed)} needed` : '', free !== undefined ? `${human(free)} free` : ''].filter(Boolean).join(', ');
  return new OciError(
    'TOO_LARGE',
    `${code === 'EDQUOT' ? 'the disk quota is used up' : 'no space left'} on the file system of ${dir} (${code}) while ${o.doing}${figures ? ` (${figures})` : ''}; free some space or ${choose([flag])}, then run again (finished downloads are kept)`,
    { cause: err },
  );
}
