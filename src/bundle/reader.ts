/**
 * Reads a bundle (DESIGN.md §3) in place: one header scan, then every structural rule checked
 * before any content is trusted. Nothing is extracted; entries are served by byte offset.
 *
 * The tar must be exactly what our writer produces: bundle.json, optionally bundle.json.sig, then
 * the entries bundle.json lists, in its order, all regular files. Anything else (extra, missing,
 * reordered or duplicate entries, links, directories, unsafe paths, trailing data) is refused with
 * one line naming the first bad entry, since different tar readers could disagree about it.
 */
import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { PassThrough, type Readable } from 'node:stream';
import { isOciError } from '../oci/errors.ts';
import { TarLayoutFiles } from '../oci/tar-files.ts';
import { isSafeRelativePath, readAt, scanTar, type TarEntry, type TarIndex } from '../tar/index.ts';
import { CodedError } from '../util/errors.ts';
import { BUNDLE_FORMAT_VERSION, bundleManifestSchema, MANIFEST_PATH, SIGNATURE_PATH, SUMS_PATH, type BundleManifest } from './manifest.ts';

export class BundleError extends CodedError<'VERIFY' | 'IO'> {}

/** bundle.json is read into memory; a real one with thousands of entries is a few MiB. */
export const MAX_MANIFEST_BYTES = 16 << 20;
/** A base64 DER P-256 signature is about 100 bytes. */
const MAX_SIGNATURE_BYTES = 4096;
/** GNU tar pads archives to its 20-block record; tar-stream (our writer) does not pad at all. */
const RECORD = 10240;
const READ_HIGH_WATER_MARK = 1 << 20;
/** The top-level names a bundle may hold after bundle.json and its signature. */
const ALLOWED_DIRS = ['tool/', 'release/', 'images/', 'artifacts/'];

export interface EntryLocation {
  /** Byte offset of the content in the bundle file. */
  offset: number;
  size: number;
}

const bad = (message: string): BundleError => new BundleError('VERIFY', message);
const q = (p: string): string => JSON.stringify(p);

export class OpenedBundle {
  readonly file: string;
  readonly index: TarIndex;
  readonly manifest: BundleManifest;
  /** The exact bytes the signature covers. */
  readonly manifestBytes: Buffer;
  /** bundle.json.sig as text, or undefined for an unsigned bundle. */
  readonly signature: string | undefined;
  readonly #entries: Map<string, TarEntry>;

  constructor(file: string, index: TarIndex, manifest: BundleManifest, manifestBytes: Buffer, signature: string | undefined) {
    this.file = file;
    this.index = index;
    this.manifest = manifest;
    this.manifestBytes = manifestBytes;
    this.signature = signature;
    this.#entries = new Map(index.entries.map((e) => [e.path, e]));
  }

  entry(path: string): EntryLocation | undefined {
    const e = this.#entries.get(path);
    return e && { offset: e.offset, size: e.size };
  }

  /** The entry's bytes from `offset` on, read straight from the bundle file. */
  open(path: string, offset = 0): Readable {
    const e = this.#entries.get(path);
    if (!e) throw bad(`${this.file} has no entry ${q(path)}`);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > e.size) throw bad(`offset ${offset} is outside ${path} (${e.size} bytes)`);
    if (offset === e.size) {
      // createReadStream refuses start > end, so an empty range is a stream of its own.
      const empty = new PassThrough();
      empty.end();
      return empty;
    }
    return createReadStream(this.file, { start: e.offset + offset, end: e.offset + e.size - 1, highWaterMark: READ_HIGH_WATER_MARK });
  }

  /** The OCI layout under `prefix` (normally `images/`), served from the same index. */
  layoutFiles(prefix = 'images/'): TarLayoutFiles {
    return new TarLayoutFiles(this.file, prefix, this.index);
  }
}

export async function openBundle(file: string): Promise<OpenedBundle> {
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

  const listed = new Set(manifest.entries.map((e) => e.path));
  const seen = new Set<string>([MANIFEST_PATH, ...(signature === undefined ? [] : [SIGNATURE_PATH])]);
  for (let i = next; i < entries.length; i++) {
    const e = entries[i]!;
    checkEntry(e);
    if (seen.has(e.path)) throw bad(`${q(e.path)} appears twice in the bundle (again at byte ${e.headerOffset})`);
    seen.add(e.path);
    const want = manifest.entries[i - next];
    if (!listed.has(e.path)) throw bad(`the entry ${q(e.path)} at byte ${e.headerOffset} is not listed in bundle.json`);
    if (want === undefined || want.path !== e.path) throw bad(`the entry ${q(e.path)} at byte ${e.headerOffset} is out of order: bundle.json lists ${q(want?.path ?? '(nothing)')} there`);
    if (want.size !== e.size) throw bad(`${e.path} is ${e.size} bytes in the tar, but bundle.json says ${want.size}`);
  }
  const missing = manifest.entries[entries.length - next];
  if (missing) throw bad(`bundle.json lists ${missing.path}, but the bundle ends before it`);
  return new OpenedBundle(file, index, manifest, manifestBytes, signature);
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

function parseManifest(bytes: Buffer): BundleManifest {
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    throw bad('bundle.json is not valid UTF-8 JSON (damaged or changed)');
  }
  const version = (doc as { formatVersion?: unknown } | null)?.formatVersion;
  if (typeof version === 'number' && version > BUNDLE_FORMAT_VERSION) {
    throw bad(`this bundle needs a newer cartesia-airgap: its format version is ${version}, this tool reads ${BUNDLE_FORMAT_VERSION}`);
  }
  const parsed = bundleManifestSchema.safeParse(doc);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw bad(`bundle.json is invalid at ${issue?.path.join('.') || '(top)'}: ${issue?.message ?? 'invalid'}`);
  }
  const m = parsed.data;
  if (m.entries[0]?.path !== SUMS_PATH) throw bad(`bundle.json lists ${q(m.entries[0]?.path ?? '(nothing)')} first; a bundle's first listed entry is SHA256SUMS`);
  const paths = new Set<string>();
  for (const [i, e] of m.entries.entries()) {
    if (i > 0 && !ALLOWED_DIRS.some((d) => e.path.startsWith(d))) throw bad(`bundle.json lists ${q(e.path)}, outside the names a bundle may hold (SHA256SUMS, ${ALLOWED_DIRS.join(', ')})`);
    if (paths.has(e.path)) throw bad(`bundle.json lists ${e.path} twice`);
    paths.add(e.path);
  }
  // A path that is both a file and another's directory cannot be extracted.
  for (const p of paths) {
    for (let at = p.indexOf('/'); at !== -1; at = p.indexOf('/', at + 1)) {
      if (paths.has(p.slice(0, at))) throw bad(`bundle.json lists ${p.slice(0, at)} as a file and ${p} under it`);
    }
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
