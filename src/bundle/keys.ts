import { createHash, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';

/** Bundle signing keys: ECDSA P-256 (verifiable by openssl and cosign, DESIGN.md §3). */
export interface SigningKeyPair {
  /** PKCS#8 PEM, encrypted with AES-256-CBC when a passphrase is given. */
  privateKeyPem: string;
  /** SPKI PEM: what `openssl dgst -verify` and `cosign verify-blob --key` take. */
  publicKeyPem: string;
  fingerprint: string;
}

export function generateSigningKeyPair(passphrase?: string): SigningKeyPair {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const privateKeyPem = privateKey.export({
    type: 'pkcs8',
    format: 'pem',
    ...(passphrase ? { cipher: 'aes-256-cbc', passphrase } : {}),
  }) as string;
  const publicKeyPem = publicKey.export({ type: 'spki', format: 'pem' }) as string;
  return { privateKeyPem, publicKeyPem, fingerprint: keyFingerprint(publicKey) };
}

/**
 * `SHA256:<hex>` of the DER SubjectPublicKeyInfo, so a user can reproduce it with
 * `openssl pkey -pubin -in KEY.pub -outform DER | sha256sum`.
 */
export function keyFingerprint(key: KeyObject | string): string {
  const pub = typeof key === 'string' ? createPublicKey(key) : key.type === 'private' ? createPublicKey(key) : key;
  const der = pub.export({ type: 'spki', format: 'der' });
  return `SHA256:${createHash('sha256').update(der).digest('hex')}`;
}
