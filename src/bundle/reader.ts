/**
 * Reads a bundle (DESIGN.md §3) in place: one header scan, then every structural rule checked
 * before any content is trusted. Nothing is extracted; entries are served by byte offset.
 *
 * The tar must be exactly what our writer produces: bundle.json, optionally bundle.json.sig, then
 * the entries bundle.json lists, in its order, all regular files. Anything else (extra, missing,
 * reordered or duplicate entries, links, directories, unsafe paths, trailing data) is refused with
 * one line naming the first bad entry, since different tar readers could disagree about it.
 *
 * A volume of a split bundle is such a tar too, holding what bundle.json lists for that volume;
 * opened alone it serves the entries it holds whole (volume-set.ts opens the whole set).
 */
import { open, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import type { Readable } from 'node:stream';
import type { LayoutFiles } from '../oci/types.ts';
import { isOciError } from '../oci/errors.ts';
import { ExtentFiles, type Extent } from '../tar/extents.ts';
import { isSafeRelativePath, readAt, scanTar, type TarEntry, type TarIndex } from '../tar/index.ts';
import { CodedError } from '../util/errors.ts';
import { bundleManifestSchema, MANIFEST_PATH, READABLE_FORMAT_VERSION, SIGNATURE_PATH, SPLIT_FORMAT_VERSION, splitManifestSchema, SUMS_PATH, type AnyManifest, type SplitManifest, type VolumeEntry } from './manifest.ts';
import { checkSplitLayout } from './volume-layout.ts';

export class BundleError extends CodedError<'VERIFY' | 'IO'> {}

/** bundle.json is read into memory; a real one with thousands of entries is a few MiB. */
export const MAX_MANIFEST_BYTES = 16 << 20;
/** A base64 DER P-256 signature is about 100 bytes. */
const MAX_SIGNATURE_BYTES = 4096;
/** GNU tar pads archives to its 20-block record; our writer (like tar-stream, which it replaced) does not pad at all. */
const RECORD = 10240;
/** The top-level names a bundle may hold after bundle.json and its signature. */
const ALLOWED_DIRS = ['tool/', 'release/', 'images/', 'artifacts/'];

export interface EntryLocation {
  /** Byte offset of the content in the bundle file (for an entry in pieces, of its first piece). */
  offset: number;
  size: number;
  /** The file holding it (a volume, for a split bundle). */
  file: string;
}

const bad = (message: string): BundleError => new BundleError('VERIFY', message);
const q = (p: string): string => JSON.stringify(p);

export const isSplit = (m: AnyManifest): m is SplitManifest => m.formatVersion === SPLIT_FORMAT_VERSION;

/** One tar of a bundle: the whole bundle, or one volume of a split bundle. */
export class BundleTar {
  readonly file: string;
  readonly index: TarIndex;
  readonly manifest: AnyManifest;
  /** The exact bytes the signature covers. */
  readonly manifestBytes: Buffer;
  /** bundle.json.sig as text, or undefined for an unsigned bundle. */
  readonly signature: string | undefined;
  /** What this tar holds after bundle.json and its signature, as bundle.json lists it, in tar order. */
  readonly listing: readonly VolumeEntry[];
  /** A volume's number (1-based); undefined for a single-file bundle. */
  readonly volume: number | undefined;
  /** Every tar entry, by its name in the tar. */
  readonly files: ExtentFiles;

  constructor(file: string, index: TarIndex, manifest: AnyManifest, manifestBytes: Buffer, signature: string | undefined, listing: readonly VolumeEntry[], volume: number | undefined) {
    this.file = file;
    this.index = index;
    this.manifest = manifest;
    this.manifestBytes = manifestBytes;
    this.signature = signature;
    this.listing = listing;
    this.volume = volume;
    this.files = new ExtentFiles(`tar:${file}`, index.entries.map((e) => [e.path, [{ file, offset: e.offset, size: e.size }]]));
  }

  /** `NAME.vol003.tar (volume 3 of 7)`, for messages; '' for a single-file bundle. */
  get label(): string {
    return this.volume === undefined || !isSplit(this.manifest) ? '' : `${basename(this.file)} (volume ${this.volume} of ${this.manifest.volumes.list.length})`;
  }

  extent(path: string): Extent | undefined {
    return this.files.location(path);
  }
}

export class OpenedBundle {
  /** The bundle file, or for a split bundle the volume or directory it was opened from. */
  readonly file: string;
  /** The first tar's index. */
  readonly index: TarIndex;
  readonly manifest: AnyManifest;
  /** The exact bytes the signature covers. */
  readonly manifestBytes: Buffer;
  /** bundle.json.sig as text, or undefined for an unsigned bundle. */
  readonly signature: string | undefined;
  /** The tars read: the bundle file, or the volumes (all of them, or one opened alone) in order. */
  readonly tars: readonly BundleTar[];
  /** Every entry whose bytes are all here, as extents of the tars. */
  readonly #files: ExtentFiles;

  constructor(file: string, tars: readonly BundleTar[]) {
    const first = tars[0]!;
    this.file = file;
    this.index = first.index;
    this.manifest = first.manifest;
    this.manifestBytes = first.manifestBytes;
    this.signature = first.signature;
    this.tars = tars;
    // A single-file bundle serves every tar entry, as a tar reader would.
    this.#files = first.volume === undefined ? first.files : new ExtentFiles(`tar:${file}`, wholeEntries(tars));
  }

  /** The split layout, when the bundle is split into volumes. */
  get volumes(): SplitManifest['volumes'] | undefined {
    return isSplit(this.manifest) ? this.manifest.volumes : undefined;
  }

  /** True unless this is one volume opened without the rest of its set. */
  get complete(): boolean {
    return this.tars.length === (this.volumes?.list.length ?? 1);
  }

  /** Bytes of every tar read. */
  get size(): number {
    return this.tars.reduce((n, t) => n + t.index.fileSize, 0);
  }

  entry(path: string): EntryLocation | undefined {
    return this.#files.location(path);
  }

  /** The entry's bytes from `offset` on (`length` of them, else to its end), read straight from the bundle file(s). */
  open(path: string, offset = 0, length?: number): Readable {
    const size = this.#files.location(path)?.size;
    if (size === undefined) throw bad(`${this.file} has no entry ${q(path)}`);
    const end = length === undefined ? size : offset + length;
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(end) || end < offset || end > size) throw bad(`bytes ${offset} to ${end} are outside ${path} (${size} bytes)`);
    return this.#files.stream(path, offset, length);
  }

  /** The OCI layout under `prefix` (normally `images/`), served from the same extents. */
  layoutFiles(prefix = 'images/'): LayoutFiles {
    const dir = prefix === '' || prefix.endsWith('/') ? prefix : `${prefix}/`;
    return this.#files.under(dir, `tar:${this.file}${dir === '' ? '' : `:${dir}`}`);
  }
}

