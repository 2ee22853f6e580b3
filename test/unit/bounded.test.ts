import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { mapBounded } from '../../src/util/bounded.ts';

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
