/**
 * Exponential backoff with jitter for the `attempt`th retry (1-based): `base·2^(attempt−1)` capped
 * at `cap`, then a uniform draw from its upper half, so parallel transfers that failed together do
 * not retry in lockstep yet never retry sooner than half the nominal delay. Whole milliseconds.
 */
export function jitteredBackoff(attempt: number, baseMs: number, capMs: number, random: () => number = Math.random): number {
  const exp = Math.min(capMs, baseMs * 2 ** (attempt - 1));
  return Math.round(exp / 2 + random() * (exp / 2));
}