/** A split bundle's data entries as extents of its volumes: whole ones, and those in pieces once every piece is here. */
function wholeEntries(tars: readonly BundleTar[]): [string, Extent[]][] {
  const sizes = new Map(tars[0]!.manifest.entries.map((e) => [e.path, e.size]));
  const out = new Map<string, Extent[]>();
  const pieces = new Map<string, Extent[]>();
  for (const t of tars) {
    for (const e of t.listing.slice(1)) {
      const x = t.extent(e.path)!;
      if (e.piece) pieces.set(e.piece.of, [...(pieces.get(e.piece.of) ?? []), x]);
      else out.set(e.path, [x]);
    }
  }
  for (const [path, extents] of pieces) if (extents.reduce((n, x) => n + x.size, 0) === sizes.get(path)) out.set(path, extents);
  return [...out];
}

/** Opens one tar: a single-file bundle, or one volume of a split bundle on its own. */
export async function openBundle(file: string): Promise<OpenedBundle> {
  return new OpenedBundle(file, [await openBundleTar(file)]);
}

/** Scans one bundle tar and checks its structure against its bundle.json. */
export async function openBundleTar(file: string): Promise<BundleTar> {
  const st = await stat(file).catch((err: NodeJS.ErrnoException) => {
    throw new BundleError('IO', `cannot read the bundle ${file}: ${err.code ?? err.message}`, { cause: err });
  });
  if (!st.isFile()) throw new BundleError('IO', `the bundle ${file} is not a regular file`);
  let index: TarIndex;
  try {
    index = await scanTar(file);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    // scanTar's own refusals are about the bytes; anything else is the file system.
    if (isOciError(err)) throw bad(err.message.replace(/^tar /, 'bundle '));
    throw new BundleError('IO', `cannot read the bundle ${file}: ${e.code ?? e.message}`, { cause: err });
  }
  await checkTrailer(file, index);

  const entries = index.entries;
  const first = entries[0];
  if (!first) throw bad(`${file} holds no entries; a bundle starts with bundle.json`);
  checkEntry(first);
  if (first.path !== MANIFEST_PATH) throw bad(`the first entry is ${q(first.path)} at byte ${first.headerOffset}; a bundle starts with bundle.json`);
  if (first.size > MAX_MANIFEST_BYTES) throw bad(`bundle.json is ${first.size} bytes, more than the ${MAX_MANIFEST_BYTES} a bundle.json may have`);
  const manifestBytes = await readEntry(file, first);
  const manifest = parseManifest(manifestBytes);

  let next = 1;
  let signature: string | undefined;
  const sig = entries[1];
  if (sig?.path === SIGNATURE_PATH) {
    checkEntry(sig);
    if (sig.size > MAX_SIGNATURE_BYTES) throw bad(`bundle.json.sig is ${sig.size} bytes; a signature is about 100`);
    signature = (await readEntry(file, sig)).toString('latin1');
    next = 2;
  }

  const volume = isSplit(manifest) ? whichVolume(file, manifest, entries, next) : undefined;
  const listing = isSplit(manifest) ? manifest.volumes.list[volume! - 1]!.entries : manifest.entries;
  const listed = new Set(listing.map((e) => e.path));
  const seen = new Set<string>([MANIFEST_PATH, ...(signature === undefined ? [] : [SIGNATURE_PATH])]);
  for (let i = next; i < entries.length; i++) {
    const e = entries[i]!;
    checkEntry(e);
    if (seen.has(e.path)) throw bad(`${q(e.path)} appears twice in the bundle (again at byte ${e.headerOffset})`);
    seen.add(e.path);
    const want = listing[i - next];
    if (!listed.has(e.path)) throw bad(`the entry ${q(e.path)} at byte ${e.headerOffset} is not listed in bundle.json`);
    if (want === undefined || want.path !== e.path) throw bad(`the entry ${q(e.path)} at byte ${e.headerOffset} is out of order: bundle.json lists ${q(want?.path ?? '(nothing)')} there`);
    if (want.size !== e.size) throw bad(`${e.path} is ${e.size} bytes in the tar, but bundle.json says ${want.size}`);
  }
  const missing = listing[entries.length - next];
  if (missing) throw bad(`bundle.json lists ${missing.path}, but the bundle ends before it`);
  return new BundleTar(file, index, manifest, manifestBytes, signature, listing, volume);
}

