/**
 * A single-file delta is written from the cache, and its writer follows the fetch: image blobs land
 * in the cache in file order, and the writer, started once the artifacts (which bundle.json lists)
 * are in, waits at each blob only until it has landed. The tar is then written while the fetch
 * runs, not after it. (Other single-file bundles are written in place: direct.ts.)
 */
import type { LimitFunction } from 'p-limit';
import { mapBounded } from '../util/bounded.ts';
import type { LayoutDirectory } from '../oci/layout/writer.ts';
import { fetchOrder, type PlannedImage } from './images.ts';

type Landed = { verified: boolean };

/** Per digest: resolves when the blob is in the cache (verified: fetched and checked by this run); all reject once the fetch failed. */
export class Arrivals {
  readonly #waits = new Map<string, { promise: Promise<Landed>; resolve: (l: Landed) => void; reject: (err: unknown) => void }>();
  #failure: { err: unknown } | undefined;

  #entry(digest: string) {
    let w = this.#waits.get(digest);
    if (!w) {
      let resolve!: (l: Landed) => void;
      let reject!: (err: unknown) => void;
      const promise = new Promise<Landed>((res, rej) => ((resolve = res), (reject = rej)));
      promise.catch(() => {}); // nobody may be waiting for this one when the fetch fails
      w = { promise, resolve, reject };
      this.#waits.set(digest, w);
      if (this.#failure) reject(this.#failure.err); // asked for after the fetch stopped
    }
    return w;
  }

  wait(digest: string): Promise<Landed> {
    return this.#entry(digest).promise;
  }

  landed(digest: string, verified: boolean): void {
    this.#entry(digest).resolve({ verified });
  }

  /** The fetch stopped: whatever has not landed never will in this run (settled promises stay as they are). */
  fail(err: unknown): void {
    this.#failure ??= { err };
    for (const w of this.#waits.values()) w.reject(err);
  }
}

/**
 * Every distinct image blob into the cache in the order the writer reads them (large ones first),
 * one at a time until `artifacts` settles, then `concurrency`: the writer cannot start before the
 * artifacts are in, so they get the bandwidth first. Manifests are not stored here: the cache may
 * hold a manifest only with its whole subtree (copyGraph stores them after this), and the writer
 * takes them from memory. Returns the bytes downloaded; the caller tells `arrivals` of a failure.
 */
export async function prefetchBlobs(
  planned: PlannedImage[],
  cache: LayoutDirectory,
  lanes: LimitFunction,
  arrivals: Arrivals,
  progress: (bytes: number) => void,
): Promise<number> {
  let fetched = 0;
  // The bundle lists image blobs by digest: that is their order in the file.
  const digests = [...new Set(planned.flatMap((p) => p.graph.blobs.map((d) => d.digest)))].sort();
  const place = new Map(digests.map((d, i) => [d, i]));
  const blobs = fetchOrder(planned, (desc) => place.get(desc.digest) ?? 0).filter((i) => !i.manifest);
  await mapBounded(blobs, lanes, async ({ desc, repository, uses }) => {
    const r = await cache.pushBlob(desc, (offset) => repository.openBlob(desc, offset));
    fetched += r.bytesTransferred;
    arrivals.landed(desc.digest, r.how === 'uploaded');
    progress(desc.size * uses); // as each image that has it would count it
  });
  return fetched;
}
