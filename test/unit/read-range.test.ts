import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { BlockFile, DirectReader } from '../../src/util/direct-io.ts';
import { RANGE_CHUNK, RangeReader } from '../../src/util/read-range.ts';

const data = randomBytes(3 * RANGE_CHUNK + 123);
let dir: string;
let file: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'read-range-'));
  file = join(dir, 'data');
  await writeFile(file, data);
});
afterAll(() => rm(dir, { recursive: true, force: true }));

/** What `read` hands over, copied (the reader reuses its buffers). */
async function collect(start: number, length: number): Promise<{ n: number; bytes: Buffer; chunks: number }> {
  const fh = await DirectReader.open(file, false);
  try {
    const parts: Buffer[] = [];
    const n = await new RangeReader(fh).read(start, length, (c) => parts.push(Buffer.from(c)));
    return { n, bytes: Buffer.concat(parts), chunks: parts.length };
  } finally {
    await fh.close();
  }
}

describe('RangeReader', () => {
  it.each([
    [0, 0],
    [5, 1],
    [0, RANGE_CHUNK],
    [17, RANGE_CHUNK + 1],
    [RANGE_CHUNK - 3, 2 * RANGE_CHUNK + 100],
  ])('reads %i + %i bytes exactly, in chunks of at most RANGE_CHUNK', async (start, length) => {
    const r = await collect(start, length);
    expect(r.n).toBe(length);
    expect(r.bytes.equals(data.subarray(start, start + length))).toBe(true);
    expect(r.chunks).toBe(Math.ceil(length / RANGE_CHUNK));
  });

  it('stops at the end of the file and says how much it read', async () => {
    const r = await collect(data.length - 10, 1000);
    expect(r.n).toBe(10);
    expect(r.bytes.equals(data.subarray(-10))).toBe(true);
  });

  it('passes on an error thrown by the consumer, with no read left running', async () => {
    const fh = await DirectReader.open(file, false);
    try {
      await expect(new RangeReader(fh).read(0, data.length, () => {
        throw new Error('stop');
      })).rejects.toThrow('stop');
    } finally {
      await fh.close();
    }
  });

  it('reads the same bytes around the page cache (DirectReader), and leaves a file written that way out of it', async () => {
    // Whole blocks, written around the cache as well: nothing of the file is cached before the read.
    const blocks = data.subarray(0, 3 * RANGE_CHUNK + 1024);
    const path = join(dir, 'direct');
    const fh = await open(path, 'w+');
    const out = await BlockFile.open(fh, path);
    await out.writeBytes(blocks, 0);
    await out.close();
    await fh.close();
    const reader = await DirectReader.open(path);
    const ranges = new RangeReader(reader);
    try {
      for (const [start, length] of [[0, blocks.length], [512, RANGE_CHUNK + 512], [7, 1000]] as const) {
        const parts: Buffer[] = [];
        expect(await ranges.read(start, length, (c) => parts.push(Buffer.from(c)))).toBe(length);
        expect(Buffer.concat(parts).equals(blocks.subarray(start, start + length)), `${start} + ${length}`).toBe(true);
      }
    } finally {
      ranges.release();
      await reader.close();
    }
    // Where the file system takes O_DIRECT (not tmpfs), only the unaligned read (and the kernel's
    // read-ahead after it, up to 128 KiB) went through the cache: a buffered pass caches all 3 MiB.
    if (reader.direct) expect(Number(execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', path], { encoding: 'utf8' }).trim())).toBeLessThan(blocks.length / 8);
  });
});
