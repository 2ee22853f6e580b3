import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { mapBounded, mapBySize } from '../../src/util/bounded.ts';

describe('mapBounded', () => {
  it('keeps input order and never runs more than the limit at once', async () => {
    let running = 0;
    let peak = 0;
    const out = await mapBounded([30, 5, 20, 1, 10, 2], 3, async (ms) => {
      peak = Math.max(peak, ++running);
      await sleep(ms);
      running--;
      return ms * 2;
    });
    expect(out).toEqual([60, 10, 40, 2, 20, 4]);
    expect(peak).toBe(3);
  });

  it('after the first failure starts nothing new, waits for running calls, throws the first error', async () => {
    const started: number[] = [];
    const finished: number[] = [];
    const p = mapBounded([0, 1, 2, 3, 4, 5], 2, async (i) => {
      started.push(i);
      if (i === 1) throw new Error('first');
      if (i === 2) throw new Error('second');
      await sleep(i === 0 ? 30 : 1);
      finished.push(i);
      return i;
    });
    await expect(p).rejects.toThrow('first');
    expect(finished).toContain(0); // the running call was awaited before the rejection
    expect(started).not.toContain(5);
  });
});

describe('mapBySize', () => {
  it('gives small items their own, wider lanes beside the large ones; results in input order', async () => {
    const running = { small: 0, large: 0 };
    const peak = { small: 0, large: 0 };
    const sizes = [900, 5, 7, 800, 3, 1, 2, 950, 4, 6, 8, 9];
    const out = await mapBySize(sizes, (n) => n, { small: 100, lanes: 2, smallLanes: 4 }, async (n) => {
      const kind = n > 100 ? 'large' : 'small';
      peak[kind] = Math.max(peak[kind], ++running[kind]);
      await sleep(kind === 'large' ? 30 : 5);
      running[kind]--;
      return n * 2;
    });
    expect(out).toEqual(sizes.map((n) => n * 2));
    expect(peak).toEqual({ small: 4, large: 2 });
  });

  it('after the first failure starts nothing new in either group and throws that failure', async () => {
    const started: number[] = [];
    const err = await mapBySize([1, 2, 3, 4, 5, 500, 600, 700], (n) => n, { small: 100, lanes: 1, smallLanes: 1 }, async (n) => {
      started.push(n);
      await sleep(n > 100 ? 40 : 10); // the large one is still running when the small one fails
      if (n === 1) throw new Error('first');
      return n;
    }).catch((e: unknown) => e as Error);
    expect((err as Error).message).toBe('first');
    expect(started.sort((a, b) => a - b)).toEqual([1, 500]);
  });
});
