import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { BlockFile, DIRECT_BUFFER, DirectReader } from '../../src/util/direct-io.ts';
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

/** What `read` hands over, copied (the reader reuses its buffers); around the page cache when `direct`. */
async function collect(start: number, length: number, direct = false): Promise<{ n: number; bytes: Buffer; chunks: number; largest: number; chunkSize: number; direct: boolean }> {
  const fh = await DirectReader.open(file, direct);
  try {
    const parts: Buffer[] = [];
    const reader = new RangeReader(fh);
    const n = await reader.read(start, length, (c) => parts.push(Buffer.from(c)));
    reader.release();
    return { n, bytes: Buffer.concat(parts), chunks: parts.length, largest: Math.max(0, ...parts.map((p) => p.length)), chunkSize: reader.chunkSize, direct: fh.direct };
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
  ])('reads %i + %i bytes exactly, through the page cache in 1 MiB chunks and around it in 4 MiB ones', async (start, length) => {
    for (const direct of [false, true]) {
      const r = await collect(start, length, direct);
      expect(r.n).toBe(length);
      expect(r.bytes.equals(data.subarray(start, start + length))).toBe(true);
      // Around the page cache only where the file system allows O_DIRECT (tmpfs does not).
      expect(r.chunkSize).toBe(r.direct ? RANGE_CHUNK : DIRECT_BUFFER);
      expect(r.chunks).toBe(Math.ceil(length / r.chunkSize));
      expect(r.largest).toBe(Math.min(length, r.chunkSize));
    }
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
    // read-ahead after it, up to 128 KiB) went through the cache: a buffered pass caches all of it.
    if (reader.direct) expect(Number(execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', path], { encoding: 'utf8' }).trim())).toBeLessThan(blocks.length / 8);
  });
});
