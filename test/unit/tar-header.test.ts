import { Readable } from 'node:stream';
import { pack as tarPack, type Header } from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { BLOCK, encodeFileHeader, END_OF_ARCHIVE, paddingBytes, tarHeaderBytes, type FileHeader } from '../../src/tar/header.ts';

// Bundles were written by tar-stream 3.2.2 before our own encoder; the same inputs must keep
// giving the same bytes, so tar-stream is the oracle here.
const MTIME = new Date('2025-11-18T12:34:56.789Z');

const NAMES = [
  'a',
  'bundle.json',
  'x'.repeat(99),
  'x'.repeat(100), // exactly fills ustar's name field
  'x'.repeat(101), // no '/' to split at: pax
  `${'d/'.repeat(50)}f`, // 101 characters, split into prefix and name
  `${'d/'.repeat(70)}f`,
  `${'p'.repeat(155)}/${'n'.repeat(100)}`, // the longest ustar can hold (256)
  `${'p'.repeat(156)}/n`, // prefix one too long: pax
  `${'d'.repeat(156)}/f`,
  `${'d/'.repeat(30)}${'f'.repeat(101)}`,
  `artifacts/${'ü'.repeat(10)}`, // non-ASCII: pax
  'artifacts/日本語/ボイス.bin',
  `artifacts/cartesia-acme/loras/${'x'.repeat(120)}.bin`,
  `parts/images/blobs/sha256/${'a'.repeat(64)}/001`,
  'y/'.repeat(200) + 'z', // > 255 characters
  'r'.repeat(1000), // pax record length crosses 3 → 4 digits
  'r'.repeat(989),
  'r'.repeat(990),
];
for (let len = 90; len < 400; len += 7) NAMES.push(`artifacts/cartesia-acme/${'k/'.repeat(len % 40)}${'n'.repeat(len)}`);

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** tar-stream's whole archive for entries with these bodies. */
async function tarStream(entries: { header: FileHeader; body: Buffer }[]): Promise<Buffer> {
  const p = tarPack();
  const out = collect(p as unknown as Readable);
  for (const { header: h, body } of entries) {
    await new Promise<void>((resolve, reject) => {
      const header: Partial<Header> & { name: string } = { name: h.name, size: h.size, mode: h.mode, uid: 0, gid: 0, uname: '', gname: '', mtime: h.mtime, type: 'file' };
      p.entry(header, body, (err) => (err ? reject(err) : resolve()));
    });
  }
  p.finalize();
  return out;
}

/** tar-stream's header bytes for an entry whose body is never written (sizes too large to stream in a test). */
async function tarStreamHeader(h: FileHeader): Promise<Buffer> {
  const p = tarPack();
  const chunks: Buffer[] = [];
  p.on('data', (c) => chunks.push(c as Buffer));
  p.on('error', () => {});
  const sink = p.entry({ name: h.name, size: h.size, mode: h.mode, uid: 0, gid: 0, uname: '', gname: '', mtime: h.mtime, type: 'file' });
  sink.on('error', () => {});
  await new Promise((r) => setTimeout(r, 5));
  p.destroy();
  return Buffer.concat(chunks);
}

const ours = (entries: { header: FileHeader; body: Buffer }[]): Buffer =>
  Buffer.concat([...entries.flatMap(({ header, body }) => [encodeFileHeader(header), body, Buffer.alloc(paddingBytes(body.length))]), END_OF_ARCHIVE]);

describe('encodeFileHeader', () => {
  it('writes what tar-stream writes for short, exact, prefixed, long (pax) and non-ASCII names', async () => {
    for (const name of NAMES) {
      for (const mode of [0o644, 0o755]) {
        const e = [{ header: { name, size: 3, mode, mtime: MTIME }, body: Buffer.from('abc') }];
        expect(ours(e).equals(await tarStream(e)), `${name} ${mode.toString(8)}`).toBe(true);
        expect(encodeFileHeader(e[0]!.header).length, name).toBe(tarHeaderBytes(name));
      }
    }
  });

  it('pads every size as tar-stream does and ends with exactly two zero blocks', async () => {
    const sizes = [0, 1, 511, 512, 513, 1023, 1024, 4096 + 17, 100_000];
    const entries = sizes.map((size, i) => ({ header: { name: i % 2 ? `big/${'n'.repeat(120)}/${i}` : `f${i}`, size, mode: 0o644, mtime: MTIME }, body: Buffer.alloc(size, i + 1) }));
    const expected = await tarStream(entries);
    expect(ours(entries).equals(expected)).toBe(true);
    expect(expected.length % BLOCK).toBe(0);
    expect(expected.subarray(-2 * BLOCK).equals(Buffer.alloc(2 * BLOCK))).toBe(true);
  });

  it('encodes sizes past the 11 octal digits (8 GiB) in base-256 as tar-stream does', async () => {
    for (const size of [2 ** 33 - 1, 2 ** 33, 2 ** 33 + 5, 5 * 2 ** 40 + 123, Number.MAX_SAFE_INTEGER]) {
      for (const name of ['images/blobs/sha256/big', `images/${'l'.repeat(120)}`]) {
        const h = { name, size, mode: 0o644, mtime: MTIME };
        const theirs = await tarStreamHeader(h);
        expect(theirs.length, `${name} ${size}`).toBe(tarHeaderBytes(name));
        expect(encodeFileHeader(h).equals(theirs), `${name} ${size}`).toBe(true);
      }
    }
    const block = encodeFileHeader({ name: 'x', size: 2 ** 33 + 5, mode: 0o644, mtime: MTIME });
    expect(block[124]).toBe(0x80);
    expect(block.readBigUInt64BE(128)).toBe(2n ** 33n + 5n);
  });

  it('matches tar-stream at the mtime range the writer allows', async () => {
    for (const mtime of [new Date(0), new Date(1), new Date((2 ** 31 - 1) * 1000 + 999)]) {
      const e = [{ header: { name: 'm', size: 0, mode: 0o644, mtime }, body: Buffer.alloc(0) }];
      expect(ours(e).equals(await tarStream(e)), mtime.toISOString()).toBe(true);
    }
  });
});
