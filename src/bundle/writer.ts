/**
 * Writes a bundle (DESIGN.md §3): one uncompressed POSIX tar, bundle.json first, then its
 * signature, SHA256SUMS and the data entries in the caller's order. Headers carry nothing from the
 * build host (fixed mtime, uid/gid 0, no names, mode 0644), so the same inputs give the same bytes.
 *
 * bundle.json lists SHA256SUMS and every data entry; SHA256SUMS lists the data entries only. It
 * cannot also list bundle.json: each would then contain the other's hash.
 */
import { createHash, createPublicKey, type Hash, type KeyObject } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Readable } from 'node:stream';
import { OciError, isOciError } from '../oci/errors.ts';
import { encodeFileHeader, END_OF_ARCHIVE, paddingBytes } from '../tar/header.ts';
import { BlockFile, DirectReader } from '../util/direct-io.ts';
import { TarOutput } from '../tar/output.ts';
import { keyFingerprint } from './keys.ts';
import { bundleManifestSchema, entrySchema, MANIFEST_PATH, manifestSha256Of, SIGNATURE_PATH, SUMS_PATH, type AnyManifest, type BundleEntry, type BundleManifest } from './manifest.ts';
import { openBundle, type OpenedBundle } from './reader.ts';
import { signManifest, verifyManifest } from './sign.ts';
import { sha256sumsText } from './sums.ts';

export interface EntrySource {
  path: string;
  size: number;
  sha256: string;
  /** The bytes from `offset` (default 0) to the end: a piece of an entry split across volumes starts mid-entry. */
  open(offset?: number): Promise<Readable>;
  /** Tar mode: 0o644 (the default), or 0o755 for an executable. */
  mode?: number;
  /**
   * Set when the bytes may still be arriving (the writer follows the fetch): resolves once they
   * are in place, `verified` when this process checked them against `sha256` as they landed. Those
   * are only counted, not hashed again: the whole file's sha256 still covers them, and `verify`
   * re-checks every entry.
   */
  arrival?: () => Promise<{ verified: boolean }>;
  /**
   * Set when the bytes lie in a local file, `size` of them from `offset`: the writer then reads
   * them in place into its own buffers instead of through `open()` (no stream, no per-chunk
   * buffers to allocate and collect), which is most of its speed on large layers.
   */
  file?: {
    path: string;
    offset: number;
    /** Nothing follows the entry in the file, so more bytes there mean the source changed (false for a piece of a larger entry). */
    endsFile: boolean;
  };
}

export interface WriteBundleOptions {
  /** Final path, e.g. /x/release.tar; written as `${output}.partial`, then renamed. */
  output: string;
  manifest: Omit<BundleManifest, 'entries' | 'signer'>;
  /** Data entries in tar order (release/…, images/…, artifacts/…). */
  entries: EntrySource[];
  /** Absent: unsigned (the caller has checked --unsigned). */
  signingKey?: KeyObject;
  /** Every header's mtime. */
  mtime: Date;
  /** Bytes of `entryPath` written so far (a position, not a delta). */
  onBytes?(entryPath: string, bytes: number): void;
}

export interface WriteBundleResult {
  /** The bundle file; for a split bundle, its first volume. */
  path: string;
  /** Bytes written (all volumes together). */
  size: number;
  /** The bundle file's sha256; for a split bundle, which has no one file, bundle.json's (every volume carries it); null when an identical bundle was already there (it is not read again). */
  sha256: string | null;
  manifest: AnyManifest;
  /** bundle.json's sha256: what the signature covers, the bundle's identity in install's receipt. */
  manifestSha256: string;
  /** A split bundle's volume files, in order. */
  volumes?: { path: string; size: number; sha256: string }[];
  /** True when the output already held exactly this bundle, so nothing was written. */
  upToDate: boolean;
}

/** Read size for entry files: big enough that per-chunk overhead vanishes on multi-GiB layers. */
export const ENTRY_HIGH_WATER_MARK = 1 << 20;

/** An entry backed by a local file whose size and sha256 are already known. */
export function fileEntry(path: string, file: string, size: number, sha256: string): EntrySource {
  return { path, size, sha256, open: async (offset = 0) => createReadStream(file, { start: offset, highWaterMark: ENTRY_HIGH_WATER_MARK }), file: { path: file, offset: 0, endsFile: true } };
}

const RESERVED = new Set([MANIFEST_PATH, SIGNATURE_PATH, SUMS_PATH]);

