import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { hashFile, MultiHasher } from '../../src/objects/hashes.ts';

const crcHex = (b64: string) => Buffer.from(b64, 'base64').toString('hex');

async function viaStream(chunks: Buffer[]): Promise<{ out: Buffer; result: ReturnType<MultiHasher['result']> }> {
  const hasher = await MultiHasher.create();
  const seen: Buffer[] = [];
  await pipeline(Readable.from(chunks), hasher, new Writable({ write: (c: Buffer, _e, cb) => (seen.push(c), cb()) }));
  return { out: Buffer.concat(seen), result: hasher.result() };
}

describe('MultiHasher', () => {
  it('gives the CRC32C check value and GCS-style base64 for "123456789"', async () => {
    const r = (await MultiHasher.create()).update(Buffer.from('123456789')).result();
    expect(crcHex(r.crc32c)).toBe('e3069283'); // the Castagnoli check value, big-endian
    expect(r.crc32c).toBe('4waSgw=='); // what `gsutil hash -c` prints for this content
    expect(r.md5).toBe('JfnnlDI7RTiF9RgfG2JNCw==');
    expect(r.sha256).toBe('15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225');
    expect(r.size).toBe(9);
  });

  it('matches the RFC 3720 (iSCSI) CRC32C vectors', async () => {
    const crc = async (b: Buffer) => crcHex((await MultiHasher.create()).update(b).result().crc32c);
    expect(await crc(Buffer.alloc(32, 0))).toBe('8a9136aa');
    expect(await crc(Buffer.alloc(32, 0xff))).toBe('62a8ab43');
    expect(await crc(Buffer.from(Array.from({ length: 32 }, (_, i) => i)))).toBe('46dd794e');
    expect(await crc(Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i)))).toBe('113fdb5c');
  });

  it('hashes the empty object as GCS reports it', async () => {
    const r = (await MultiHasher.create()).result();
    expect(r).toEqual({ size: 0, sha256: createHash('sha256').digest('hex'), md5: '1B2M2Y8AsgTpgAmY7PhCfg==', crc32c: 'AAAAAA==' });
  });

  it('agrees with node:crypto for sha256 and md5, and passes bytes through unchanged', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 17);
    const { out, result } = await viaStream([data]);
    expect(out.equals(data)).toBe(true);
    expect(result.sha256).toBe(createHash('sha256').update(data).digest('hex'));
    expect(result.md5).toBe(createHash('md5').update(data).digest('base64'));
    expect(result.size).toBe(data.length);
  });

  it('gives the same result however the input is chunked', async () => {
    const data = randomBytes(5 * 1024 * 1024 + 3);
    const whole = (await viaStream([data])).result;
    const cuts = [0, 1, 4095, 1 << 20, (1 << 20) + 1, 3_333_333, data.length];
    const pieces = cuts.slice(1).map((end, i) => data.subarray(cuts[i], end));
    expect((await viaStream(pieces)).result).toEqual(whole);
    const bytewise = await MultiHasher.create();
    for (let i = 0; i < 70_000; i += 7) bytewise.update(data.subarray(i, i + 7));
    expect(bytewise.result()).toEqual((await viaStream([data.subarray(0, 70_000)])).result);
  });

  it('result() is stable and update() afterwards is refused', async () => {
    const h = (await MultiHasher.create()).update(Buffer.from('abc'));
    expect(h.result()).toEqual(h.result());
    expect(() => h.update(Buffer.from('d'))).toThrow(/after result/);
  });

  it('skips MD5 when not asked for, and the other digests stay the same', async () => {
    const data = randomBytes(100_000);
    const all = (await MultiHasher.create()).update(data).result();
    const some = (await MultiHasher.create({ md5: false })).update(data).result();
    expect(some.md5).toBeUndefined();
    expect(some).toEqual({ size: all.size, sha256: all.sha256, crc32c: all.crc32c });
  });

  it('hashFile reads a file in one pass', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'objects-hashes-'));
    try {
      const data = randomBytes(2_500_000);
      await writeFile(join(dir, 'f'), data);
      expect(await hashFile(join(dir, 'f'))).toEqual((await viaStream([data])).result);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
