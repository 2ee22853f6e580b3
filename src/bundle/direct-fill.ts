/**
 * What fills a bundle written in place (direct.ts): image blobs and artifacts from the network, or
 * from the cache where it holds them, and the local entries. With a cache, what is fetched goes to
 * the bundle and to the cache at once (one buffer, two writes: tar/slot.ts), so the next release finds it there; with
 * `--direct` the cache is neither read nor written.
 */
import { createReadStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { checkDigest, digestHex, endedShort, VerifyingStream, verifyBytes } from '../oci/digest.ts';
import { isOciError, OciError } from '../oci/errors.ts';
import type { LayoutDirectory } from '../oci/layout/writer.ts';
import { blobPath } from '../oci/layout/reader.ts';
import type { Descriptor, OnBytes, OpenBlob, PushBlobResult, WriteTarget } from '../oci/types.ts';
import { cachedObject, gsUrl, mismatch, needsMd5, ObjectError, objectFile, sameVersion, streamObject } from '../objects/cache.ts';
import type { ObjectInfo, ObjectSource } from '../objects/types.ts';
import { SlotWriter } from '../tar/slot.ts';
import { isNoSpace } from '../util/errors.ts';
import { entryHash, landed, placeOf, slotFor, type DirectBundle, type Place } from './direct.ts';
import { ENTRY_HIGH_WATER_MARK, type EntrySource } from './writer.ts';

const ATTEMPTS = 3;

/**
 * Copies an entry's bytes from a cached copy into its place, checked against `sha256`; false (and
 * nothing marked landed) when the copy is damaged, for the caller to fetch instead. The whole-file
 * hash hears of the entry only once it is checked: a damaged copy's bytes are never hashed.
 */
async function copyCached(d: DirectBundle, p: Place, path: string, source: () => Promise<Readable>, sha256: string): Promise<boolean> {
  const sink = new SlotWriter(d.file, { offset: p.offset, size: p.size, what: path });
  try {
    await pipeline(await source(), new VerifyingStream({ digest: `sha256:${sha256}`, size: p.size }), sink);
  } catch (err) {
    if (isOciError(err, 'DIGEST_MISMATCH') || isOciError(err, 'SIZE_MISMATCH')) return false;
    throw err;
  }
  await landed(d, path, sha256, false);
  return true;
}

/**
 * The image blobs of a bundle written in place as a copy destination: each blob lands at its
 * entry's place, taken from `cache` when it is there and else fetched into both.
 */
export class BundleSlots implements WriteTarget {
  readonly description: string;
  readonly #d: DirectBundle;
  readonly #cache: LayoutDirectory | undefined;
  readonly #stored = new Set<string>();
  readonly #inflight = new Map<string, Promise<PushBlobResult>>();

  constructor(d: DirectBundle, cache?: LayoutDirectory) {
    this.#d = d;
    this.#cache = cache;
    this.description = `the bundle ${d.partial}`;
    const prefix = 'images/blobs/sha256/';
    for (const path of d.done.keys()) if (path.startsWith(prefix)) this.#stored.add(`sha256:${path.slice(prefix.length)}`);
  }

  #place(desc: Descriptor): Place {
    const p = placeOf(this.#d, `images/${blobPath(desc.digest)}`);
    if (p.size !== desc.size) throw new OciError('SIZE_MISMATCH', `blob ${desc.digest} is ${desc.size} bytes, planned as ${p.size}`);
    return p;
  }

  async hasBlob(desc: Descriptor): Promise<boolean> {
    return this.#stored.has(desc.digest);
  }

  async hasManifest(desc: Descriptor): Promise<boolean> {
    return this.#stored.has(desc.digest);
  }

  pushBlob(desc: Descriptor, open: OpenBlob, opts: { onBytes?: OnBytes } = {}): Promise<PushBlobResult> {
    let p = this.#inflight.get(desc.digest);
    if (!p) {
      p = this.#fill(desc, open, opts.onBytes).finally(() => this.#inflight.delete(desc.digest));
      this.#inflight.set(desc.digest, p);
    }
    return p;
  }

  async #fill(desc: Descriptor, open: OpenBlob, onBytes?: OnBytes): Promise<PushBlobResult> {
    if (this.#stored.has(desc.digest)) return { how: 'existed', bytesTransferred: 0 };
    const place = this.#place(desc);
    const path = `images/${blobPath(desc.digest)}`;
    const cache = this.#cache;
    let bytesTransferred = 0;
    let cached = cache ? await cache.hasBlob(desc) : false;
    // Part of it left in the cache by an interrupted run: finished there (resumed with Range, and
    // started over if that part proves bad), then copied like any cached blob.
    if (cache && !cached && (await cache.partialSize(desc)) > 0) {
      bytesTransferred = (await cache.pushBlob(desc, open, onBytes ? { onBytes } : {})).bytesTransferred;
      cached = true;
    }
    if (cache && cached) {
      if (await copyCached(this.#d, place, path, () => cache.openBlob(desc, 0), digestHex(desc.digest))) {
        this.#stored.add(desc.digest);
        return { how: bytesTransferred > 0 ? 'uploaded' : 'existed', bytesTransferred };
      }
      await rm(join(cache.dir, blobPath(desc.digest)), { force: true }); // damaged: fetched again below
    }
    let have = 0;
    let copy: Awaited<ReturnType<LayoutDirectory['ingestFile']>>;
    // Only the transfer is retried; what follows it (the cache's rename, the journal) is not a network step.
    for (let attempt = 1; ; attempt++) {
      // After a dropped connection: the bytes that reached the file are hashed again, the rest asked for.
      const hash = entryHash(this.#d, place, have);
      // A read from the first byte feeds the cache as it goes; after a retry, see below.
      copy = have === 0 && cache ? await cache.ingestFile(desc) : undefined;
      let position = have;
      const onChunk = (chunk: Buffer) => {
        bytesTransferred += chunk.length;
        onBytes?.((position += chunk.length));
      };
      // The slot refuses a byte past the blob's size, hashes it on the thread, and counts it.
      const slot = slotFor(this.#d, place, `blob ${desc.digest}`, { from: have, also: copy?.file, hash, onChunk });
      try {
        await pipeline(await open(have), slot);
        if (slot.accepted !== desc.size) throw endedShort(desc, slot.accepted);
        checkDigest(desc, await hash.digest());
        break;
      } catch (err) {
        await hash.digest().catch(() => {}); // ends it on the thread (after a mismatch: the answer already given)
        await copy?.discard();
        const resumable = err instanceof OciError ? err.retryable : true;
        if (isNoSpace(err) || !resumable || attempt >= ATTEMPTS) throw err;
        have = slot.written;
      }
    }
    await copy?.commit();
    await landed(this.#d, path, digestHex(desc.digest));
    this.#stored.add(desc.digest);
    // Fetched in pieces after a dropped connection, so not through the cache: copied there from the
    // bundle instead (checked again by the cache), not downloaded a second time.
    if (cache && !copy) await cache.pushBlob(desc, async (offset) => createReadStream(this.#d.partial, { start: place.offset + offset, end: place.offset + place.size - 1, highWaterMark: ENTRY_HIGH_WATER_MARK }));
    return { how: 'uploaded', bytesTransferred };
  }

  async pushManifest(desc: Descriptor, bytes: Buffer): Promise<void> {
    verifyBytes(desc, bytes, 'manifest to store');
    if (this.#stored.has(desc.digest)) return;
    const place = this.#place(desc);
    await this.#d.file.writeBytes(bytes, place.offset, place.end);
    await landed(this.#d, `images/${blobPath(desc.digest)}`, digestHex(desc.digest), false);
    this.#stored.add(desc.digest);
  }

  /** The bundle's index.json is written from the plan, not tag by tag. */
  async tag(): Promise<void> {}
}

/**
 * One artifact into its place: from the cache under `cacheDir` when it holds this version, else
 * from the store (and into the cache too), checked against the store's size and checksums. Its
 * sha256, and whether it came over the network. A version that changed since the plan cannot fit
 * the place planned for it: run again.
 */
export async function fetchObjectInto(source: ObjectSource, info: ObjectInfo, d: DirectBundle, path: string, cacheDir?: string): Promise<{ sha256: string; fetched: boolean }> {
  const place = placeOf(d, path);
  const url = gsUrl(info);
  const hit = cacheDir ? await cachedObject(info, cacheDir) : undefined;
  if (hit) {
    if (await copyCached(d, place, path, async () => createReadStream(hit.path, { highWaterMark: ENTRY_HIGH_WATER_MARK }), hit.sha256)) return { sha256: hit.sha256, fetched: false };
    await rm(hit.path, { force: true }); // damaged: fetched again below
  }
  const copy = cacheDir ? await objectFile(cacheDir) : undefined;
  const hash = d.hashes.openObject(needsMd5(info));
  const got = await streamObject(source, info, slotFor(d, place, url, { also: copy?.file, hash }), { digests: () => hash.digests() }).catch(async (err: unknown) => {
    await copy?.discard();
    throw err;
  });
  const wrong = got.kind === 'bytes' ? mismatch(info, got.hashes) : got.kind === 'overflow' ? `size exceeds the ${info.size} bytes the store reports` : 'generation is gone';
  if (got.kind === 'bytes' && !wrong) {
    await copy?.commit(info, got.hashes);
    await landed(d, path, got.hashes.sha256);
    return { sha256: got.hashes.sha256, fetched: true };
  }
  await copy?.discard();
  const fresh = await source.stat(info.bucket, info.key);
  if (fresh && got.kind !== 'gone' && sameVersion(fresh, info)) {
    throw new ObjectError('MISMATCH', `${url} arrived damaged: its ${wrong}; run again, and if it persists the stored object is corrupt`);
  }
  throw new ObjectError('CHANGED', `${url} ${fresh ? 'changed' : 'was deleted'} while being bundled; run again when uploads to the bucket have finished`);
}

/**
 * The entries with a local source (installer, release files, the layout's small files), written
 * as soon as the file is open: checked against their sha256 as they are copied.
 */
export async function fillLocal(d: DirectBundle, entries: readonly EntrySource[], fetched: ReadonlySet<string>): Promise<void> {
  for (const e of entries) {
    if (fetched.has(e.path) || d.placed.has(e.path)) continue;
    const p = placeOf(d, e.path);
    if (p.size !== e.size) throw new OciError('LAYOUT', `${e.path} is ${e.size} bytes, planned as ${p.size}`);
    const verify = new VerifyingStream({ digest: `sha256:${e.sha256}`, size: e.size });
    await pipeline(await e.open(), verify, slotFor(d, p, e.path));
    d.placed.add(e.path);
  }
}