export function checkEntries(entries: readonly EntrySource[]): void {
  const seen = new Set<string>();
  for (const e of entries) {
    const ok = entrySchema.safeParse({ path: e.path, size: e.size, sha256: e.sha256 });
    if (!ok.success) throw new OciError('LAYOUT', `bundle entry ${JSON.stringify(e.path)}: ${ok.error.issues[0]?.message ?? 'invalid'}`);
    if (RESERVED.has(e.path)) throw new OciError('LAYOUT', `bundle entry ${e.path} would clash with the bundle's own ${e.path}`);
    if (seen.has(e.path)) throw new OciError('LAYOUT', `bundle entry ${e.path} is listed twice`);
    if (e.mode !== undefined && e.mode !== 0o644 && e.mode !== 0o755) throw new OciError('LAYOUT', `bundle entry ${e.path}: mode ${e.mode.toString(8)} is neither 644 nor 755`);
    seen.add(e.path);
  }
  // A file that is also another entry's parent directory cannot be extracted.
  for (const p of seen) {
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      if (seen.has(dir)) throw new OciError('LAYOUT', `bundle entry ${dir} is a file, but ${p} needs it to be a directory`);
    }
  }
}

/** The manifest the bundle will carry: schema key order (zod builds its output in shape order), validated. */
export function buildManifest(opts: Pick<WriteBundleOptions, 'manifest' | 'signingKey'>, entries: BundleEntry[]): BundleManifest {
  const draft = { ...opts.manifest, signer: opts.signingKey ? { algorithm: 'ecdsa-p256-sha256', fingerprint: keyFingerprint(opts.signingKey) } : null, entries };
  const parsed = bundleManifestSchema.safeParse(draft);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new OciError('LAYOUT', `bundle.json would be invalid at ${issue?.path.join('.') || '(top)'}: ${issue?.message ?? 'invalid'}`);
  }
  const m = parsed.data;
  // What the manifest says about the release archive and artifacts must match the entries.
  const byPath = new Map(entries.map((e) => [e.path, e]));
  for (const ref of [m.release.archive, ...m.artifacts, ...(m.installer ? [m.installer] : [])]) {
    const e = byPath.get(ref.path);
    if (!e || e.size !== ref.size || e.sha256 !== ref.sha256) {
      throw new OciError('LAYOUT', `bundle.json names ${ref.path} (${ref.size} bytes, sha256 ${ref.sha256}) but the entries ${e ? 'disagree' : 'do not include it'}`);
    }
  }
  return m;
}

/**
 * O_EXCL so a symlink planted at the name is never followed; a leftover from a crash is replaced.
 * `wx+` when the caller reads back what it wrote (a direct bundle hashes the finished file).
 */
export async function openPartial(file: string, flags: 'wx' | 'wx+' = 'wx'): Promise<FileHandle> {
  try {
    return await open(file, flags, 0o644);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    await rm(file, { force: true });
    return open(file, flags, 0o644);
  }
}

/** Headers hold whole seconds; bundles keep the 31-bit range tar-stream (which wrote them first) allowed. */
export function checkMtime(mtime: Date): void {
  const seconds = mtime.getTime() / 1000;
  if (!Number.isFinite(seconds) || seconds < 0 || seconds >= 2 ** 31) throw new OciError('LAYOUT', `bundle mtime ${String(mtime)} is out of range`);
}

/** bundle.json as written: the manifest's JSON, two-space indented, with a final newline. */
export const manifestJson = (m: AnyManifest): Buffer => Buffer.from(`${JSON.stringify(m, null, 2)}\n`);