/**
 * Which volume a tar is: the one whose listing starts (after its SHA256SUMS) with the tar's first
 * data entry. Volumes share no data entry, so at most one matches; the name is not trusted.
 */
function whichVolume(file: string, m: SplitManifest, entries: readonly TarEntry[], next: number): number {
  const first = entries[next + 1]?.path;
  const k = m.volumes.list.findIndex((v) => v.entries[1]?.path === first);
  if (k === -1) throw bad(`${basename(file)} holds none of the ${m.volumes.list.length} volumes its bundle.json lists (its first entry after SHA256SUMS is ${q(first ?? '(nothing)')})`);
  return k + 1;
}

/** Regular files with plain relative paths only: our writer never writes anything else. */
function checkEntry(e: TarEntry): void {
  if (!isSafeRelativePath(e.path)) throw bad(`the entry ${q(e.path)} at byte ${e.headerOffset} has an unsafe path (absolute, empty or with ..)`);
  if (e.type !== 'file') throw bad(`the entry ${q(e.path)} at byte ${e.headerOffset} is a ${e.type}; a bundle holds only regular files`);
}

/**
 * After the two zero blocks only zero padding to a 10240-byte record may follow (GNU tar's);
 * anything else could be a second archive some reader goes on to read.
 */
async function checkTrailer(file: string, index: TarIndex): Promise<void> {
  const end = index.endOffset + 1024;
  const extra = index.fileSize - end;
  if (extra === 0) return;
  const where = `${extra} bytes after the end of the archive at byte ${end}`;
  if (extra < 0 || extra >= RECORD || index.fileSize % RECORD !== 0) throw bad(`trailing data: ${where}`);
  const tail = await readRange(file, end, extra);
  if (tail.length !== extra || tail.some((b) => b !== 0)) throw bad(`trailing data: ${where} are not zero padding`);
}

