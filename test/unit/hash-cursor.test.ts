import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { HashCursor } from '../../src/tar/hash-cursor.ts';
import { BlockFile } from '../../src/util/direct-io.ts';
import { scratchFiles } from '../fixtures/scratch-file.ts';

const scratch = scratchFiles('hash-cursor-');

async function blockFile(size: number) {
  const { path, fh } = await scratch(size);
  return { fh, file: await BlockFile.open(fh, path) };
}

const tick = () => new Promise((r) => setTimeout(r, 20));

describe('HashCursor: the whole-file sha256 of a file filled out of order', () => {
  it('hashes in file order however the ranges land, and waits at a gap until it is filled', async () => {
    // Long enough that one tile spans several of the hashing thread's 4 MiB reads.
    const data = randomBytes(9 * 2 ** 20 + 4096);
    const { fh, file } = await blockFile(data.length);
    const cursor = new HashCursor(file, data.length);
    // Tiles of uneven size, landed last-first, with the first one held back.
    const cuts = [0, 512, 1_049_088, 1_050_112, 9 * 2 ** 20, data.length];
    const tiles = cuts.slice(1).map((end, i) => [cuts[i]!, end] as const);
    for (const [start, end] of tiles.slice(1).reverse()) {
      await fh.write(data, start, end - start, start);
      cursor.landed(start, end);
    }
    await tick();
    expect(cursor.hashed).toBe(0); // byte 0 has not landed: nothing after it can be hashed
    await fh.write(data, 0, 512, 0);
    cursor.landed(0, 512);
    expect(await cursor.digest()).toBe(createHash('sha256').update(data).digest('hex'));
    expect(cursor.hashed).toBe(data.length);
    await file.close();
    await fh.close();
  });

  it('stopped before the end: the digest is refused, naming where it stopped, and no read is left running', async () => {
    const { fh, file } = await blockFile(8192);
    const cursor = new HashCursor(file, 8192);
    cursor.landed(0, 4096);
    while (cursor.hashed < 4096) await tick(); // the hashing thread takes a moment to start
    await cursor.stop();
    await expect(cursor.digest()).rejects.toThrow(/stopped at byte 4096/);
    await file.close();
    await fh.close();
  });
});