/** A SHA256SUMS file over `entries` and its own entry record. */
export function sumsFor(entries: readonly BundleEntry[]): { bytes: Buffer; entry: BundleEntry } {
  const bytes = Buffer.from(sha256sumsText(entries));
  return { bytes, entry: { path: SUMS_PATH, size: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') } };
}

/** bundle.json for a single-file bundle's data entries (naming the signer, if any), and the SHA256SUMS it lists. */
export function bundleJson(opts: Pick<WriteBundleOptions, 'manifest' | 'entries' | 'signingKey'>): { manifest: BundleManifest; json: Buffer; sums: Buffer } {
  const data: BundleEntry[] = opts.entries.map((e) => ({ path: e.path, size: e.size, sha256: e.sha256 }));
  const sums = sumsFor(data);
  const manifest = buildManifest(opts, [sums.entry, ...data]);
  return { manifest, json: manifestJson(manifest), sums: sums.bytes };
}

/** What a single-file bundle starts with, built from its data entries: bundle.json, its signature, SHA256SUMS. */
export function bundleHead(opts: Pick<WriteBundleOptions, 'manifest' | 'entries' | 'signingKey'>): { manifest: BundleManifest; json: Buffer; sig: Buffer | undefined; head: { path: string; bytes: Buffer }[] } {
  const { manifest, json, sums } = bundleJson(opts);
  const sig = opts.signingKey ? Buffer.from(signManifest(json, opts.signingKey)) : undefined;
  const head = [{ path: MANIFEST_PATH, bytes: json }, ...(sig ? [{ path: SIGNATURE_PATH, bytes: sig }] : []), { path: SUMS_PATH, bytes: sums }];
  return { manifest, json, sig, head };
}

export async function writeBundle(opts: WriteBundleOptions): Promise<WriteBundleResult> {
  checkMtime(opts.mtime);
  checkEntries(opts.entries);

  // Signed only when it is written: an identical bundle already there is found without signing.
  const { manifest, json } = bundleJson(opts);
  const existing = await existingBundle(opts.output, json, opts.signingKey);
  const manifestSha256 = manifestSha256Of(json);
  if (existing) return { path: opts.output, size: existing, sha256: null, manifest, manifestSha256, upToDate: true };
  const { head } = bundleHead(opts);

  const partial = `${opts.output}.partial`;
  const tar = await writeTarFile(partial, head, opts.entries, opts.mtime, opts.onBytes);
  try {
    await rename(partial, opts.output);
  } catch (err) {
    await rm(partial, { force: true });
    throw err;
  }
  await syncDir(dirname(opts.output));
  // The record of an interrupted `--direct` run, whose partial file this run replaced.
  await rm(`${partial}.done`, { force: true });
  return { path: opts.output, size: tar.size, sha256: tar.sha256, manifest, manifestSha256, upToDate: false };
}

/** Where entry padding (less than a block) is cut from. */
const ZEROS = new Uint8Array(512);

/**
 * Writes one deterministic tar at `file` (created exclusively, fsynced and closed; removed if
 * anything fails): the `head` entries from memory, then `entries` streamed and checked against
 * their declared size and sha256.
 */
export async function writeTarFile(
  file: string,
  head: readonly { path: string; bytes: Buffer }[],
  entries: readonly EntrySource[],
  mtime: Date,
  onBytes?: (entryPath: string, bytes: number) => void,
): Promise<{ size: number; sha256: string }> {
  const fh = await openPartial(file);
  const block = await BlockFile.open(fh, file).catch(async (err: unknown) => {
    await fh.close();
    await rm(file, { force: true });
    throw err;
  });
  const out = new TarOutput(block);
  try {
    for (const h of head) {
      await out.append(encodeFileHeader({ name: h.path, size: h.bytes.length, mode: 0o644, mtime }));
      await out.append(h.bytes);
      await out.append(ZEROS.subarray(0, paddingBytes(h.bytes.length)));
    }
    for (const e of entries) {
      const verified = e.arrival ? (await e.arrival()).verified : false;
      await out.append(encodeFileHeader({ name: e.path, size: e.size, mode: e.mode ?? 0o644, mtime }));
      await copyEntry(e, out, onBytes, verified);
      await out.append(ZEROS.subarray(0, paddingBytes(e.size)));
    }
    await out.append(END_OF_ARCHIVE);
    const tar = await out.finish();
    await fh.sync();
    await block.close();
    await fh.close();
    return tar;
  } catch (err) {
    await out.abort(); // a write still in flight must not outlive the file descriptor
    await block.close();
    await fh.close().catch(() => {}); // already closed when only the close failed
    await rm(file, { force: true });
    throw err;
  }
}

/**
 * A re-run onto its own earlier output: when the file there carries the same bundle.json (which
 * lists every entry's size and sha256) and a signature of it by the same key (verified rather than
 * made again and compared: signing is a tenth of a re-run) or, unsigned, none, it is the same
 * bundle, because a bundle appears under its final name only once complete. Returns its size,
 * undefined when nothing is there; throws when it differs. Its bytes are not hashed again: that is
 * `verify`'s job, and re-reading would cost as much as writing. `old`: the bundle there, if opened.
 */
export async function existingBundle(output: string, json: Buffer, signingKey: KeyObject | undefined, old?: OpenedBundle): Promise<number | undefined> {
  if (!old && !(await stat(output).then(() => true, () => false))) return undefined;
  old ??= await openBundle(output).catch(() => undefined);
  const signed = (sig: string | undefined) => (signingKey ? sig !== undefined && verifyManifest(json, sig, createPublicKey(signingKey)) : sig === undefined);
  if (!old || !old.manifestBytes.equals(json) || !signed(old.signature)) throw new OciError('BUSY', `${output} already exists and holds a different bundle; choose another --output or move the old one away`);
  return old.index.fileSize;
}

type Progress = ((path: string, bytes: number) => void) | undefined;

/**
 * Copies one entry into the tar, hashing (unless `verified` moments ago) and counting; refuses
 * bytes that differ from what was declared.
 */
async function copyEntry(e: EntrySource, out: TarOutput, onBytes: Progress, verified: boolean): Promise<void> {
  const hash = verified ? undefined : createHash('sha256');
  onBytes?.(e.path, 0);
  const n = e.file ? await copyFromFile(e, e.file, out, hash, onBytes) : await copyFromStream(e, out, hash, onBytes);
  if (n !== e.size) throw new OciError('SIZE_MISMATCH', `${e.path}: ${n} bytes, declared ${e.size}; its source changed since it was listed`);
  if (!hash) return;
  const got = hash.digest('hex');
  if (got !== e.sha256) throw new OciError('DIGEST_MISMATCH', `${e.path}: sha256 ${got}, declared ${e.sha256}; its source changed since it was listed`);
}

const tooLong = (e: EntrySource): OciError => new OciError('SIZE_MISMATCH', `${e.path}: more than the declared ${e.size} bytes; its source changed since it was listed`);

function readFailure(e: EntrySource, err: unknown): Error {
  if (isOciError(err)) return err;
  return new OciError((err as NodeJS.ErrnoException).code === 'ENOENT' ? 'NOT_FOUND' : 'NETWORK', `reading ${e.path} for the bundle failed: ${(err as Error).message}`, { cause: err });
}

/** Reads the entry's bytes from its file straight into the tar's buffers (around the page cache where it can); the bytes read (fewer than declared when the file is short). */
async function copyFromFile(e: EntrySource, file: NonNullable<EntrySource['file']>, out: TarOutput, hash: Hash | undefined, onBytes: Progress): Promise<number> {
  const reader = await DirectReader.open(file.path).catch((err: unknown) => {
    throw readFailure(e, err);
  });
  try {
    // Refused before any byte is read, so a file that grew never puts extra bytes in the tar.
    if (file.endsFile && (await reader.fh.stat()).size > file.offset + e.size) throw tooLong(e);
    let n = 0;
    while (n < e.size) {
      const got = await out.fill(async (room) => {
        const want = Math.min(room.length, e.size - n);
        const bytesRead = await reader.read(room, want, file.offset + n).catch((err: unknown) => {
          throw readFailure(e, err);
        });
        hash?.update(room.subarray(0, bytesRead));
        return bytesRead;
      });
      if (got === 0) break;
      n += got;
      onBytes?.(e.path, n);
    }
    return n;
  } finally {
    await reader.close().catch(() => {}); // read only: nothing to lose, and the first error is the one to report
  }
}

/** Copies the entry's bytes from its source stream; the bytes read. */
async function copyFromStream(e: EntrySource, out: TarOutput, hash: Hash | undefined, onBytes: Progress): Promise<number> {
  let source: Readable;
  try {
    source = await e.open();
  } catch (err) {
    throw isOciError(err) ? err : new OciError('NOT_FOUND', `cannot open ${e.path} for the bundle: ${(err as Error).message}`, { cause: err });
  }
  const chunks = (source as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  let n = 0;
  try {
    for (;;) {
      const next = await chunks.next().catch((err: unknown) => {
        throw readFailure(e, err);
      });
      if (next.done) return n;
      n += next.value.length;
      // Checked before writing, so a source that runs long never puts extra bytes in the tar.
      if (n > e.size) throw tooLong(e);
      hash?.update(next.value);
      await out.append(next.value); // a write failure passes through as it is: it names the tar file
      onBytes?.(e.path, n);
    }
  } finally {
    source.destroy();
  }
}

/** Makes the rename durable; some filesystems refuse fsync on a directory, which is harmless. */
export async function syncDir(dir: string): Promise<void> {
  const d = await open(dir, 'r').catch(() => undefined);
  if (!d) return;
  await d.sync().catch(() => {});
  await d.close();
}
