// The hashing thread keeps the process alive while an answer is awaited, and only then: run in a
// child process, so "the process exits" and "the process waits for the answer" can be observed.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MultiHasher } from '../../src/objects/hashes.ts';
import { EntryHashes } from '../../src/tar/hash-thread.ts';
import { takeBuffer } from '../../src/util/direct-io.ts';

const MODULE = join(import.meta.dirname, '..', '..', 'src', 'tar', 'hash-thread.ts');

function child(body: string): Promise<{ code: number | null; stdout: string; ms: number }> {
  const started = Date.now();
  const code = `import { HashThread } from ${JSON.stringify(MODULE)};\n${body}`;
  const p = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'], timeout: 20_000, killSignal: 'SIGKILL' });
  let stdout = '';
  p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  return new Promise((resolve, reject) => p.on('error', reject).on('close', (c) => resolve({ code: c, stdout, ms: Date.now() - started })));
}

describe('HashThread', () => {
  it('answers an update and the digest even when nothing else keeps the process alive', async () => {
    const r = await child(`
const shared = new SharedArrayBuffer(65536);
new Uint8Array(shared).fill(7, 0, 1000);
const t = new HashThread([shared]);
await t.update(0, 1000);
console.log(await t.digest());
`);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(createHash('sha256').update(Buffer.alloc(1000, 7)).digest('hex'));
  });

  it('does not hold the process open when it is never closed', async () => {
    const r = await child(`
const t = new HashThread([new SharedArrayBuffer(65536)]);
await t.update(0, 10);
console.log('left open');
`);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('left open\n');
    expect(r.ms).toBeLessThan(15_000); // killed at 20 s if the thread held it
  });
});

describe('EntryHashes', () => {
  it('keeps one hash per entry, fed in any interleaving from shared pool buffers', async () => {
    const hashes = new EntryHashes();
    try {
      const [x, y] = [hashes.open(), hashes.open()];
      const buf = takeBuffer();
      const expectX = createHash('sha256');
      const expectY = createHash('sha256');
      for (let i = 0; i < 3; i++) {
        buf.fill(i + 1, 0, 5000);
        await x.update(buf, 5000);
        expectX.update(buf.subarray(0, 5000));
        buf.fill(i + 100, 0, 70000);
        await y.update(buf, 70000);
        expectY.update(buf.subarray(0, 70000));
      }
      expect(await y.digest()).toBe(expectY.digest('hex'));
      const xHex = expectX.digest('hex');
      expect(await x.digest()).toBe(xHex);
      expect(await x.digest()).toBe(xHex); // asked again (a caller's error path): the same answer, not a new hash's
    } finally {
      await hashes.close();
    }
  });

  it("gives a bucket object's CRC32C and MD5 as hash-wasm and node:crypto do, from slices at any offset and length", async () => {
    const hashes = new EntryHashes();
    try {
      const shared = new SharedArrayBuffer(1 << 20);
      const bytes = new Uint8Array(shared);
      for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 2654435761) >>> 24;
      // The check value of the CRC32C catalogue ("123456789" → 0xE3069283), alone and unaligned.
      bytes.set(Buffer.from('123456789'), 5);
      const check = hashes.openObject(false);
      await check.update(Buffer.from(shared, 5, 9), 9);
      expect(await check.digests()).toEqual({ sha256: createHash('sha256').update('123456789').digest('hex'), crc32c: Buffer.from('e3069283', 'hex').toString('base64') });

      const whole = hashes.openObject(true);
      const oracle = await MultiHasher.create({ md5: true });
      // Lengths around the 16-byte blocks, offsets off the 4-byte words, and one large slice.
      for (const [offset, length] of [[0, 1], [1, 15], [3, 16], [7, 17], [64, 4096 + 5], [2, 1 << 19], [1000, 33]] as const) {
        await whole.update(Buffer.from(shared, offset, length), length);
        oracle.update(bytes.subarray(offset, offset + length));
      }
      const want = oracle.result();
      expect(await whole.digests()).toEqual({ sha256: want.sha256, crc32c: want.crc32c, md5: want.md5 });
      expect(await whole.digest()).toBe(want.sha256);
    } finally {
      await hashes.close();
    }
  });

  it('refuses a buffer the thread cannot see, and fails (not hangs) when a resumed prefix cannot be read', async () => {
    const hashes = new EntryHashes();
    try {
      await expect(hashes.open().update(Buffer.alloc(10), 10)).rejects.toThrow(/SharedArrayBuffer/);
      const gone = hashes.open({ path: '/nonexistent/partial', start: 0, end: 100 });
      await expect(gone.digest()).rejects.toThrow(/nonexistent\/partial/);
    } finally {
      await hashes.close();
    }
  });
});
