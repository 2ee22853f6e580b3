import { describe, expect, it } from 'vitest';
import { jitteredBackoff } from '../../src/util/backoff.ts';

describe('jitteredBackoff', () => {
  it('draws from the upper half of base·2^(attempt−1): exactly its ends at random() = 0 and → 1', () => {
    expect(jitteredBackoff(1, 250, 10_000, () => 0)).toBe(125);
    expect(jitteredBackoff(1, 250, 10_000, () => 0.999999)).toBe(250);
    expect(jitteredBackoff(3, 250, 10_000, () => 0)).toBe(500);
    expect(jitteredBackoff(3, 250, 10_000, () => 0.999999)).toBe(1_000);
  });

  it('doubles with each attempt until the cap, then stays there', () => {
    const lows = [1, 2, 3, 4, 5, 6, 7, 8].map((a) => jitteredBackoff(a, 250, 10_000, () => 0));
    expect(lows).toEqual([125, 250, 500, 1_000, 2_000, 4_000, 5_000, 5_000]);
    expect(jitteredBackoff(60, 250, 10_000, () => 0.999999)).toBe(10_000);
  });

  it('stays within [exp/2, exp] in whole milliseconds with the real Math.random', () => {
    for (let i = 0; i < 200; i++) {
      for (const [attempt, exp] of [[1, 100], [2, 200], [5, 1_000], [30, 1_000]] as const) {
        const ms = jitteredBackoff(attempt, 100, 1_000);
        expect(Number.isInteger(ms)).toBe(true);
        expect(ms).toBeGreaterThanOrEqual(exp / 2);
        expect(ms).toBeLessThanOrEqual(exp);
      }
    }
  });
});
