/**
 * Verifies an opened bundle (DESIGN.md §3): the signature of bundle.json first, since nothing
 * else in it means anything until then; then what bundle.json promises against what the tar
 * holds; then every listed entry hashed as it streams from the file by offset.
 *
 * A split bundle is checked volume by volume, each tar entry (pieces included) against the sha256
 * bundle.json lists for it; with the whole set, the pieces of an entry are also hashed together as
 * one. A volume opened alone is checked just as far as it goes.
 */
import { createHash, type Hash, type KeyObject } from 'node:crypto';
import { DirectReader } from '../util/direct-io.ts';
import { parseManifest as parseOciManifest } from '../oci/graph.ts';
import { REF_NAME, parseIndexJson } from '../oci/layout/index-json.ts';
import { LayoutReader } from '../oci/layout/reader.ts';
import type { Descriptor } from '../oci/types.ts';
import { reliedDigests } from './delta.ts';
import { isOciError } from '../oci/errors.ts';
import { keyFingerprint } from './keys.ts';
import { SIGNATURE_PATH, type AnyManifest, type VolumeEntry } from './manifest.ts';
import { BundleError, type BundleTar, type OpenedBundle } from './reader.ts';
import { verifyManifest } from './sign.ts';
import { RangeReader } from '../util/read-range.ts';
import type { EntryHashes } from '../tar/hash-thread.ts';

export interface VerifyOptions {
  /** Absent: the caller chose to skip the signature (--insecure-skip-signature). */
  publicKey?: KeyObject;
  /** Progress: `bytes` of `path` hashed so far, of its `total`. */
  onEntry?(path: string, bytes: number, total: number): void;
  /**
   * Hash only the entries (or pieces of entries) this accepts; the rest are left unread. For
   * install, which reads only what it will send: their hashes are still signed in bundle.json.
   */
  only?(path: string): boolean;
  /**
   * Read around the page cache (O_DIRECT) where the file system allows: `verify` of a bundle just
   * copied in does not fill the cache with it, which on the test VM cost more system CPU than the
   * hashing (4 GiB uncached: 7.7 s buffered, of it 5.9 s in the kernel). install reads through the
   * cache: it sends the same bytes right after, and a second thread hashes the file beside it.
   */
  aroundPageCache?: boolean;
  /**
   * A hashing thread to share the entries with: it and this thread each take the next whole entry
   * in file order, so the check runs on two cores (install, whose servers wait for it). Pieces of
   * split entries stay on this thread, which joins their hashes in order. The caller closes it.
   */
  thread?: EntryHashes;
}

export interface VerifyResult {
  /** The verified signer's key; without a public key, what bundle.json claims (or null). */
  fingerprint: string | null;
  /** Tar entries whose size and sha256 were checked against bundle.json (SHA256SUMS and the data). */
  entries: number;
  bytes: number;
  /** Entries left unread because `only` refused them. */
  skipped: number;
  /** A split bundle: its number of volumes, and those checked (all, or the one opened alone). */
  volumes?: { count: number; checked: number[] };
}

const bad = (message: string): BundleError => new BundleError('VERIFY', message);
const short = (hex: string): string => `${hex.slice(0, 12)}…`;

