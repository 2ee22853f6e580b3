import { randomBytes } from 'node:crypto';
import { link, open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** A sibling temp name: same directory, so the final rename is atomic on one filesystem. */
export function tempPathFor(finalPath: string): string {
  return join(dirname(finalPath), `.${basename(finalPath)}.${randomBytes(6).toString('hex')}.partial`);
}

/**
 * Writes `data` under a temp name, fsyncs, then renames onto `finalPath`, so a crash never
 * leaves a half-written file under the final name. With `exclusive`, an existing file is kept
 * and the call fails.
 */
export async function writeFileAtomic(
  finalPath: string,
  data: string | Uint8Array,
  opts: { mode?: number; exclusive?: boolean } = {},
): Promise<void> {
  const tmp = tempPathFor(finalPath);
  const fh = await open(tmp, 'wx', opts.mode ?? 0o644);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } catch (err) {
    // A failed write (a full disk) must not leave the temp file behind, taking the space.
    await fh.close().catch(() => {});
    await rm(tmp, { force: true });
    throw err;
  }
  await fh.close();
  try {
    if (opts.exclusive) {
      // link() fails with EEXIST instead of replacing: no window where an existing key is lost.
      await link(tmp, finalPath);
      await rm(tmp);
    } else {
      await rename(tmp, finalPath);
    }
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
