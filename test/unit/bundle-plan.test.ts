import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkSpace } from '../../src/bundle/plan.ts';
import { isOciError } from '../../src/oci/errors.ts';

describe('checkSpace', () => {
  it('passes what fits and refuses, with the figures, what does not', async () => {
    await expect(checkSpace([{ dir: tmpdir(), bytes: 1024, what: 'cache' }])).resolves.toBeUndefined();
    const err = await checkSpace([{ dir: join(tmpdir(), 'not', 'yet', 'made'), bytes: 2 ** 60, what: 'bundle' }]).catch((e: unknown) => e);
    expect(isOciError(err, 'TOO_LARGE')).toBe(true);
    expect((err as Error).message).toMatch(/^not enough space on the file system of .+: [\d.]+ GiB needed \(bundle [\d.]+ GiB\), [\d.]+ GiB free; free some space or choose another --cache-dir\/--output$/);
  });

  it('adds up needs on the same file system', async () => {
    const half = 2 ** 59;
    const err = await checkSpace([
      { dir: tmpdir(), bytes: half, what: 'cache' },
      { dir: tmpdir(), bytes: half, what: 'bundle' },
    ]).catch((e: unknown) => e as Error);
    expect(err?.message).toMatch(/\(cache [\d.]+ GiB, bundle [\d.]+ GiB\)/);
  });
});
