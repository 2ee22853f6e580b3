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

/**
 * `mapBounded` for transfers of very different sizes, side by side: items of at most `small` bytes,
 * whose pace is set by round trips and an fsync each rather than by bytes, get `smallLanes`; the
 * rest get `lanes`. Results in input order; after the first failure nothing new starts in either
 * group, and that failure is the one thrown.
 */
export async function mapBySize<T, R>(items: readonly T[], size: (item: T) => number, opts: { small: number; lanes: number; smallLanes: number }, fn: (item: T) => Promise<R>): Promise<R[]> {
  let failure: { err: unknown } | undefined;
  const guarded = async (item: T): Promise<R> => {
    if (failure) throw failure.err;
    try {
      return await fn(item);
    } catch (err) {
      failure ??= { err };
      throw err;
    }
  };
  const out = new Array<R>(items.length);
  const indexed = items.map((item, i) => ({ item, i }));
  const run = (group: typeof indexed, lanes: number) => mapBounded(group, lanes, async ({ item, i }) => void (out[i] = await guarded(item)));
  const settled = await Promise.allSettled([run(indexed.filter((x) => size(x.item) > opts.small), opts.lanes), run(indexed.filter((x) => size(x.item) <= opts.small), opts.smallLanes)]);
  if (failure) throw failure.err;
  for (const s of settled) if (s.status === 'rejected') throw s.reason;
  return out;
}
