/**
 * Reading another bundle's signed bundle.json without its content: the base of a delta, and the
 * two sides of `diff`. One function decides what a path is (a bundle, or a bundle.json with its
 * bundle.json.sig beside it), so another form (a volume of a split set) is one more branch here.
 */
import type { KeyObject } from 'node:crypto';
import { open, readFile, stat } from 'node:fs/promises';
import { readAt } from '../tar/index.ts';
import { manifestSha256Of, SIGNATURE_PATH, type AnyManifest } from './manifest.ts';
import { BundleError, MAX_MANIFEST_BYTES, openBundle, parseManifest } from './reader.ts';
import { checkManifestSignature } from './verify.ts';

export interface SignedManifest {
  /** The file it was read from. */
  source: string;
  manifest: AnyManifest;
  /** The exact bytes the signature covers. */
  manifestBytes: Buffer;
  manifestSha256: string;
  /** bundle.json.sig as text; undefined for an unsigned bundle. */
  signature: string | undefined;
  /** The key that verified the signature; null when no key was given (nothing is proven then). */
  verifiedBy: string | null;
}

/** A base64 DER P-256 signature is about 100 bytes (as reader.ts allows in a bundle). */
const MAX_SIGNATURE_BYTES = 4096;

/**
 * Opens `path` (a bundle, or a bundle.json with bundle.json.sig beside it) and, with `publicKey`,
 * checks the signature before returning anything. Reads bundle.json and the tar's headers only.
 */
export async function openSignedManifest(path: string, publicKey?: KeyObject): Promise<SignedManifest> {
  let manifestBytes: Buffer;
  let manifest: AnyManifest;
  let signature: string | undefined;
  if (await looksLikeJson(path)) {
    manifestBytes = await readCapped(path, MAX_MANIFEST_BYTES, 'bundle.json');
    manifest = parseManifest(manifestBytes);
    const sig = `${path}.sig`;
    signature = (await stat(sig).then((s) => s.isFile(), () => false)) ? (await readCapped(sig, MAX_SIGNATURE_BYTES, SIGNATURE_PATH)).toString('latin1') : undefined;
  } else {
    const b = await openBundle(path);
    ({ manifestBytes, manifest, signature } = b);
  }
  const verifiedBy = publicKey ? checkManifestSignature(manifestBytes, signature, manifest, publicKey) : null;
  return { source: path, manifest, manifestBytes, manifestSha256: manifestSha256Of(manifestBytes), signature, verifiedBy };
}

/** A bundle starts with a tar header ("bundle.json"); a bundle.json file with `{`. */
async function looksLikeJson(path: string): Promise<boolean> {
  const fh = await open(path, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new BundleError('IO', `cannot read ${path}: ${err.code ?? err.message}`, { cause: err });
  });
  try {
    const head = (await readAt(fh, 0, 64)).toString('latin1').trimStart();
    return head.startsWith('{');
  } finally {
    await fh.close();
  }
}

async function readCapped(path: string, cap: number, what: string): Promise<Buffer> {
  const st = await stat(path).catch((err: NodeJS.ErrnoException) => {
    throw new BundleError('IO', `cannot read ${path}: ${err.code ?? err.message}`, { cause: err });
  });
  if (!st.isFile()) throw new BundleError('IO', `${path} is not a regular file`);
  if (st.size > cap) throw new BundleError('VERIFY', `${path} is ${st.size} bytes, more than the ${cap} a ${what} may have`);
  return readFile(path);
}
