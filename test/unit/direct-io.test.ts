import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { open, readFile, stat, type FileHandle } from 'node:fs/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { openFileSlot } from '../../src/tar/slot.ts';
import { alignedBuffer, BlockFile, DIRECT_BUFFER, DirectReader, releaseBuffer, sharedBuffer, takeBuffer } from '../../src/util/direct-io.ts';
import { scratchFiles } from '../fixtures/scratch-file.ts';

const scratch = scratchFiles('direct-io-');
afterEach(() => {
  delete process.env.CARTESIA_AIRGAP_BUFFERED_IO;
});

async function file(size: number) {
  const { path, fh } = await scratch(size);
  return { path, fh, file: await BlockFile.open(fh, path) };
}

const filled = (bytes: Buffer) => {
  const b = takeBuffer();
  bytes.copy(b);
  return b;
};

describe('pooled buffers', () => {
  it('are 1 MiB, and one given back is handed out again rather than a new one', () => {
    const a = takeBuffer();
    expect(a.length).toBe(DIRECT_BUFFER);
    releaseBuffer(a);
    expect(takeBuffer()).toBe(a);
    releaseBuffer(a);
  });

  it('take back only their own: a buffer of another size given back is not handed out as a 1 MiB one', () => {
    for (const other of [alignedBuffer(4 * DIRECT_BUFFER), sharedBuffer(2 * DIRECT_BUFFER).buf]) {
      releaseBuffer(other);
      const next = takeBuffer();
      expect(next).not.toBe(other);
      expect(next.length).toBe(DIRECT_BUFFER);
      releaseBuffer(next);
    }
  });
});

describe('BlockFile: positional writes around the page cache where the filesystem allows', () => {
  it('goes direct where this filesystem accepts O_DIRECT', async () => {
    const { path, fh, file: f } = await file(4096);
    const probe = await open(path, constants.O_RDONLY | constants.O_DIRECT).then(
      (h) => h.close().then(() => true),
      () => false,
    );
    expect(f.direct).toBe(probe);
    await f.close();
    await fh.close();
  });

  it('writes whole blocks and a padded last block exactly where asked, zeros up to the block end and nothing beyond', async () => {
    const { path, fh, file: f } = await file(3 * DIRECT_BUFFER);
    const data = randomBytes(DIRECT_BUFFER + 700);
    const at = 1024; // tar data starts on 512-byte boundaries
    const first = filled(data.subarray(0, DIRECT_BUFFER));
    const last = takeBuffer().fill(0xff); // the padding must come out as zeros, whatever the buffer held
    data.copy(last, 0, DIRECT_BUFFER);
    await f.write(first, DIRECT_BUFFER, at, at + DIRECT_BUFFER + 1024);
    await f.write(last, 700, at + DIRECT_BUFFER, at + DIRECT_BUFFER + 1024);
    // Beside the padded entry: a neighbour written through the page cache at an odd place.
    const neighbour = randomBytes(300);
    await fh.write(neighbour, 0, 300, at + DIRECT_BUFFER + 1024);
    [first, last].forEach(releaseBuffer);
    const whole = await readFile(path);
    expect(whole.subarray(at, at + data.length).equals(data)).toBe(true);
    expect(whole.subarray(at + data.length, at + DIRECT_BUFFER + 1024).every((b) => b === 0)).toBe(true);
    expect(whole.subarray(at + DIRECT_BUFFER + 1024, at + DIRECT_BUFFER + 1324).equals(neighbour)).toBe(true);
    expect(whole.subarray(0, at).every((b) => b === 0)).toBe(true);
    expect(await f.sha256(whole.length)).toBe(createHash('sha256').update(whole).digest('hex'));
    await f.close();
    await fh.close();
  });

  it('writes unaligned requests and ordinary buffers through the page cache, never padding them', async () => {
    const { path, fh, file: f } = await file(8192);
    const a = randomBytes(1000);
    const b = filled(randomBytes(100));
    await f.write(a, 1000, 10, 2048); // not a pooled buffer
    await f.write(b, 100, 3000, 4096); // not on a block boundary
    await f.write(b, 100, 4096); // the area's end unknown: no padding allowed
    releaseBuffer(b);
    const whole = await readFile(path);
    expect(whole.subarray(10, 1010).equals(a)).toBe(true);
    expect(whole.subarray(3000, 3100).equals(b.subarray(0, 100))).toBe(true);
    expect(whole.subarray(4096, 4196).equals(b.subarray(0, 100))).toBe(true);
    expect(whole.subarray(4196).every((x) => x === 0)).toBe(true);
    expect(await f.sha256(5000)).toBe(createHash('sha256').update(whole.subarray(0, 5000)).digest('hex'));
    await f.close();
    await fh.close();
  });

  it('hashes a file of several buffers read four at a time, and names a file shorter than asked', async () => {
    const { path, fh, file: f } = await file(0);
    const data = randomBytes(5 * DIRECT_BUFFER + 512);
    await fh.write(data, 0, data.length, 0);
    expect(await f.sha256(data.length)).toBe(createHash('sha256').update(data).digest('hex'));
    await expect(f.sha256(data.length + 512)).rejects.toThrow(/f ended at byte 5243392, before 5243904/);
    expect((await readFile(path)).length).toBe(data.length);
    await f.close();
    await fh.close();
  });

  it('where a direct write is refused (EINVAL: no O_DIRECT after all, or a 4 KiB-block disk), writes that and every later one through the page cache', async () => {
    const { path, fh } = await scratch(8192);
    let refused = 0;
    // A direct handle whose file system says EINVAL, as one without O_DIRECT support does.
    const refusing = { write: async () => Promise.reject(Object.assign(new Error('EINVAL: invalid argument, write'), { code: 'EINVAL', errno: ++refused })), close: async () => {} };
    const f = new BlockFile(fh, path, refusing as unknown as FileHandle);
    const a = filled(randomBytes(4096));
    await f.write(a, 4096, 0);
    await f.write(a, 4096, 4096);
    releaseBuffer(a);
    expect(refused).toBe(1);
    expect(f.direct).toBe(false);
    const whole = await readFile(path);
    expect(whole.subarray(0, 4096).equals(a.subarray(0, 4096))).toBe(true);
    expect(whole.subarray(4096).equals(a.subarray(0, 4096))).toBe(true);
    await f.close();
    await fh.close();
  });

  it('with CARTESIA_AIRGAP_BUFFERED_IO=1 opens no direct handle', async () => {
    process.env.CARTESIA_AIRGAP_BUFFERED_IO = '1';
    const { fh, file: f } = await file(4096);
    expect(f.direct).toBe(false);
    await fh.close();
  });
});

