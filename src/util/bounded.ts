import pLimit, { type LimitFunction } from 'p-limit';

/**
 * `fn` over `items`, at most `concurrency` at once, results in input order. After the first
 * failure nothing new starts and the running calls are awaited, so the caller never closes a store
 * under work still in flight; the first error is the one thrown. `lanes` may be a limiter shared
 * with other work.
 */
export async function mapBounded<T, R>(items: readonly T[], lanes: number | LimitFunction, fn: (item: T) => Promise<R>): Promise<R[]> {
  const limit = typeof lanes === 'number' ? pLimit(Math.max(1, lanes)) : lanes;
  let firstError: unknown;
  let failed = false;
  const settled = await Promise.allSettled(
    items.map((item) =>
      limit(async () => {
        if (failed) return undefined;
        try {
          return await fn(item);
        } catch (err) {
          if (!failed) [failed, firstError] = [true, err];
          throw err;
        }
      }),
    ),
  );
  if (failed) throw firstError;
  return settled.map((r) => (r as PromiseFulfilledResult<R>).value);
}
