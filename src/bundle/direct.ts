/**
 * A bundle written in place: every single-file bundle that is not a delta. Image blobs and
 * artifacts go from the network (or the cache, direct-fill.ts) straight to their final place in
 * the bundle file, not into the cache first and then copied into a tar. With the cache (the
 * default) each fetched byte is written to the bundle and to the cache at once; with `--direct`
 * only to the bundle, which halves the disk writes and the space a release needs. Writing into
 * the cache first and copying after cost a third pass over every byte: on the 4 GiB bed the
 * copy could not start before bundle.json (~7.6 s in) and ran behind the fetch.
 *
 * It works because every entry's size is known once the images and the bucket are planned, and
 * everything not yet known (the artifacts' sha256) has a fixed width: bundle.json's length, hence
 * every entry's offset, is fixed before the first byte arrives. Headers and the small local entries
 * are written first, bundle.json once the artifacts (whose sha256 it lists) have landed. The whole
 * file is hashed in file order while it fills (tar/hash-cursor.ts), read back around the page cache.
 *
 * An interrupted run is resumed from the partial file: `FILE.partial.done` names each entry that
 * was whole in it (appended as each lands), and a re-run with the same plan re-hashes those ranges
 * and fetches only the rest.
 */
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { open, readFile, rename, rm, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { OciError } from '../oci/errors.ts';
import { MANIFEST_PATH, manifestSha256Of, type BundleManifest } from './manifest.ts';
import { HashCursor } from '../tar/hash-cursor.ts';
import { EntryHashes, type EntryHash } from '../tar/hash-thread.ts';
import { encodeFileHeader, END_OF_ARCHIVE, paddingBytes } from '../tar/header.ts';
import { SlotWriter } from '../tar/slot.ts';
import { writeFileAtomic } from '../util/atomic.ts';
import { BlockFile } from '../util/direct-io.ts';
import { Flusher } from '../util/flusher.ts';
import { openPartial, syncDir, type EntrySource } from './writer.ts';

export interface Place {
  /** Where the entry's tar header starts. */
  header: number;
  /** Where its bytes start. */
  offset: number;
  size: number;
  /** Where the next entry's header starts: `header…end` is the whole entry, padding included. */
  end: number;
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
  /** The whole file's sha256, following the entries as they land. */
  cursor: HashCursor;
  /** The thread that hashes each fetched entry as it is written (slotFor). */
  hashes: EntryHashes;
  /** Entries whose bytes are in place (fetched now or before, or local), for the cursor. */
  placed: Set<string>;
  /** bundle.json, its signature and SHA256SUMS, once written. */
  manifest?: BundleManifest;
  /** bundle.json's sha256, once written. */
  manifestSha256?: string;
}

const JOURNAL_MAGIC = 'cartesia-airgap direct bundle 1';

/**
 * Marks a fetched entry whole in the partial file; written only after its bytes are. A SlotWriter
 * made by `slotFor` has shown the whole-file hash each piece as it landed; other writes (`shown`
 * false) show the entry's bytes and padding now.
 */
export async function landed(d: DirectBundle, path: string, sha256: string, shown = true): Promise<void> {
  const p = placeOf(d, path);
  d.done.set(path, sha256);
  d.flusher.landed(p.size);
  await d.journal.write(`${sha256} ${path}\n`); // one O_APPEND write per line: whole lines even with many in flight
  d.placed.add(path);
  if (!shown) d.cursor.landed(p.offset, p.end);
}

/**
 * A writer for an entry's bytes (from byte `from`) that shows the whole-file hash each piece as
 * it lands, so the hash can follow a large entry while it arrives. Its last piece takes the
 * padding along: zeros, written with it or left by the sparse file. `also`: a cache file that gets
 * the same bytes; `hash`: the entry's own sha256, fed as it is written; `onChunk` (SlotWriter).
 */
export function slotFor(d: DirectBundle, p: Place, what: string, opts: { from?: number; also?: BlockFile | undefined; hash?: EntryHash; onChunk?: (chunk: Buffer) => void } = {}): SlotWriter {
  const slot = { offset: p.offset, size: p.size, what, also: opts.also, hash: opts.hash, onChunk: opts.onChunk };
  return new SlotWriter(d.file, slot, opts.from ?? 0, (start, end) => d.cursor.landed(start, end === p.offset + p.size ? p.end : end));
}

/** A hash for a fetched entry on the bundle's hashing thread, started with the `have` bytes already in its place. */
export function entryHash(d: DirectBundle, p: Place, have = 0): EntryHash {
  return d.hashes.open(have > 0 ? { path: d.partial, start: p.offset, end: p.offset + have } : undefined);
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
  const headers = entries.map((e) => encodeFileHeader({ name: e.path, size: e.size, mode: e.mode ?? 0o644, mtime }));
  let at = dataStart;
  entries.forEach((e, i) => {
    const end = at + headers[i]!.length + e.size + paddingBytes(e.size);
    places.set(e.path, { header: at, offset: at + headers[i]!.length, size: e.size, end, sha256: e.sha256 });
    at = end;
  });
  const size = at + END_OF_ARCHIVE.length;
  const partial = `${output}.partial`;
  const plan = createHash('sha256')
    .update(JSON.stringify({ dataStart, size, entries: entries.map((e) => [e.path, e.size, e.sha256, e.mode ?? 0o644]), versions }))
    .digest('hex');
  const header = `${JOURNAL_MAGIC} ${plan}\n`;
  const resumed = await resume(partial, header, size);
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
  const file = await BlockFile.open(fh, partial);
  const done = resumed ? await stillWhole(file, resumed.lines, places) : new Map<string, string>();
  // Rewritten whole (only what re-hashed right), then appended to.
  await writeFileAtomic(`${partial}.done`, header + [...done].map(([path, sha]) => `${sha} ${path}\n`).join(''));
  const journal = await open(`${partial}.done`, 'a');
  const d: DirectBundle = { output, partial, fh, file, places, dataStart, size, done, journal, flusher: new Flusher(fh), cursor: new HashCursor(file, size), hashes: new EntryHashes(), placed: new Set() };
  try {
    // Every header now: each depends only on the plan. Entries found whole are hashed whole.
    for (const [i, e] of entries.entries()) {
      const p = placeOf(d, e.path);
      await file.writeBytes(headers[i]!, p.header);
      if (done.has(e.path)) d.placed.add(e.path);
      d.cursor.landed(p.header, done.has(e.path) ? p.end : p.offset);
    }
    await file.writeBytes(END_OF_ARCHIVE, size - END_OF_ARCHIVE.length);
    d.cursor.landed(size - END_OF_ARCHIVE.length, size);
  } catch (err) {
    await closeDirect(d);
    throw err;
  }
  return d;
}

/** The partial file an earlier run of this same plan left, and its record's lines. */
async function resume(partial: string, header: string, size: number): Promise<{ fh: FileHandle; lines: string[] } | undefined> {
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
  return { fh, lines: text.slice(header.length).split('\n') };
}

/** The entries an earlier run recorded as landed whose bytes still hash right. */
async function stillWhole(file: BlockFile, lines: readonly string[], places: Map<string, Place>): Promise<Map<string, string>> {
  const done = new Map<string, string>();
  for (const line of lines) {
    const m = /^([0-9a-f]{64}) (.+)$/.exec(line);
    const place = m && places.get(m[2]!);
    // A line must name what the plan expects there (a blob's digest), and the bytes must agree.
    if (!m || !place || done.has(m[2]!) || (place.sha256 !== PLACEHOLDER && place.sha256 !== m[1])) continue;
    if ((await file.hashRange(createHash('sha256'), place.offset, place.size)).digest('hex') === m[1]) done.set(m[2]!, m[1]!);
  }
  return done;
}

/**
 * Closes the files of a direct bundle that stopped. The partial file and its record stay: they are
 * what a re-run resumes from (it refetches only what had not landed whole).
 */
export async function closeDirect(d: Pick<DirectBundle, 'fh' | 'file' | 'journal' | 'flusher' | 'cursor' | 'hashes'>): Promise<void> {
  await d.cursor.stop(); // no read left running on a closed file
  await d.hashes.close();
  await d.flusher.settled().catch(() => {});
  await d.file.close();
  await d.fh.close().catch(() => {});
  await d.journal.close().catch(() => {});
}

export function placeOf(d: DirectBundle, path: string): Place {
  const p = d.places.get(path);
  if (!p) throw new OciError('LAYOUT', `${path} has no place in the planned bundle`);
  return p;
}

/**
 * Writes bundle.json, its signature and SHA256SUMS (made with the artifacts' real sha256) into the
 * room their placeholders fixed, and lets the whole-file hash start.
 */
export async function writeHead(d: DirectBundle, head: readonly HeadEntry[], mtime: Date, manifest: BundleManifest): Promise<void> {
  // The real head must take exactly the room its placeholder did.
  if (headSpan(head, mtime) !== d.dataStart) throw new OciError('LAYOUT', `bundle.json and its signature take ${headSpan(head, mtime)} bytes, ${d.dataStart} were planned`);
  const bytes = Buffer.alloc(d.dataStart); // zeros: the padding
  let at = 0;
  for (const h of head) {
    const header = encodeFileHeader({ name: h.path, size: h.bytes.length, mode: 0o644, mtime });
    bytes.set(header, at);
    bytes.set(h.bytes, at + header.length);
    at += span(h.path, h.bytes.length, 0o644, mtime);
  }
  await d.file.writeBytes(bytes, 0);
  d.manifest = manifest;
  d.manifestSha256 = manifestSha256Of(head.find((h) => h.path === MANIFEST_PATH)!.bytes);
  d.cursor.landed(0, d.dataStart);
}

/**
 * Once every entry and the head are in place: makes the file durable, takes the whole-file hash
 * (by now mostly done) and renames the file to its final name.
 */
export async function finishDirect(d: DirectBundle): Promise<{ size: number; sha256: string; manifest: BundleManifest; manifestSha256: string }> {
  try {
    const missing = [...(d.manifest ? [] : ['bundle.json']), ...[...d.places.keys()].filter((path) => !d.placed.has(path))];
    if (missing.length > 0 || !d.manifest) throw new OciError('LAYOUT', `the bundle being written lacks ${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ', …' : ''}`);
    await d.flusher.settled();
    const [, sha256] = await Promise.all([d.fh.sync(), d.cursor.digest()]);
    await d.hashes.close();
    await d.file.close();
    await d.fh.close();
    await rename(d.partial, d.output);
    await syncDir(dirname(d.output));
    await d.journal.close();
    await rm(`${d.partial}.done`, { force: true });
    return { size: d.size, sha256, manifest: d.manifest, manifestSha256: d.manifestSha256! };
  } catch (err) {
    await closeDirect(d);
    throw err;
  }
}
