import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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
  const fh = await open(file, 'r');
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
    const fh = await open(file, 'r');
    try {
      await expect(new RangeReader(fh).read(0, data.length, () => {
        throw new Error('stop');
      })).rejects.toThrow('stop');
    } finally {
      await fh.close();
    }
  });
});
