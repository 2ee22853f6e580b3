import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkSpace, explainNoSpace } from '../../src/bundle/plan.ts';
import { isOciError } from '../../src/oci/errors.ts';

describe('checkSpace', () => {
  it('passes what fits and refuses, with the figures, what does not', async () => {
    await expect(checkSpace([{ dir: tmpdir(), bytes: 1024, what: 'cache' }])).resolves.toBeUndefined();
    const err = await checkSpace([{ dir: join(tmpdir(), 'not', 'yet', 'made'), bytes: 2 ** 60, what: 'bundle', flag: '--output' }]).catch((e: unknown) => e);
    expect(isOciError(err, 'TOO_LARGE')).toBe(true);
    expect((err as Error).message).toMatch(/^not enough space on the file system of .+: [\d.]+ TiB needed \(bundle [\d.]+ TiB\), [\d.]+ (KiB|MiB|GiB|TiB) free; free some space or choose another --output$/);
  });

  it('adds up needs on the same file system', async () => {
    const half = 2 ** 59;
    const err = await checkSpace([
      { dir: tmpdir(), bytes: half, what: 'cache' },
      { dir: tmpdir(), bytes: half, what: 'bundle' },
    ]).catch((e: unknown) => e as Error);
    expect(err?.message).toMatch(/\(cache [\d.]+ TiB, bundle [\d.]+ TiB\)/);
  });
});

describe('explainNoSpace', () => {
  it('turns ENOSPC anywhere in the cause chain into one line with the place, the figures and the way out', async () => {
    const enospc = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    const wrapped = new Error('cannot write /x/out.tar.partial', { cause: enospc });
    const err = (await explainNoSpace(wrapped, { dir: join(tmpdir(), 'not', 'made'), doing: 'writing /x/out.tar', flag: '--output', needed: 3 * 2 ** 20 })) as Error;
    expect(isOciError(err, 'TOO_LARGE')).toBe(true);
    expect(err.message).toMatch(new RegExp(`^no space left on the file system of ${tmpdir()} \\(ENOSPC\\) while writing /x/out\\.tar \\(about 3\\.0 MiB needed, [\\d.]+ (B|KiB|MiB|GiB|TiB) free\\); free some space or choose another --output, then run again`));
  });

  it('passes other errors through unchanged', async () => {
    const other = Object.assign(new Error('EACCES'), { code: 'EACCES' });
    expect(await explainNoSpace(other, { dir: tmpdir(), doing: 'x', flag: '--output' })).toBe(other);
  });
});
