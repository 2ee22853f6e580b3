/**
 * Writes a bundle split into volumes (`bundle --split-size`): NAME.vol001.tar, NAME.vol002.tar, …,
 * each no larger than the limit and each a bundle tar of its own that can be checked alone: the
 * same signed bundle.json (listing every volume's entries, pieces included, with their sha256s),
 * its signature, the volume's own SHA256SUMS, then its entries.
 *
 * bundle.json comes first in every volume, so the layout is planned before anything is written
 * (volumes.ts) and the pieces of entries larger than a volume are hashed in a first pass.
 */
import { createHash, type Hash } from 'node:crypto';
import { rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Readable } from 'node:stream';
import { OciError } from '../oci/errors.ts';
import { CodedError } from '../util/errors.ts';
import { MANIFEST_PATH, manifestSha256Of, SIGNATURE_PATH, SPLIT_FORMAT_VERSION, splitManifestSchema, SUMS_PATH, type BundleEntry, type BundleManifest, type SplitManifest, type VolumeEntry } from './manifest.ts';
import { signManifest } from './sign.ts';
import { tarHeaderBytes } from '../tar/header.ts';
import { planVolumes, volumeFile, type PlannedVolume } from './volumes.ts';
import { buildManifest, checkEntries, checkMtime, manifestJson, sumsFor, syncDir, writeTarFile, type EntrySource, type WriteBundleOptions, type WriteBundleResult } from './writer.ts';

export interface WriteVolumesOptions extends WriteBundleOptions {
  /** No volume file may be larger (bytes). */
  limit: number;
  /** Progress of the first pass, which hashes the pieces of entries larger than a volume. */
  onHashing?(bytes: number, total: number): void;
}

const BLOCK = 512;
const roundUp = (n: number): number => Math.ceil(n / BLOCK) * BLOCK;
/** bundle.json.sig is base64 DER plus a newline: under 100 bytes, one block. */
const SIGNATURE_ROOM = BLOCK;
const ZERO_HASH = '0'.repeat(64);
/** bundle.json's room grows until the plan's own bundle.json fits; a handful of rounds at most. */
const MAX_ROUNDS = 32;

/** Where each piece starts, by entry index: its sha256. */
type PieceHashes = (entry: number, offset: number) => string;

export async function writeVolumes(opts: WriteVolumesOptions): Promise<WriteBundleResult> {
  checkMtime(opts.mtime);
  checkEntries(opts.entries);
  const data: BundleEntry[] = opts.entries.map((e) => ({ path: e.path, size: e.size, sha256: e.sha256 }));
  const base = buildManifest(opts, data);
  const signature = opts.signingKey ? tarHeaderBytes(SIGNATURE_PATH) + SIGNATURE_ROOM : 0;

  // bundle.json lists the plan, and its size decides how much room the plan has: grow its room
  // until the plan made with that room describes itself in no more. Hashes are placeholders of
  // the same length, so the sizes are already final.
  let room = roundUp(manifestJson(base).length);
  let plan: PlannedVolume[] | undefined;
  for (let round = 0; plan === undefined; round++) {
    if (round === MAX_ROUNDS) throw new CodedError('BAD_USAGE', `--split-size ${opts.limit} bytes leaves too little room next to bundle.json (${room} bytes); give a larger size`);
    const candidate = planVolumes({ limit: opts.limit, entries: data, headBytes: tarHeaderBytes(MANIFEST_PATH) + room + signature });
    const need = roundUp(manifestJson(splitManifest(base, opts.limit, candidate, data, () => ZERO_HASH)).length);
    if (need <= room) plan = candidate;
    else room = need;
  }

  const hashes = await hashPieces(plan, opts.entries, opts.onHashing);
  const manifest = splitManifest(base, opts.limit, plan, data, hashes);
  const json = manifestJson(manifest);
  const sig = opts.signingKey ? Buffer.from(signManifest(json, opts.signingKey)) : undefined;
  if (sig && sig.length > SIGNATURE_ROOM) throw new OciError('LAYOUT', `bundle.json.sig is ${sig.length} bytes, more than the ${SIGNATURE_ROOM} planned`);

  const files = plan.map((_, k) => volumeFile(opts.output, k + 1, plan.length));
  const written: { path: string; size: number; sha256: string }[] = [];
  const partials: string[] = [];
  const renamed: string[] = [];
  try {
    for (const [k, v] of plan.entries()) {
      const listing = manifest.volumes.list[k]!.entries;
      const sums = sumsFor(listing.slice(1));
      const head = [{ path: MANIFEST_PATH, bytes: json }, ...(sig ? [{ path: SIGNATURE_PATH, bytes: sig }] : []), { path: SUMS_PATH, bytes: sums.bytes }];
      const sources = v.entries.map((p, i) => (p.offset === undefined ? opts.entries[p.entry]! : pieceSource(opts.entries[p.entry]!, listing[i + 1]!)));
      const partial = `${files[k]!}.partial`;
      partials.push(partial);
      const tar = await writeTarFile(partial, head, sources, opts.mtime, opts.onBytes);
      // The plan reserved `room` for bundle.json; the rest of that room is simply not used.
      const planned = v.bytes - room + roundUp(json.length);
      if (tar.size !== planned || tar.size > opts.limit) {
        throw new OciError('LAYOUT', `volume ${k + 1} came out at ${tar.size} bytes, but ${planned} were planned (limit ${opts.limit}); this is a bug`);
      }
      written.push({ path: files[k]!, size: tar.size, sha256: tar.sha256 });
    }
    // Only a complete set appears under the final names.
    for (const [k, partial] of partials.entries()) {
      await rename(partial, files[k]!);
      renamed.push(files[k]!);
    }
  } catch (err) {
    for (const p of [...partials, ...renamed]) await rm(p, { force: true });
    throw err;
  }
  await syncDir(dirname(opts.output));
  // No one file is the bundle: bundle.json, which every volume carries, names it.
  const manifestSha256 = manifestSha256Of(json);
  return {
    upToDate: false,
    path: files[0]!,
    size: written.reduce((n, w) => n + w.size, 0),
    sha256: manifestSha256,
    manifest,
    manifestSha256,
    volumes: written,
  };
}

