import { createHash, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { EntryHashes } from '../../src/tar/hash-thread.ts';
import { SlotWriter } from '../../src/tar/slot.ts';
import { BlockFile } from '../../src/util/direct-io.ts';
import { scratchFiles } from '../fixtures/scratch-file.ts';

const file = scratchFiles('slot-');
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Chunks of uneven sizes, as a network gives them. */
const chunks = (bytes: Buffer, sizes: number[]) => {
  const out: Buffer[] = [];
  for (let at = 0, i = 0; at < bytes.length; i++) {
    const n = sizes[i % sizes.length]!;
    out.push(bytes.subarray(at, at + n));
    at += n;
  }
  return out;
};

describe('SlotWriter: one entry filled in place', () => {
  it('puts the bytes exactly at offset…offset+size and nowhere else, across several MiB buffers', async () => {
    const { path, fh } = await file(4 << 20);
    const data = randomBytes(2.5 * 2 ** 20 + 17);
    await pipeline(Readable.from(chunks(data, [65536, 1, 16384, 300000])), new SlotWriter(new BlockFile(fh, path), { offset: 1000, size: data.length, what: 'x' }));
    await fh.close();
    const all = await readFile(path);
    expect(all.subarray(1000, 1000 + data.length).equals(data)).toBe(true);
    expect(all.subarray(0, 1000).every((b) => b === 0)).toBe(true);
    expect(all.subarray(1000 + data.length).every((b) => b === 0)).toBe(true);
  });

  it('two slots filled side by side do not disturb each other', async () => {
    const { path, fh } = await file(3 << 20);
    const a = randomBytes(1.5 * 2 ** 20);
    const b = randomBytes(2 ** 20 + 3);
    await Promise.all([
      pipeline(Readable.from(chunks(a, [70000])), new SlotWriter(new BlockFile(fh, path), { offset: 0, size: a.length, what: 'a' })),
      pipeline(Readable.from(chunks(b, [4096, 100000])), new SlotWriter(new BlockFile(fh, path), { offset: a.length, size: b.length, what: 'b' })),
    ]);
    await fh.close();
    const all = await readFile(path);
    expect(all.subarray(0, a.length).equals(a)).toBe(true);
    expect(all.subarray(a.length, a.length + b.length).equals(b)).toBe(true);
  });

  it('`also`: the same bytes go to a second file from its start, unpadded, while the slot gets its padding', async () => {
    const tar = await file(4 << 20);
    const copy = await file(0);
    const data = randomBytes(2.5 * 2 ** 20 + 17);
    // Around the page cache where the file system allows it: the padded last block is written whole
    // from the same buffer the second write reads.
    const [t, c] = await Promise.all([BlockFile.open(tar.fh, tar.path), BlockFile.open(copy.fh, copy.path)]);
    await tar.fh.write(Buffer.alloc(600, 0xaa), 0, 600, 1024 + data.length); // what follows the entry in the tar
    await pipeline(Readable.from(chunks(data, [65536, 1, 16384, 300000])), new SlotWriter(t, { offset: 1024, size: data.length, what: 'x', also: c }));
    await Promise.all([t.close(), c.close()]);
    await Promise.all([tar.fh.close(), copy.fh.close()]);
    expect((await readFile(copy.path)).equals(data)).toBe(true);
    const all = await readFile(tar.path);
    expect(all.subarray(1024, 1024 + data.length).equals(data)).toBe(true);
    const padEnd = 1024 + Math.ceil(data.length / 512) * 512;
    expect(all.subarray(1024 + data.length, padEnd).every((x) => x === 0)).toBe(true);
  });

  it('refuses a byte beyond the slot, naming the entry, and never writes it', async () => {
    const { path, fh } = await file(100);
    const data = randomBytes(60);
    const err = await pipeline(Readable.from([data.subarray(0, 40), data.subarray(40)]), new SlotWriter(new BlockFile(fh, path), { offset: 10, size: 50, what: 'blob sha256:abc' })).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/^blob sha256:abc is longer than the 50 bytes planned for it/);
    await fh.close();
    expect((await readFile(path)).subarray(60).every((b) => b === 0)).toBe(true);
  });

  it('resumes from `from`: the bytes before it are left as they are, `written` counts from the slot start', async () => {
    const { path, fh } = await file(64);
    const data = randomBytes(40);
    const first = new SlotWriter(new BlockFile(fh, path), { offset: 8, size: 40, what: 'x' });
    await pipeline(Readable.from([data.subarray(0, 25)]), first);
    expect(first.written).toBe(25);
    const rest = new SlotWriter(new BlockFile(fh, path), { offset: 8, size: 40, what: 'x' }, 25);
    await pipeline(Readable.from([data.subarray(25)]), rest);
    expect(rest.written).toBe(40);
    await fh.close();
    expect((await readFile(path)).subarray(8, 48).equals(data)).toBe(true);
  });

  it('`hash`: two slots side by side each get their own sha256 on the thread, a resumed one from the file first', async () => {
    const { path, fh } = await file(8 << 20);
    const file1 = new BlockFile(fh, path);
    const a = randomBytes(3 * 2 ** 20 + 5);
    const b = randomBytes(2 ** 20 + 999);
    const hashes = new EntryHashes();
    try {
      const ha = hashes.open();
      const hb = hashes.open();
      await Promise.all([
        pipeline(Readable.from(chunks(a, [65536, 7, 300000])), new SlotWriter(file1, { offset: 512, size: a.length, what: 'a', hash: ha })),
        pipeline(Readable.from(chunks(b, [1000, 70000])), new SlotWriter(file1, { offset: 4 << 20, size: b.length, what: 'b', hash: hb })),
      ]);
      expect(await ha.digest()).toBe(sha256(a));
      expect(await hb.digest()).toBe(sha256(b));
      // The first 1 MiB + 3 bytes of `a` are in the file; the rest comes over a second "connection".
      const from = 2 ** 20 + 3;
      const resumed = hashes.open({ path, start: 512, end: 512 + from });
      await pipeline(Readable.from([a.subarray(from)]), new SlotWriter(file1, { offset: 512, size: a.length, what: 'a', hash: resumed }, from));
      expect(await resumed.digest()).toBe(sha256(a));
    } finally {
      await hashes.close();
      await fh.close();
    }
  });
});