/** bundle.json bytes → the checked manifest (format version, schema, entry list rules). */
export function parseManifest(bytes: Buffer): AnyManifest {
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    throw bad('bundle.json is not valid UTF-8 JSON (damaged or changed)');
  }
  const version = (doc as { formatVersion?: unknown } | null)?.formatVersion;
  if (typeof version === 'number' && version > READABLE_FORMAT_VERSION) {
    throw bad(`this bundle needs a newer cartesia-airgap: its format version is ${version}, this tool reads up to ${READABLE_FORMAT_VERSION}`);
  }
  const parsed = (version === SPLIT_FORMAT_VERSION ? splitManifestSchema : bundleManifestSchema).safeParse(doc);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw bad(`bundle.json is invalid at ${issue?.path.join('.') || '(top)'}: ${issue?.message ?? 'invalid'}`);
  }
  const m = parsed.data;
  // A split bundle lists its data entries only; each volume's listing starts with its own SHA256SUMS.
  const split = isSplit(m);
  if (!split && m.entries[0]?.path !== SUMS_PATH) throw bad(`bundle.json lists ${q(m.entries[0]?.path ?? '(nothing)')} first; a bundle's first listed entry is SHA256SUMS`);
  const paths = new Set<string>();
  for (const [i, e] of m.entries.entries()) {
    if ((split || i > 0) && !ALLOWED_DIRS.some((d) => e.path.startsWith(d))) throw bad(`bundle.json lists ${q(e.path)}, outside the names a bundle may hold (SHA256SUMS, ${ALLOWED_DIRS.join(', ')})`);
    if (paths.has(e.path)) throw bad(`bundle.json lists ${e.path} twice`);
    paths.add(e.path);
  }
  // A path that is both a file and another's directory cannot be extracted.
  for (const p of paths) {
    for (let at = p.indexOf('/'); at !== -1; at = p.indexOf('/', at + 1)) {
      if (paths.has(p.slice(0, at))) throw bad(`bundle.json lists ${p.slice(0, at)} as a file and ${p} under it`);
    }
  }
  if (split) {
    const problem = checkSplitLayout(m);
    if (problem) throw bad(`bundle.json: ${problem}`);
  }
  return m;
}

async function readEntry(file: string, e: TarEntry): Promise<Buffer> {
  const buf = await readRange(file, e.offset, e.size);
  if (buf.length !== e.size) throw bad(`${e.path} ends after ${buf.length} of ${e.size} bytes (the file changed while being read)`);
  return buf;
}

async function readRange(file: string, position: number, length: number): Promise<Buffer> {
  const fh = await open(file, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new BundleError('IO', `cannot read the bundle ${file}: ${err.code ?? err.message}`, { cause: err });
  });
  try {
    return await readAt(fh, position, length);
  } finally {
    await fh.close();
  }
}