/** The split bundle.json: the single-file manifest's records, the data entries whole, and the volumes. */
function splitManifest(base: BundleManifest, limit: number, plan: PlannedVolume[], data: BundleEntry[], hashes: PieceHashes): SplitManifest {
  const list = plan.map((v) => {
    const stored: VolumeEntry[] = v.entries.map((p) => {
      const e = data[p.entry]!;
      return p.offset === undefined ? { path: e.path, size: e.size, sha256: e.sha256 } : { path: p.path, size: p.size, sha256: hashes(p.entry, p.offset), piece: { of: e.path, offset: p.offset } };
    });
    return { entries: [sumsFor(stored).entry, ...stored] };
  });
  const parsed = splitManifestSchema.safeParse({ ...base, formatVersion: SPLIT_FORMAT_VERSION, volumes: { limit, list } });
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new OciError('LAYOUT', `bundle.json would be invalid at ${issue?.path.join('.') || '(top)'}: ${issue?.message ?? 'invalid'}`);
  }
  return parsed.data;
}

/**
 * First pass: the sha256 of every piece, read from its entry's source; the pieces of each entry
 * (in order) must also hash to the entry's declared sha256, since only the pieces are checked
 * again when written.
 */
async function hashPieces(plan: PlannedVolume[], entries: readonly EntrySource[], onHashing?: (bytes: number, total: number) => void): Promise<PieceHashes> {
  const pieces = plan.flatMap((v) => v.entries.filter((p) => p.offset !== undefined));
  const total = pieces.reduce((n, p) => n + p.size, 0);
  const out = new Map<string, string>();
  const wholes = new Map<number, Hash>();
  let done = 0;
  for (const p of pieces) {
    const e = entries[p.entry]!;
    const offset = p.offset!;
    const hash = createHash('sha256');
    const whole = wholes.get(p.entry) ?? wholes.set(p.entry, createHash('sha256')).get(p.entry)!;
    let n = 0;
    for await (const chunk of take(await e.open(offset), p.size)) {
      hash.update(chunk);
      whole.update(chunk);
      n += chunk.length;
      onHashing?.((done += chunk.length), total);
    }
    if (n !== p.size) throw new OciError('SIZE_MISMATCH', `${e.path}: ended after ${offset + n} of its ${e.size} bytes; its source changed since it was listed`);
    out.set(`${p.entry}:${offset}`, hash.digest('hex'));
    if (offset + n === e.size) {
      const got = whole.digest('hex');
      if (got !== e.sha256) throw new OciError('DIGEST_MISMATCH', `${e.path}: sha256 ${got}, declared ${e.sha256}; its source changed since it was listed`);
    }
  }
  return (entry, offset) => out.get(`${entry}:${offset}`)!;
}

/** A piece of `whole` as an entry of its own: its bytes are checked against the piece's sha256 as they are written. */
function pieceSource(whole: EntrySource, piece: VolumeEntry): EntrySource {
  const start = piece.piece!.offset;
  return {
    path: piece.path,
    size: piece.size,
    sha256: piece.sha256,
    open: async (at = 0) => Readable.from(take(await whole.open(start + at), piece.size - at), { objectMode: false }),
    ...(whole.file ? { file: { path: whole.file.path, offset: whole.file.offset + start, endsFile: false } } : {}),
  };
}

/** The first `n` bytes of `src`; the source is closed after them. */
async function* take(src: Readable, n: number): AsyncGenerator<Buffer> {
  let left = n;
  try {
    for await (const chunk of src as AsyncIterable<Buffer>) {
      if (left <= 0) break;
      const c = chunk.length > left ? chunk.subarray(0, left) : chunk;
      left -= c.length;
      yield c;
      if (left <= 0) break;
    }
  } finally {
    src.destroy();
  }
}
