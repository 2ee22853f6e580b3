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
 * An interrupted run is resumed from the partial file: `FILE.partial.done` names each entry that
 * was whole in it (appended as each lands), and a re-run with the same plan re-hashes those ranges
 * and fetches only the rest. The price: the cache does not learn the images for the next release.
 */
import { createHash, type Hash } from 'node:crypto';
import { constants } from 'node:fs';
import { open, readFile, rename, rm, type FileHandle } from 'node:fs/promises';
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
import { writeFileAtomic } from '../util/atomic.ts';
import { BlockFile } from '../util/direct-io.ts';
import { isNoSpace } from '../util/errors.ts';
import { openPartial, syncDir, type EntrySource } from './writer.ts';

interface Place {
  /** Where the entry's tar header starts. */
  header: number;
  /** Where its bytes start. */
  offset: number;
  size: number;
  /** As planned: PLACEHOLDER for an artifact, whose sha256 is known once it has arrived. */
  sha256: string;
}

/** A sha256 of the right width for what is not fetched yet: bundle.json's length does not depend on it. */
export const PLACEHOLDER = '0'.repeat(64);

type HeadEntry = { path: string; bytes: Buffer };

/** An open `${output}.partial` with every entry's place fixed. */
export interface DirectBundle {
  output: string;
  partial: string;
  fh: FileHandle;
  /** `fh` and a handle around the page cache, for the bulk of the bytes. */
  file: BlockFile;
  places: Map<string, Place>;
  /** Where the data entries start: bundle.json, its signature and SHA256SUMS fill what is before. */
  dataStart: number;
  size: number;
  /** Entries whole in the file (path → sha256): found by a resumed run, or landed in this one. */
  done: Map<string, string>;
  /** `FILE.partial.done`, open for appending. */
  journal: FileHandle;
  flusher: Flusher;
}

/** Bytes landed between two flushes to disk while fetching. */
const FLUSH_EVERY = 256 << 20;

/**
 * Flushes the file to disk after every FLUSH_EVERY bytes landed, one flush at a time and not
 * awaited, so the page cache writeback (~3.3 CPU s per GiB on this project's test VMs) overlaps
 * the fetch instead of all of it waiting in the final fsync. Its error is kept for the finish:
 * Linux reports a writeback error to one fsync only, so the final one might not see it again.
 */
class Flusher {
  readonly #fh: FileHandle;
  #unflushed = 0;
  #running: Promise<void> | undefined;
  #error: unknown;

  constructor(fh: FileHandle) {
    this.#fh = fh;
  }

