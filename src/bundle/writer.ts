/**
 * Writes a bundle (DESIGN.md §3): one uncompressed POSIX tar, bundle.json first, then its
 * signature, SHA256SUMS and the data entries in the caller's order. Headers carry nothing from the
 * build host (fixed mtime, uid/gid 0, no names, mode 0644), so the same inputs give the same bytes.
 *
 * bundle.json lists SHA256SUMS and every data entry; SHA256SUMS lists the data entries only. It
 * cannot also list bundle.json: each would then contain the other's hash.
 */
import { createHash, type KeyObject } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Readable } from 'node:stream';
import { pack as tarPack, type Header as TarHeader, type Pack } from 'tar-stream';
import { OciError, isOciError } from '../oci/errors.ts';
import { keyFingerprint } from './keys.ts';
import { bundleManifestSchema, entrySchema, MANIFEST_PATH, SIGNATURE_PATH, SUMS_PATH, type AnyManifest, type BundleEntry, type BundleManifest } from './manifest.ts';
import { openBundle } from './reader.ts';
import { signManifest } from './sign.ts';
import { sha256sumsText } from './sums.ts';

export interface EntrySource {
  path: string;
  size: number;
  sha256: string;
  /** The bytes from `offset` (default 0) to the end: a piece of an entry split across volumes starts mid-entry. */
  open(offset?: number): Promise<Readable>;
  /** Tar mode: 0o644 (the default), or 0o755 for an executable. */
  mode?: number;
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
  /** A split bundle's volume files, in order. */
  volumes?: { path: string; size: number; sha256: string }[];
  /** True when the output already held exactly this bundle, so nothing was written. */
  upToDate: boolean;
}

/** Read size for entry files: big enough that per-chunk overhead vanishes on multi-GiB layers. */
export const ENTRY_HIGH_WATER_MARK = 1 << 20;

/** An entry backed by a local file whose size and sha256 are already known. */
export function fileEntry(path: string, file: string, size: number, sha256: string): EntrySource {
  return { path, size, sha256, open: async (offset = 0) => createReadStream(file, { start: offset, highWaterMark: ENTRY_HIGH_WATER_MARK }) };
}

/** tar-stream's per-entry writer (a streamx Writable). */
type Sink = ReturnType<Pack['entry']>;

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
export function buildManifest(opts: WriteBundleOptions, entries: BundleEntry[]): BundleManifest {
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

/** Writes all of `buf` at `position` (FileHandle.write may write less than asked). */
export async function writeAll(fh: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  for (let off = 0; off < buf.length; ) off += (await fh.write(buf, off, buf.length - off, position + off)).bytesWritten;
}

/** O_EXCL so a symlink planted at the name is never followed; a leftover from a crash is replaced. */
async function openPartial(file: string): Promise<FileHandle> {
  try {
    return await open(file, 'wx', 0o644);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    await rm(file, { force: true });
    return open(file, 'wx', 0o644);
  }
}

/** tar-stream truncates mtime to a 32-bit int; refuse what it would mangle. */
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

export async function writeBundle(opts: WriteBundleOptions): Promise<WriteBundleResult> {
  checkMtime(opts.mtime);
  checkEntries(opts.entries);

  const data: BundleEntry[] = opts.entries.map((e) => ({ path: e.path, size: e.size, sha256: e.sha256 }));
  const sums = sumsFor(data);
  const manifest = buildManifest(opts, [sums.entry, ...data]);
  const json = manifestJson(manifest);
  const sig = opts.signingKey ? Buffer.from(signManifest(json, opts.signingKey)) : undefined;
  const existing = await existingBundle(opts.output, json, sig);
  if (existing) return { path: opts.output, size: existing, sha256: null, manifest, upToDate: true };

  const partial = `${opts.output}.partial`;
  const head = [{ path: MANIFEST_PATH, bytes: json }, ...(sig ? [{ path: SIGNATURE_PATH, bytes: sig }] : []), { path: SUMS_PATH, bytes: sums.bytes }];
  const tar = await writeTarFile(partial, head, opts.entries, opts.mtime, opts.onBytes);
  try {
    await rename(partial, opts.output);
  } catch (err) {
    await rm(partial, { force: true });
    throw err;
  }
  await syncDir(dirname(opts.output));
  return { path: opts.output, size: tar.size, sha256: tar.sha256, manifest, upToDate: false };
}

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
  const header = (name: string, size: number, mode = 0o644): Partial<TarHeader> & { name: string } => ({ name, size, mode, uid: 0, gid: 0, uname: '', gname: '', mtime, type: 'file' });
  const partial = file;
  const fh = await openPartial(partial);
  const pack = tarPack();
  pack.on('error', () => {}); // failures are collected by fail() below
  const tarHash = createHash('sha256');
  let tarSize = 0;
  let failure: unknown;
  const fail = (err: unknown): void => {
    failure ??= err;
    pack.destroy(err as Error);
  };

  /** Adds one entry, streaming its body with backpressure; resolves when tar-stream is done with it. */
  const addEntry = async (h: Partial<TarHeader> & { name: string }, body: Buffer | ((sink: Sink) => Promise<void>)): Promise<void> => {
    let sink!: Sink;
    const done = new Promise<void>((resolve, reject) => {
      sink = pack.entry(h, (err) => (err ? reject(err) : resolve()));
    });
    sink.on('error', () => {}); // reported through the entry callback; unheard it would crash the process
    done.catch(() => {}); // observed below; avoids an unhandled rejection while the body streams
    if (Buffer.isBuffer(body)) sink.end(body);
    else {
      await body(sink);
      sink.end(null); // streamx's end() takes an optional last chunk; null means none
    }
    await done;
  };

  const produce = async (): Promise<void> => {
    for (const h of head) await addEntry(header(h.path, h.bytes.length), h.bytes);
    for (const e of entries) await addEntry(header(e.path, e.size, e.mode), (sink) => streamEntry(e, sink, onBytes));
    pack.finalize();
  };

  const consume = async (): Promise<void> => {
    for await (const chunk of pack as AsyncIterable<Buffer>) {
      tarHash.update(chunk);
      try {
        await writeAll(fh, chunk, tarSize);
      } catch (err) {
        const wrapped = new Error(`cannot write ${partial}: ${(err as Error).message}`, { cause: err });
        fail(wrapped); // recorded before the iterator's cleanup reports a generic one
        throw wrapped;
      }
      tarSize += chunk.length;
    }
  };

  try {
    await Promise.all([produce().catch(fail), consume().catch(fail)]);
    if (failure !== undefined) throw failure;
    await fh.sync();
    await fh.close();
  } catch (err) {
    await fh.close().catch(() => {}); // already closed when only the sync failed
    await rm(partial, { force: true });
    throw err;
  }
  return { size: tarSize, sha256: tarHash.digest('hex') };
}

