import type { FileHandle } from 'node:fs/promises';

/** Writes all of `buf` at `position` (FileHandle.write may write less than asked). */
export async function writeAll(fh: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  for (let off = 0; off < buf.length; ) off += (await fh.write(buf, off, buf.length - off, position + off)).bytesWritten;
}