  landed(bytes: number): void {
    if ((this.#unflushed += bytes) < FLUSH_EVERY || this.#running) return;
    this.#unflushed = 0;
    this.#running = this.#fh
      .datasync()
      .catch((err: unknown) => void (this.#error ??= err))
      .finally(() => (this.#running = undefined));
  }

  /** Waits for the flush in flight; throws what any flush failed with. */
  async settled(): Promise<void> {
    await this.#running;
    if (this.#error) throw this.#error;
  }
}

const JOURNAL_MAGIC = 'cartesia-airgap direct bundle 1';

/** Marks an entry whole in the partial file; written only after its bytes are. */
async function landed(d: DirectBundle, path: string, sha256: string): Promise<void> {
  d.done.set(path, sha256);
  d.flusher.landed(placeOf(d, path).size);
  await d.journal.write(`${sha256} ${path}\n`); // one O_APPEND write per line: whole lines even with many in flight
}

/** The bytes an entry takes in the tar: header (with a pax header for a long name), data, padding. */
const span = (path: string, size: number, mode: number, mtime: Date) => encodeFileHeader({ name: path, size, mode, mtime }).length + size + paddingBytes(size);

/** Bytes of the head: its entries' headers and padded data, laid out as `writeTarFile` would. */
const headSpan = (head: readonly HeadEntry[], mtime: Date) => head.reduce((n, h) => n + span(h.path, h.bytes.length, 0o644, mtime), 0);

/**
 * Opens `${output}.partial` at its final size with every entry's place fixed: the one an earlier
 * run of the same plan left (its finished entries re-hashed and kept), or a new one. `head` is
 * built from placeholder hashes of the real width: only its length matters here. `versions`
 * names what else the plan rests on (the artifacts' generations): a changed one starts afresh.
 */
export async function openDirect(output: string, head: readonly HeadEntry[], entries: readonly EntrySource[], mtime: Date, versions: readonly string[]): Promise<DirectBundle> {
  const places = new Map<string, Place>();
  const dataStart = headSpan(head, mtime);
  let at = dataStart;
  for (const e of entries) {
    const header = encodeFileHeader({ name: e.path, size: e.size, mode: e.mode ?? 0o644, mtime }).length;
    places.set(e.path, { header: at, offset: at + header, size: e.size, sha256: e.sha256 });
    at += header + e.size + paddingBytes(e.size);
  }
  const size = at + END_OF_ARCHIVE.length;
  const partial = `${output}.partial`;
  const plan = createHash('sha256')
    .update(JSON.stringify({ dataStart, size, entries: entries.map((e) => [e.path, e.size, e.sha256, e.mode ?? 0o644]), versions }))
    .digest('hex');
  const header = `${JOURNAL_MAGIC} ${plan}\n`;
  const resumed = await resume(partial, header, places, size);
  let fh = resumed?.fh;
  if (!fh) {
    fh = await openPartial(partial, 'wx+');
    try {
      await fh.truncate(size); // sparse: the padding between entries reads as zeros without a write
    } catch (err) {
      await fh.close();
      await rm(partial, { force: true });
      throw err;
    }
  }
  const done = resumed?.done ?? new Map<string, string>();
  // Rewritten whole (only what re-hashed right), then appended to.
  await writeFileAtomic(`${partial}.done`, header + [...done].map(([path, sha]) => `${sha} ${path}\n`).join(''));
  const journal = await open(`${partial}.done`, 'a');
  const file = await BlockFile.open(fh, partial);
  return { output, partial, fh, file, places, dataStart, size, done, journal, flusher: new Flusher(fh) };
}

/** The partial file an earlier run of this same plan left, with the entries in it that still hash right. */
async function resume(partial: string, header: string, places: Map<string, Place>, size: number): Promise<{ fh: FileHandle; done: Map<string, string> } | undefined> {
  const text = await readFile(`${partial}.done`, 'utf8').catch(() => undefined);
  if (!text?.startsWith(header)) return undefined;
  // O_NOFOLLOW: a symlink planted at the name is refused, never written through.
  const fh = await open(partial, constants.O_RDWR | constants.O_NOFOLLOW).catch(() => undefined);
  if (!fh) return undefined;
  const st = await fh.stat();
  if (!st.isFile() || st.size !== size) {
    await fh.close();
    return undefined;
  }
  const done = new Map<string, string>();
  for (const line of text.slice(header.length).split('\n')) {
    const m = /^([0-9a-f]{64}) (.+)$/.exec(line);
    const place = m && places.get(m[2]!);
    // A line must name what the plan expects there (a blob's digest), and the bytes must agree.
    if (!m || !place || done.has(m[2]!) || (place.sha256 !== PLACEHOLDER && place.sha256 !== m[1])) continue;
    if ((await hashRange(fh, place.offset, place.size, createHash('sha256'))).digest('hex') === m[1]) done.set(m[2]!, m[1]!);
  }
  return { fh, done };
}

/**
 * Closes the files of a direct bundle that stopped. The partial file and its record stay: they are
 * what a re-run resumes from (it refetches only what had not landed whole).
 */
export async function closeDirect(d: Pick<DirectBundle, 'fh' | 'file' | 'journal' | 'flusher'>): Promise<void> {
  await d.flusher.settled().catch(() => {});
  await d.file.close();
  await d.fh.close().catch(() => {});
  await d.journal.close().catch(() => {});
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
    const prefix = 'images/blobs/sha256/';
    for (const path of d.done.keys()) if (path.startsWith(prefix)) this.#stored.add(`sha256:${path.slice(prefix.length)}`);
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
      const hash = await hashRange(this.#d.fh, place.offset, have, createHash('sha256'));
      const sink = new SlotWriter(this.#d.file, { offset: place.offset, size: place.size, what: `blob ${desc.digest}` }, have);
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
        await landed(this.#d, `images/blobs/sha256/${digestHex(desc.digest)}`, digestHex(desc.digest));
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
    await landed(this.#d, `images/blobs/sha256/${digestHex(desc.digest)}`, digestHex(desc.digest));
    this.#stored.add(desc.digest);
  }

  /** The bundle's index.json is written from the plan, not tag by tag. */
  async tag(): Promise<void> {}
}

const ATTEMPTS = 3;

async function writeAt(fh: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < bytes.length; ) done += (await fh.write(bytes, done, bytes.length - done, position + done)).bytesWritten;
}

/** Feeds `length` bytes of the file from `offset` to `hash`, through one reused buffer. */
async function hashRange(fh: FileHandle, offset: number, length: number, hash: Hash): Promise<Hash> {
  const buf = Buffer.allocUnsafeSlow(Math.max(1, Math.min(1 << 20, length)));
  for (let at = 0; at < length; ) {
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, length - at), offset + at);
    if (bytesRead === 0) throw new OciError('LAYOUT', `the bundle being written ended at byte ${offset + at}, before ${offset + length}`);
    hash.update(buf.subarray(0, bytesRead));
    at += bytesRead;
  }
  return hash;
}

/**
 * One artifact from the store to its place, checked against the store's size and checksums; its
 * sha256. A version that changed since the plan cannot fit the place planned for it: run again.
 */
export async function fetchObjectInto(source: ObjectSource, info: ObjectInfo, d: DirectBundle, path: string, onBytes?: (n: number) => void): Promise<string> {
  const place = placeOf(d, path);
  const url = gsUrl(info);
  const got = await streamObject(source, info, new SlotWriter(d.file, { offset: place.offset, size: place.size, what: url }), onBytes);
  const wrong = got.kind === 'bytes' ? mismatch(info, got.hashes) : got.kind === 'overflow' ? `size exceeds the ${info.size} bytes the store reports` : 'generation is gone';
  if (got.kind === 'bytes' && !wrong) {
    await landed(d, path, got.hashes.sha256);
    return got.hashes.sha256;
  }
  const fresh = await source.stat(info.bucket, info.key);
  if (fresh && got.kind !== 'gone' && sameVersion(fresh, info)) {
    throw new ObjectError('MISMATCH', `${url} arrived damaged: its ${wrong}; run again, and if it persists the stored object is corrupt`);
  }
  throw new ObjectError('CHANGED', `${url} ${fresh ? 'changed' : 'was deleted'} while being bundled; run again when uploads to the bucket have finished`);
}

/**
 * Writes what the fetch did not (every header, the entries not in `filled`, bundle.json, its
 * signature and SHA256SUMS, the end of the archive), makes it durable, hashes the whole file once
 * and renames it to its final name.
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
    // The flush to disk and the one read of the whole file overlap. The main thread has nothing
    // else to do by now: no worker (a second isolate was the run's peak RSS).
    await d.flusher.settled();
    const [, sha256] = await Promise.all([d.fh.sync(), d.file.sha256(d.size)]);
    await d.file.close();
    await d.fh.close();
    await rename(d.partial, d.output);
    await syncDir(dirname(d.output));
    await d.journal.close();
    await rm(`${d.partial}.done`, { force: true });
    return { size: d.size, sha256 };
  } catch (err) {
    await closeDirect(d);
    throw err;
  }
}

/** An entry that has a local source (installer, release files, the layout's small files), checked as it is copied. */
async function fillFromSource(d: DirectBundle, e: EntrySource, p: Place): Promise<void> {
  const verify = new VerifyingStream({ digest: `sha256:${e.sha256}`, size: e.size });
  await pipeline(await e.open(), verify, new SlotWriter(d.file, { offset: p.offset, size: p.size, what: e.path }));
}
