/**
 * A direct bundle (`bundle --direct`): image blobs and artifacts go from the network straight to
 * their final place in the bundle file, never through the cache. On a machine whose page cache
 * writeback costs CPU (this project's test VMs: ~3.3 CPU s per GiB once 10 % of memory is dirty),
 * writing every byte once instead of twice (cache, then tar) is most of bundle's time at 4 GiB,
 * and it halves the disk space a release needs.
 *
 * It works because every entry's size is known once the images and the bucket are planned, and
 * everything not yet known (the artifacts' sha256) has a fixed width: bundle.json's length, hence
 * every entry's offset, is fixed before the first byte arrives. Headers, the small entries and
 * bundle.json are written last, then the whole file is hashed once from the page cache.
 *
 * The price: nothing is kept for a re-run. An interrupted direct bundle starts over (its
 * `.partial` is replaced), and the cache does not learn the images for the next release.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { rename, rm, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { digestHex, VerifyingStream, verifyBytes } from '../oci/digest.ts';
import { OciError } from '../oci/errors.ts';
import type { Descriptor, OnBytes, OpenBlob, PushBlobResult, WriteTarget } from '../oci/types.ts';
import { gsUrl, mismatch, ObjectError, sameVersion, streamObject } from '../objects/cache.ts';
import type { ObjectInfo, ObjectSource } from '../objects/types.ts';
import { encodeFileHeader, END_OF_ARCHIVE, paddingBytes } from '../tar/header.ts';
import { SlotWriter } from '../tar/slot.ts';
import { fileSha256 } from '../util/file-sha256.ts';
import { isNoSpace } from '../util/errors.ts';
import { openPartial, syncDir, type EntrySource } from './writer.ts';

interface Place {
  /** Where the entry's tar header starts. */
  header: number;
  /** Where its bytes start. */
  offset: number;
  size: number;
}

type HeadEntry = { path: string; bytes: Buffer };

/** An open `${output}.partial` with every entry's place fixed. */
export interface DirectBundle {
  output: string;
  partial: string;
  fh: FileHandle;
  places: Map<string, Place>;
  /** Where the data entries start: bundle.json, its signature and SHA256SUMS fill what is before. */
  dataStart: number;
  size: number;
}

/** The bytes an entry takes in the tar: header (with a pax header for a long name), data, padding. */
const span = (path: string, size: number, mode: number, mtime: Date) => encodeFileHeader({ name: path, size, mode, mtime }).length + size + paddingBytes(size);

/** Bytes of the head: its entries' headers and padded data, laid out as `writeTarFile` would. */
const headSpan = (head: readonly HeadEntry[], mtime: Date) => head.reduce((n, h) => n + span(h.path, h.bytes.length, 0o644, mtime), 0);

/**
 * Creates `${output}.partial` at its final size with every entry's place fixed. `head` is built
 * from placeholder hashes of the real width: only its length matters here.
 */
export async function openDirect(output: string, head: readonly HeadEntry[], entries: readonly EntrySource[], mtime: Date): Promise<DirectBundle> {
  const places = new Map<string, Place>();
  const dataStart = headSpan(head, mtime);
  let at = dataStart;
  for (const e of entries) {
    const header = encodeFileHeader({ name: e.path, size: e.size, mode: e.mode ?? 0o644, mtime }).length;
    places.set(e.path, { header: at, offset: at + header, size: e.size });
    at += header + e.size + paddingBytes(e.size);
  }
  const size = at + END_OF_ARCHIVE.length;
  const partial = `${output}.partial`;
  const fh = await openPartial(partial);
  try {
    await fh.truncate(size); // sparse: the padding between entries reads as zeros without a write
  } catch (err) {
    await abortDirect({ fh, partial });
    throw err;
  }
  return { output, partial, fh, places, dataStart, size };
}

/** Closes and removes the partial file: a direct bundle that failed has nothing worth keeping. */
export async function abortDirect(d: Pick<DirectBundle, 'fh' | 'partial'>): Promise<void> {
  await d.fh.close().catch(() => {});
  await rm(d.partial, { force: true });
}

function placeOf(d: DirectBundle, path: string): Place {
  const p = d.places.get(path);
  if (!p) throw new OciError('LAYOUT', `${path} has no place in the planned bundle`);
  return p;
}

/** The image blobs of a direct bundle as a copy destination: each blob lands at its entry's place. */
export class BundleSlots implements WriteTarget {
  readonly description: string;
  readonly #d: DirectBundle;
  readonly #stored = new Set<string>();
  readonly #inflight = new Map<string, Promise<PushBlobResult>>();

  constructor(d: DirectBundle) {
    this.#d = d;
    this.description = `the bundle ${d.partial}`;
  }

