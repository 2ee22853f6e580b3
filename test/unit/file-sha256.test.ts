import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fileSha256 } from '../../src/util/file-sha256.ts';

describe('fileSha256 (on a worker thread)', () => {
  it('hashes a file of several read sizes exactly as node:crypto does in one go, and names a missing file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'file-sha256-'));
    try {
      for (const size of [0, 1, (1 << 20) - 1, 1 << 20, 3 * (1 << 20) + 17]) {
        const data = randomBytes(size);
        const file = join(dir, `f${size}`);
        await writeFile(file, data);
        expect(await fileSha256(file), String(size)).toBe(createHash('sha256').update(data).digest('hex'));
      }
      await expect(fileSha256(join(dir, 'missing'))).rejects.toThrow(/missing: ENOENT/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