describe('DirectReader: reads around the page cache into aligned memory, through it otherwise', () => {
  it('gives the exact bytes: direct at block offsets into pooled memory (a whole-block read past `want` stays in the spare room), buffered elsewhere', async () => {
    const bytes = randomBytes(3 * DIRECT_BUFFER + 1234);
    const { path, fh } = await scratch(0);
    await fh.writeFile(bytes);
    await fh.close();
    const probe = await open(path, constants.O_RDONLY | constants.O_DIRECT).then((h) => h.close().then(() => true), () => false);
    const r = await DirectReader.open(path);
    try {
      expect(r.direct).toBe(probe);
      const into = takeBuffer();
      into.fill(0xee);
      // 1000 bytes wanted at a block offset: 1024 read (whole blocks), 1000 counted, the room past them untouched by meaning.
      expect(await r.read(into.subarray(512), 1000, 512)).toBe(1000);
      expect(into.subarray(512, 1512).equals(bytes.subarray(512, 1512))).toBe(true);
      expect(into.subarray(0, 512).every((b) => b === 0xee)).toBe(true);
      // The file's tail: fewer bytes than wanted.
      const tail = 3 * DIRECT_BUFFER;
      expect(await r.read(into, DIRECT_BUFFER, tail)).toBe(1234);
      expect(into.subarray(0, 1234).equals(bytes.subarray(tail))).toBe(true);
      // An unaligned position, an unaligned view, and memory not from the pool: through the page cache, same bytes.
      for (const [target, at] of [[into, 100], [into.subarray(7), 4096], [Buffer.alloc(DIRECT_BUFFER), 8192]] as const) {
        expect(await r.read(target, 5000, at)).toBe(5000);
        expect(target.subarray(0, 5000).equals(bytes.subarray(at, at + 5000))).toBe(true);
      }
      releaseBuffer(into);
    } finally {
      await r.close();
    }
  });
});

describe('openFileSlot: a whole file filled around the page cache', () => {
  it('holds exactly the bytes once finished (the short last block through the page cache, never padded), also when resumed part way', async () => {
    const bytes = randomBytes(2 * DIRECT_BUFFER + 777);
    const { path, fh } = await scratch(0);
    await fh.close();
    const first = await openFileSlot(path, bytes.length, 'test blob', { flags: 'w' });
    await pipeline(Readable.from([bytes.subarray(0, DIRECT_BUFFER)]), first.sink); // cut short: an earlier run's part
    await first.close();
    expect((await readFile(path)).equals(bytes.subarray(0, DIRECT_BUFFER))).toBe(true);
    const rest = await openFileSlot(path, bytes.length, 'test blob', { flags: 'r+', from: DIRECT_BUFFER });
    try {
      await pipeline(Readable.from([bytes.subarray(DIRECT_BUFFER, DIRECT_BUFFER + 5000), bytes.subarray(DIRECT_BUFFER + 5000)]), rest.sink);
      // Every write done, not yet finished: a kill here must leave a prefix of the blob, never more.
      expect((await stat(path)).size).toBe(bytes.length);
      await rest.finish();
    } finally {
      await rest.close();
    }
    const got = await readFile(path);
    expect(got.length).toBe(bytes.length);
    expect(createHash('sha256').update(got).digest('hex')).toBe(createHash('sha256').update(bytes).digest('hex'));
  });
});
