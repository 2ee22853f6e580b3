// An artifact fetched into a bundle written in place is checked against the store's CRC32C (or
// MD5) computed on the hashing thread: good bytes land with their sha256, damaged ones are refused.
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { createCRC32 } from 'hash-wasm';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { closeDirect, openDirect, PLACEHOLDER, type DirectBundle } from '../../src/bundle/direct.ts';
import { fetchObjectInto } from '../../src/bundle/direct-fill.ts';
import { isObjectError } from '../../src/objects/cache.ts';
import type { ObjectInfo, ObjectSource } from '../../src/objects/types.ts';
import { rejection } from './helpers.ts';

const crc32c = async (b: Buffer) => {
  const h = await createCRC32(0x82f63b78);
  h.update(b);
  return Buffer.from(h.digest('binary')).toString('base64');
};

/** Serves `served` for every read, whatever the metadata says. */
const source = (info: ObjectInfo, served: Buffer): ObjectSource => ({
  description: 'memory',
  async *list() {},
  stat: async () => info,
  read: async (_info, offset = 0) => Readable.from([served.subarray(offset, offset + 70_000), served.subarray(offset + 70_000)]),
});

let dir: string;
let d: DirectBundle | undefined;
beforeEach(async () => (dir = await mkdtemp(join(tmpdir(), 'direct-fill-'))));
afterEach(async () => {
  if (d) await closeDirect(d);
  d = undefined;
  await rm(dir, { recursive: true, force: true });
});

async function bundleFor(path: string, size: number): Promise<DirectBundle> {
  const entry = { path, size, sha256: PLACEHOLDER, open: async () => Readable.from([]) };
  return (d = await openDirect(join(dir, 'b.tar'), [{ path: 'bundle.json', bytes: Buffer.alloc(100) }], [entry], new Date(0), []));
}

describe('fetchObjectInto', () => {
  const data = randomBytes(3 << 20 | 77); // several pool buffers and a ragged end
  const path = 'artifacts/b/k';

  it('lands an object whose bytes match the store, with its sha256, checked by CRC32C', async () => {
    const info = { bucket: 'b', key: 'k', size: data.length, generation: '1', crc32c: await crc32c(data) };
    const b = await bundleFor(path, data.length);
    const got = await fetchObjectInto(source(info, data), info, b, path);
    expect(got).toEqual({ sha256: createHash('sha256').update(data).digest('hex'), fetched: true });
    const p = b.places.get(path)!;
    expect((await readFile(b.partial)).subarray(p.offset, p.offset + p.size).equals(data)).toBe(true);
  });

  it('refuses bytes that differ from the store by CRC32C, or by MD5 when it gives no CRC32C', async () => {
    const damaged = Buffer.from(data);
    damaged.writeUInt8(damaged.readUInt8(2 << 20) ^ 1, 2 << 20);
    const byCrc = { bucket: 'b', key: 'k', size: data.length, generation: '1', crc32c: await crc32c(data) };
    const err = await rejection(fetchObjectInto(source(byCrc, damaged), byCrc, await bundleFor(path, data.length), path));
    expect(isObjectError(err, 'MISMATCH')).toBe(true);
    expect(err.message).toMatch(/^gs:\/\/b\/k arrived damaged: its crc32c is \S+ where the store says \S+; run again/);
    expect(d!.done.has(path)).toBe(false);
    await closeDirect(d!);
    d = undefined;
    await rm(join(dir, 'b.tar.partial'));
    await rm(join(dir, 'b.tar.partial.done'));

    const byMd5 = { bucket: 'b', key: 'k', size: data.length, generation: '1', md5: createHash('md5').update(data).digest('base64') };
    const err2 = await rejection(fetchObjectInto(source(byMd5, damaged), byMd5, await bundleFor(path, data.length), path));
    expect(err2.message).toMatch(/^gs:\/\/b\/k arrived damaged: its md5 is \S+ where the store says \S+; run again/);
  });
});
