/**
 * Verifies an opened bundle (DESIGN.md §3): the signature of bundle.json first, since nothing
 * else in it means anything until then; then what bundle.json promises against what the tar
 * holds; then every listed entry hashed as it streams from the file by offset.
 */
import { createHash, type KeyObject } from 'node:crypto';
import { REF_NAME, parseIndexJson } from '../oci/layout/index-json.ts';
import { isOciError } from '../oci/errors.ts';
import { keyFingerprint } from './keys.ts';
import { SIGNATURE_PATH } from './manifest.ts';
import { BundleError, type OpenedBundle } from './reader.ts';
import { verifyManifest } from './sign.ts';

export interface VerifyOptions {
  /** Absent: the caller chose to skip the signature (--insecure-skip-signature). */
  publicKey?: KeyObject;
  /** Progress: `bytes` of `path` hashed so far, of its `total`. */
  onEntry?(path: string, bytes: number, total: number): void;
}

export interface VerifyResult {
  /** The verified signer's key; without a public key, what bundle.json claims (or null). */
  fingerprint: string | null;
  /** Entries whose size and sha256 were checked against bundle.json (SHA256SUMS and the data). */
  entries: number;
  bytes: number;
}

const bad = (message: string): BundleError => new BundleError('VERIFY', message);
const short = (hex: string): string => `${hex.slice(0, 12)}…`;

export async function verifyBundle(b: OpenedBundle, opts: VerifyOptions = {}): Promise<VerifyResult> {
  const fingerprint = opts.publicKey ? checkSignature(b, opts.publicKey) : (b.manifest.signer?.fingerprint ?? null);
  checkPromises(b);
  let bytes = 0;
  for (const e of b.manifest.entries) {
    await hashEntry(b, e.path, e.size, e.sha256, opts.onEntry);
    bytes += e.size;
  }
  await checkImageIndex(b);
  return { fingerprint, entries: b.manifest.entries.length, bytes };
}

/** Returns the key's fingerprint once bundle.json is proven to be signed by it. */
function checkSignature(b: OpenedBundle, key: KeyObject): string {
  const want = keyFingerprint(key);
  if (b.signature === undefined) throw bad(`the bundle is unsigned (it has no ${SIGNATURE_PATH}), but it must be signed by ${want}`);
  const claimed = b.manifest.signer?.fingerprint;
  if (!verifyManifest(b.manifestBytes, b.signature, key)) {
    // bundle.json's signer claim is not trusted yet; it only tells "another key" from "damaged".
    if (claimed !== undefined && claimed !== want) throw bad(`bundle.json is signed by ${claimed}, not by the given key ${want}`);
    throw bad(`${SIGNATURE_PATH} does not verify bundle.json with the key ${want}: bundle.json or its signature was changed or damaged`);
  }
  // Signed by our key but naming another (or none): not what our writer makes.
  if (claimed !== want) throw bad(`bundle.json is signed by the given key ${want} but names ${claimed ?? 'no signer'} as its signer`);
  return want;
}

/** What bundle.json says the bundle holds must be among its entries, with the same hashes. */
function checkPromises(b: OpenedBundle): void {
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
      if (!entries.has(path)) throw bad(`bundle.json lists the image ${img.name}:${img.tag} with ${digest}, but the bundle has no ${path}`);
    }
  }
}

/** Streams one entry from its offset; never holds more than one read in memory. */
async function hashEntry(b: OpenedBundle, path: string, size: number, sha256: string, onEntry: VerifyOptions['onEntry']): Promise<void> {
  const hash = createHash('sha256');
  let n = 0;
  onEntry?.(path, 0, size);
  const stream = b.open(path);
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      n += chunk.length;
      hash.update(chunk);
      onEntry?.(path, n, size);
    }
  } catch (err) {
    throw new BundleError('IO', `reading ${path} from ${b.file} failed: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  } finally {
    stream.destroy();
  }
  // The stream stops at the entry's end, so fewer bytes means the file shrank after the scan.
  if (n !== size) throw bad(`${path}: only ${n} of its ${size} bytes could be read (the bundle file was truncated or changed)`);
  const got = hash.digest('hex');
  if (got !== sha256) throw bad(`${path} is damaged or changed: its sha256 is ${got}, bundle.json says ${sha256}`);
}

/** Each image must be in images/index.json under its ref with its digest, or the installer cannot find it. */
async function checkImageIndex(b: OpenedBundle): Promise<void> {
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
  // Nor may the layout name content the bundle does not carry: an OCI layout must be whole.
  for (const d of index.manifests) {
    const hex = /^sha256:([a-f0-9]{64})$/.exec(d.digest)?.[1];
    if (!hex || !b.entry(`images/blobs/sha256/${hex}`)) throw bad(`images/index.json names ${d.digest}, which is not in the bundle`);
  }
}