/**
 * A re-run onto its own earlier output: when the file there carries the same bundle.json and
 * signature (which list every entry's size and sha256), it is the same bundle, because a bundle
 * appears under its final name only once complete. Returns its size; throws when it differs.
 * Its bytes are not hashed again: that is `verify`'s job, and re-reading would cost as much as
 * writing.
 */
async function existingBundle(output: string, json: Buffer, sig: Buffer | undefined): Promise<number | undefined> {
  if (!(await stat(output).then(() => true, () => false))) return undefined;
  const old = await openBundle(output).catch(() => undefined);
  const same = old && old.manifestBytes.equals(json) && old.signature === sig?.toString('latin1');
  if (!same) throw new OciError('BUSY', `${output} already exists and holds a different bundle; choose another --output or move the old one away`);
  return old.index.fileSize;
}

/** Streams one entry into its tar sink, hashing and counting; refuses bytes that differ from what was declared. */
async function streamEntry(e: EntrySource, sink: Sink, onBytes?: (path: string, bytes: number) => void): Promise<void> {
  const hash = createHash('sha256');
  let n = 0;
  onBytes?.(e.path, 0);
  let source: Readable;
  try {
    source = await e.open();
  } catch (err) {
    throw isOciError(err) ? err : new OciError('NOT_FOUND', `cannot open ${e.path} for the bundle: ${(err as Error).message}`, { cause: err });
  }
  try {
    for await (const chunk of source as AsyncIterable<Buffer>) {
      n += chunk.length;
      // Checked before writing, so a source that runs long never puts extra bytes in the tar.
      if (n > e.size) throw new OciError('SIZE_MISMATCH', `${e.path}: more than the declared ${e.size} bytes; its source changed since it was listed`);
      hash.update(chunk);
      if (!sink.write(chunk)) await drained(sink);
      onBytes?.(e.path, n);
    }
  } catch (err) {
    source.destroy();
    if (isOciError(err)) throw err;
    throw new OciError((err as NodeJS.ErrnoException).code === 'ENOENT' ? 'NOT_FOUND' : 'NETWORK', `reading ${e.path} for the bundle failed: ${(err as Error).message}`, { cause: err });
  }
  if (n !== e.size) throw new OciError('SIZE_MISMATCH', `${e.path}: ${n} bytes, declared ${e.size}; its source changed since it was listed`);
  const got = hash.digest('hex');
  if (got !== e.sha256) throw new OciError('DIGEST_MISMATCH', `${e.path}: sha256 ${got}, declared ${e.sha256}; its source changed since it was listed`);
}

/** Resolves on 'drain'; rejects if the sink closes first (the pack was destroyed). */
function drained(sink: Sink): Promise<void> {
  // A destroyed sink refuses writes and will never drain (its 'close' may already have fired).
  if (sink.destroying) return Promise.reject(new Error('the bundle writer stopped'));
  return new Promise((resolve, reject) => {
    const onDrain = (): void => {
      sink.off('close', onClose);
      resolve();
    };
    const onClose = (): void => {
      sink.off('drain', onDrain);
      reject(new Error('the bundle writer stopped'));
    };
    sink.once('drain', onDrain);
    sink.once('close', onClose);
  });
}

/** Makes the rename durable; some filesystems refuse fsync on a directory, which is harmless. */
export async function syncDir(dir: string): Promise<void> {
  const d = await open(dir, 'r').catch(() => undefined);
  if (!d) return;
  await d.sync().catch(() => {});
  await d.close();
}
