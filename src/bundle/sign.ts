/**
 * Signing bundle.json (DESIGN.md §3): ECDSA P-256 over SHA-256, DER signature, base64 in
 * bundle.json.sig, so `openssl dgst -sha256 -verify` and `cosign verify-blob --key` accept it.
 * Errors are one line and never quote key material or passphrases.
 */
import { createPrivateKey, createPublicKey, verify, type KeyObject } from 'node:crypto';
import { p256 } from '@noble/curves/nist.js';
import { readFile, stat } from 'node:fs/promises';
import { OciError } from '../oci/errors.ts';

export const SIGNATURE_ALGORITHM = 'ecdsa-p256-sha256';

/** A PEM key is a few hundred bytes; refusing big files keeps a mistyped path from being slurped. */
const MAX_KEY_FILE = 64 * 1024;

async function readKeyFile(file: string, what: string): Promise<string> {
  try {
    const st = await stat(file);
    if (!st.isFile()) throw new OciError('NOT_FOUND', `the ${what} ${file} is not a regular file`);
    if (st.size > MAX_KEY_FILE) throw new OciError('UNSUPPORTED', `the ${what} ${file} is ${st.size} bytes; a PEM key is far smaller`);
    return await readFile(file, 'utf8');
  } catch (err) {
    if (err instanceof OciError) throw err;
    throw new OciError('NOT_FOUND', `cannot read the ${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

/** P-256 only: the algorithm is fixed by the format, and a reader must not have to guess. */
function requireP256(key: KeyObject, what: string): KeyObject {
  const curve = key.asymmetricKeyDetails?.namedCurve;
  if (key.asymmetricKeyType !== 'ec' || curve !== 'prime256v1') {
    const found = key.asymmetricKeyType === 'ec' ? `EC ${curve ?? 'unknown curve'}` : (key.asymmetricKeyType ?? 'unknown').toUpperCase();
    throw new OciError('UNSUPPORTED', `${what} is a ${found} key; bundles are signed with ECDSA P-256 (make one with \`cartesia-airgap keys generate\`)`);
  }
  return key;
}

/**
 * A private signing key from a PEM file (PKCS#8, encrypted or not; SEC1 `EC PRIVATE KEY` is
 * also accepted as OpenSSL reads it). Refuses anything but P-256.
 */
export async function loadSigningKey(file: string, passphrase?: string): Promise<KeyObject> {
  const pem = await readKeyFile(file, 'signing key');
  const encrypted = /-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED/.test(pem);
  if (encrypted && !passphrase) throw new OciError('UNAUTHORIZED', `the signing key ${file} is encrypted; give its passphrase`);
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem', ...(passphrase ? { passphrase } : {}) });
  } catch {
    // OpenSSL's own messages are vague at best; say which case it is, and nothing more.
    throw encrypted
      ? new OciError('UNAUTHORIZED', `cannot decrypt the signing key ${file}: wrong passphrase`)
      : new OciError('UNSUPPORTED', `${file} is not a PEM private key`);
  }
  return requireP256(key, `the signing key ${file}`);
}

/** A public key (SPKI PEM, as `keys generate` writes `*.pub`); refuses anything but P-256. */
export async function loadPublicKey(file: string): Promise<KeyObject> {
  const pem = await readKeyFile(file, 'public key');
  let key: KeyObject;
  try {
    key = createPublicKey({ key: pem, format: 'pem' });
  } catch {
    throw new OciError('UNSUPPORTED', `${file} is not a PEM public key`);
  }
  if (key.type !== 'public') throw new OciError('UNSUPPORTED', `${file} holds a private key; give the public one`);
  return requireP256(key, `the public key ${file}`);
}

/**
 * The content of bundle.json.sig: base64 of the DER ECDSA P-256/SHA-256 signature plus a newline.
 * The nonce is derived from the key and the message (RFC 6979, @noble/curves) instead of drawn at
 * random as Node 24 does, so the same key and bundle.json always give the same signature and a
 * signed bundle stays byte-for-byte reproducible. Any ECDSA verifier (openssl, cosign) accepts it.
 */
export function signManifest(bytes: Uint8Array, key: KeyObject): string {
  if (key.type !== 'private') throw new OciError('UNSUPPORTED', 'signing needs a private key');
  requireP256(key, 'the signing key');
  const d = Buffer.from(key.export({ format: 'jwk' }).d!, 'base64url');
  const der = p256.sign(bytes, d, { prehash: true, format: 'der' });
  d.fill(0);
  return `${Buffer.from(der).toString('base64')}\n`;
}

/**
 * True when `sigFileContent` (base64 DER, surrounding whitespace allowed, as cosign writes it
 * without a newline) is a valid signature of `bytes`. A malformed signature is false; an unusable
 * key throws, since that is a setup error rather than a bad bundle.
 */
export function verifyManifest(bytes: Uint8Array, sigFileContent: string | Uint8Array, publicKey: string | KeyObject): boolean {
  let key: KeyObject;
  try {
    key = typeof publicKey === 'string' ? createPublicKey(publicKey) : publicKey.type === 'private' ? createPublicKey(publicKey) : publicKey;
  } catch {
    throw new OciError('UNSUPPORTED', 'the public key is not a PEM public key');
  }
  requireP256(key, 'the public key');
  const text = (typeof sigFileContent === 'string' ? sigFileContent : Buffer.from(sigFileContent).toString('latin1')).trim();
  // Buffer.from(…, 'base64') skips junk silently; insist on canonical base64 instead.
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(text) || text.length % 4 !== 0) return false;
  const der = Buffer.from(text, 'base64');
  try {
    return verify('sha256', bytes, { key, dsaEncoding: 'der' }, der);
  } catch {
    return false;
  }
}
