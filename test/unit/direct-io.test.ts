import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { BlockFile, DIRECT_BUFFER, releaseBuffer, takeBuffer } from '../../src/util/direct-io.ts';
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