  #place(desc: Descriptor): Place {
    const p = placeOf(this.#d, `images/blobs/sha256/${digestHex(desc.digest)}`);
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
    let have = 0;
    let bytesTransferred = 0;
    for (let attempt = 1; ; attempt++) {
      // After a dropped connection: the bytes that reached the file are hashed again, the rest asked for.
      const hash = createHash('sha256');
      if (have > 0) await hashRange(this.#d.partial, place.offset, have, hash);
      const sink = new SlotWriter(this.#d.fh, { offset: place.offset, size: place.size, what: `blob ${desc.digest}` }, have);
      try {
        let position = have;
        const count = new Transform({
          transform(chunk: Buffer, _e, done) {
            bytesTransferred += chunk.length;
            onBytes?.((position += chunk.length));
            done(null, chunk);
          },
        });
        await pipeline(await open(have), count, new VerifyingStream(desc, { hash, bytes: have }), sink);
        this.#stored.add(desc.digest);
        return { how: 'uploaded', bytesTransferred };
      } catch (err) {
        const resumable = err instanceof OciError ? err.retryable : true;
        if (isNoSpace(err) || !resumable || attempt >= ATTEMPTS) throw err;
        have = sink.written;
      }
    }
  }

  async pushManifest(desc: Descriptor, bytes: Buffer): Promise<void> {
    verifyBytes(desc, bytes, 'manifest to store');
    if (this.#stored.has(desc.digest)) return;
    await writeAt(this.#d.fh, bytes, this.#place(desc).offset);
    this.#stored.add(desc.digest);
  }

  /** The bundle's index.json is written from the plan, not tag by tag. */
  async tag(): Promise<void> {}
}

const ATTEMPTS = 3;

async function writeAt(fh: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < bytes.length; ) done += (await fh.write(bytes, done, bytes.length - done, position + done)).bytesWritten;
}

async function hashRange(file: string, offset: number, length: number, hash: ReturnType<typeof createHash>): Promise<void> {
  for await (const c of createReadStream(file, { start: offset, end: offset + length - 1, highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) hash.update(c);
}

/**
 * One artifact from the store to its place, checked against the store's size and checksums; its
 * sha256. A version that changed since the plan cannot fit the place planned for it: run again.
 */
export async function fetchObjectInto(source: ObjectSource, info: ObjectInfo, d: DirectBundle, path: string, onBytes?: (n: number) => void): Promise<string> {
  const place = placeOf(d, path);
  const url = gsUrl(info);
  const got = await streamObject(source, info, new SlotWriter(d.fh, { offset: place.offset, size: place.size, what: url }), onBytes);
  const wrong = got.kind === 'bytes' ? mismatch(info, got.hashes) : got.kind === 'overflow' ? `size exceeds the ${info.size} bytes the store reports` : 'generation is gone';
  if (got.kind === 'bytes' && !wrong) return got.hashes.sha256;
  const fresh = await source.stat(info.bucket, info.key);
  if (fresh && got.kind !== 'gone' && sameVersion(fresh, info)) {
    throw new ObjectError('MISMATCH', `${url} arrived damaged: its ${wrong}; run again, and if it persists the stored object is corrupt`);
  }
  throw new ObjectError('CHANGED', `${url} ${fresh ? 'changed' : 'was deleted'} while being bundled; run again when uploads to the bucket have finished`);
}

/**
 * Writes what the fetch did not (every header, the entries not in `filled`, bundle.json, its
 * signature and SHA256SUMS, the end of the archive), makes it durable, hashes the whole file once
 * and renames it to its final name. On any failure the partial file is removed.
 */
export async function finishDirect(d: DirectBundle, head: readonly HeadEntry[], entries: readonly EntrySource[], mtime: Date, filled: ReadonlySet<string>): Promise<{ size: number; sha256: string }> {
  try {
    // The real head must take exactly the room its placeholder did.
    if (headSpan(head, mtime) !== d.dataStart) throw new OciError('LAYOUT', `bundle.json and its signature take ${headSpan(head, mtime)} bytes, ${d.dataStart} were planned`);
    let at = 0;
    for (const h of head) {
      const header = encodeFileHeader({ name: h.path, size: h.bytes.length, mode: 0o644, mtime });
      await writeAt(d.fh, header, at);
      await writeAt(d.fh, h.bytes, at + header.length);
      at += span(h.path, h.bytes.length, 0o644, mtime);
    }
    for (const e of entries) {
      const p = placeOf(d, e.path);
      if (p.size !== e.size) throw new OciError('LAYOUT', `${e.path} is ${e.size} bytes, planned as ${p.size}`);
      await writeAt(d.fh, encodeFileHeader({ name: e.path, size: e.size, mode: e.mode ?? 0o644, mtime }), p.header);
      if (!filled.has(e.path)) await fillFromSource(d, e, p);
    }
    await writeAt(d.fh, END_OF_ARCHIVE, d.size - END_OF_ARCHIVE.length);
    // The flush to disk and the one read of the whole file (from the page cache) overlap.
    const [, sha256] = await Promise.all([d.fh.sync(), fileSha256(d.partial)]);
    await d.fh.close();
    await rename(d.partial, d.output);
    await syncDir(dirname(d.output));
    return { size: d.size, sha256 };
  } catch (err) {
    await abortDirect(d);
    throw err;
  }
}

/** An entry that has a local source (installer, release files, the layout's small files), checked as it is copied. */
async function fillFromSource(d: DirectBundle, e: EntrySource, p: Place): Promise<void> {
  const verify = new VerifyingStream({ digest: `sha256:${e.sha256}`, size: e.size });
  await pipeline(await e.open(), verify, new SlotWriter(d.fh, { offset: p.offset, size: p.size, what: e.path }));
}