export async function verifyBundle(b: OpenedBundle, opts: VerifyOptions = {}): Promise<VerifyResult> {
  const fingerprint = opts.publicKey ? checkSignature(b, opts.publicKey) : (b.manifest.signer?.fingerprint ?? null);
  const relied = reliedDigests(b.manifest);
  checkPromises(b, relied);
  let bytes = 0;
  let entries = 0;
  let skipped = 0;
  const sizes = new Map(b.manifest.entries.map((e) => [e.path, e]));
  /** Running hashes of entries in pieces, fed piece by piece in volume order. */
  const joined = new Map<string, Hash>();
  for (const t of b.tars) {
    const where = t.label ? `${t.label}: ` : '';
    // One open file and two reused buffers for all of this tar's entries.
    const file = await DirectReader.open(t.file, opts.aroundPageCache ?? false).catch((err: unknown) => {
      throw new BundleError('IO', `cannot open ${t.file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
    });
    const reader = new RangeReader(file);
    const listed = t.listing.filter((e) => !opts.only || opts.only(e.piece?.of ?? e.path));
    skipped += t.listing.length - listed.length;
    const pieces = listed.filter((e) => e.piece);
    const wholes = listed.filter((e) => !e.piece);
    let next = 0;
    let failed = false;
    const done = (e: VolumeEntry): void => {
      bytes += e.size;
      entries++;
    };
    // Each lane takes the next whole entry until none is left or the other lane failed.
    const lane = async (hash: (e: VolumeEntry) => Promise<void>): Promise<void> => {
      try {
        while (!failed && next < wholes.length) {
          const e = wholes[next++]!;
          await hash(e);
          done(e);
        }
      } catch (err) {
        failed = true;
        throw err;
      }
    };
    const here = (e: VolumeEntry): Promise<void> => hashEntry(t, reader, e.path, e.size, e.sha256, where, opts.onEntry);
    try {
      for (const e of pieces) {
        const whole = b.complete ? sizes.get(e.piece!.of) : undefined;
        const join = whole && (joined.get(whole.path) ?? joined.set(whole.path, createHash('sha256')).get(whole.path)!);
        await hashEntry(t, reader, e.path, e.size, e.sha256, where, opts.onEntry, join);
        if (whole && join && e.piece!.offset + e.size === whole.size) {
          const got = join.digest('hex');
          if (got !== whole.sha256) throw bad(`bundle.json contradicts itself: the pieces of ${whole.path} verify one by one but join to sha256 ${got}, not the ${whole.sha256} it lists`);
        }
        done(e);
      }
      const thread = opts.thread;
      const results = await Promise.allSettled([lane(here), ...(thread ? [lane((e) => hashOnThread(thread, t, e.path, e.size, e.sha256, where, opts.onEntry))] : [])]);
      const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failure) throw failure.reason;
    } finally {
      await file.close();
      reader.release();
    }
  }
  if (b.complete) {
    await checkImageIndex(b, relied);
    await checkGraphs(b, relied);
  }
  const count = b.volumes?.list.length;
  return { fingerprint, entries, bytes, skipped, ...(count ? { volumes: { count, checked: b.tars.map((t) => t.volume!) } } : {}) };
}

/** Returns the key's fingerprint once bundle.json is proven to be signed by it. */
function checkSignature(b: OpenedBundle, key: KeyObject): string {
  return checkManifestSignature(b.manifestBytes, b.signature, b.manifest, key);
}

/**
 * The check behind every signature decision (a bundle, a delta's base, `diff`): `signature` must
 * verify `manifestBytes` with `key`, and bundle.json must name that key as its signer.
 */
export function checkManifestSignature(manifestBytes: Buffer, signature: string | undefined, manifest: AnyManifest, key: KeyObject): string {
  const want = keyFingerprint(key);
  if (signature === undefined) throw bad(`the bundle is unsigned (it has no ${SIGNATURE_PATH}), but it must be signed by ${want}`);
  const claimed = manifest.signer?.fingerprint;
  if (!verifyManifest(manifestBytes, signature, key)) {
    // bundle.json's signer claim is not trusted yet; it only tells "another key" from "damaged".
    if (claimed !== undefined && claimed !== want) throw bad(`bundle.json is signed by ${claimed}, not by the given key ${want}`);
    throw bad(`${SIGNATURE_PATH} does not verify bundle.json with the key ${want}: bundle.json or its signature was changed or damaged`);
  }
  // Signed by our key but naming another (or none): not what our writer makes.
  if (claimed !== want) throw bad(`bundle.json is signed by the given key ${want} but names ${claimed ?? 'no signer'} as its signer`);
  return want;
}

/** What bundle.json says the bundle holds must be among its entries, with the same hashes. */
function checkPromises(b: OpenedBundle, relied: Set<string>): void {
  const m = b.manifest;
  const entries = new Map(m.entries.map((e) => [e.path, e]));
  for (const ref of [m.release.archive, ...m.artifacts, ...(m.installer ? [m.installer] : [])]) {
    const e = entries.get(ref.path);
    if (!e) throw bad(`bundle.json names ${ref.path}, but the bundle has no such entry`);
    if (e.size !== ref.size || e.sha256 !== ref.sha256) throw bad(`bundle.json describes ${ref.path} twice, differently (${ref.size} bytes, sha256 ${short(ref.sha256)} vs ${e.size} bytes, sha256 ${short(e.sha256)})`);
  }
  for (const img of m.images) {
    for (const digest of [img.digest, ...img.platforms.map((p) => p.digest)]) {
      const path = `images/blobs/sha256/${digest.slice('sha256:'.length)}`;
      if (!entries.has(path) && !relied.has(digest)) throw bad(`bundle.json lists the image ${img.name}:${img.tag} with ${digest}, but the bundle has no ${path}`);
    }
  }
}

/**
 * Hashes one tar entry, read from its offset; never holds more than two reads in memory. `join`
 * also gets the bytes, for an entry in pieces. `where` names the volume in messages.
 */
async function hashEntry(t: BundleTar, reader: RangeReader, path: string, size: number, sha256: string, where: string, onEntry: VerifyOptions['onEntry'], join?: Hash): Promise<void> {
  const hash = createHash('sha256');
  let n = 0;
  onEntry?.(path, 0, size);
  const at = extentOf(t, path, where);
  try {
    await reader.read(at.offset, at.size, (chunk) => {
      n += chunk.length;
      hash.update(chunk);
      join?.update(chunk);
      onEntry?.(path, n, size);
    });
  } catch (err) {
    throw new BundleError('IO', `reading ${path} from ${t.file} failed: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
  // Other than listed: the file shrank after the scan, or the tar entry is not the one listed.
  if (n !== size) throw bad(`${where}${path}: only ${n} of its ${size} bytes could be read (the bundle file was truncated or changed)`);
  checkSha256(where, path, hash.digest('hex'), sha256);
}

/** Where `path`'s bytes are in the tar; every entry bundle.json lists must have some. */
function extentOf(t: BundleTar, path: string, where: string): { offset: number; size: number } {
  const at = t.extent(path);
  if (!at) throw bad(`${where}${path} is listed in bundle.json but not in the tar`);
  return at;
}

function checkSha256(where: string, path: string, got: string, want: string): void {
  if (got !== want) throw bad(`${where}${path} is damaged or changed: its sha256 is ${got}, bundle.json says ${want}`);
}

/** hashEntry's check on a hashing thread, which reads the entry from the file itself. */
async function hashOnThread(thread: EntryHashes, t: BundleTar, path: string, size: number, sha256: string, where: string, onEntry: VerifyOptions['onEntry']): Promise<void> {
  onEntry?.(path, 0, size);
  const at = extentOf(t, path, where);
  let got: string;
  try {
    got = await thread.open({ path: t.file, start: at.offset, end: at.offset + at.size }).digest();
  } catch (err) {
    throw new BundleError('IO', `reading ${path} from ${t.file} failed: ${(err as Error).message}`, { cause: err });
  }
  checkSha256(where, path, got, sha256);
  onEntry?.(path, size, size);
}

/** Each image must be in images/index.json under its ref with its digest, or the installer cannot find it. */
async function checkImageIndex(b: OpenedBundle, relied: Set<string>): Promise<void> {
  if (b.manifest.images.length === 0) return;
  if (!b.entry('images/index.json')) throw bad('bundle.json lists images, but the bundle has no images/index.json');
  let index;
  try {
    index = parseIndexJson(await b.layoutFiles('images/').read('index.json'), 'images');
  } catch (err) {
    if (isOciError(err)) throw bad(err.message);
    throw err;
  }
  for (const img of b.manifest.images) {
    const found = index.manifests.find((d) => d.annotations?.[REF_NAME] === img.ref);
    if (!found) throw bad(`bundle.json lists the image ${img.ref}, but images/index.json has no entry for it`);
    if (found.digest !== img.digest) throw bad(`images/index.json names ${found.digest} for ${img.ref}, but bundle.json says ${img.digest}`);
  }
  // Nor may the layout name content the bundle does not carry (a delta: nor rely on).
  for (const d of index.manifests) {
    const hex = /^sha256:([a-f0-9]{64})$/.exec(d.digest)?.[1];
    if (!hex || (!b.entry(`images/blobs/sha256/${hex}`) && !relied.has(d.digest))) throw bad(`images/index.json names ${d.digest}, which is not in the bundle`);
  }
}

/**
 * Every manifest the bundle carries may name only content it carries or (a delta) relies on, so
 * an install never stops half-way for want of a blob. A relied-on manifest's subtree is the
 * target's: install checks the manifest is there, and a registry holds a manifest only with its subtree.
 */
async function checkGraphs(b: OpenedBundle, relied: Set<string>): Promise<void> {
  const layout = new LayoutReader(b.layoutFiles('images/'));
  const seen = new Set<string>();
  const carried = (digest: string): boolean => {
    const hex = /^sha256:([a-f0-9]{64})$/.exec(digest)?.[1];
    return hex !== undefined && b.entry(`images/blobs/sha256/${hex}`) !== undefined;
  };
  const need = (d: Descriptor, from: string): boolean => {
    if (carried(d.digest)) return true;
    if (relied.has(d.digest)) return false;
    throw bad(`${from} names ${d.digest}, which the bundle neither carries nor relies on`);
  };
  const visit = async (d: Descriptor, from: string): Promise<void> => {
    if (seen.has(d.digest)) return;
    seen.add(d.digest);
    if (!need(d, from)) return;
    let doc;
    try {
      doc = parseOciManifest(await layout.fetchManifest(d), d);
    } catch (err) {
      if (isOciError(err)) throw bad(`manifest ${d.digest}: ${err.message}`);
      throw err;
    }
    for (const child of doc.manifests ?? []) await visit(child, `manifest ${d.digest}`);
    for (const blob of [...(doc.config ? [doc.config] : []), ...(doc.layers ?? [])]) need(blob, `manifest ${d.digest}`);
  };
  for (const img of b.manifest.images) await visit({ mediaType: img.mediaType, digest: img.digest, size: rootSize(b, img.digest) }, `the image ${img.ref}`);
}

/** A carried root's size is its entry's (its bytes are hashed against bundle.json already). */
function rootSize(b: OpenedBundle, digest: string): number {
  const hex = /^sha256:([a-f0-9]{64})$/.exec(digest)?.[1];
  return (hex && b.entry(`images/blobs/sha256/${hex}`)?.size) || 0;
}
