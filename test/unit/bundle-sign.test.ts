import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { generateSigningKeyPair, keyFingerprint } from '../../src/bundle/keys.ts';
import { loadPublicKey, loadSigningKey, signManifest, verifyManifest } from '../../src/bundle/sign.ts';
import { isOciError } from '../../src/oci/errors.ts';
import { run } from '../testbed/run.ts';
import { rejection, scratchDir } from './helpers.ts';

const execFileP = promisify(execFile);
const tmp = () => scratchDir('airgap-sign-');
const manifestBytes = Buffer.from('{\n  "formatVersion": 1,\n  "release": "2025.11.18"\n}\n');

/** openssl's verdict on `data` with the base64 signature file content `sig`: 'Verified OK' or its failure text. */
async function opensslVerify(dir: string, pubPem: string, data: Uint8Array, sig: string): Promise<string> {
  await writeFile(join(dir, 'pub.pem'), pubPem);
  await writeFile(join(dir, 'bundle.json'), data);
  await writeFile(join(dir, 'sig.der'), Buffer.from(sig, 'base64'));
  const args = ['dgst', '-sha256', '-verify', join(dir, 'pub.pem'), '-signature', join(dir, 'sig.der'), join(dir, 'bundle.json')];
  // openssl reports a bad signature on stdout with exit status 1.
  return execFileP('openssl', args).then(
    ({ stdout }) => stdout.trim(),
    (err: { stdout?: string; message: string }) => `exit≠0: ${err.stdout?.trim() || err.message}`,
  );
}

describe('bundle signing', () => {
  it('signs so that openssl verifies, and a one-byte change fails both openssl and verifyManifest', async () => {
    const dir = await tmp();
    const pair = generateSigningKeyPair();
    await writeFile(join(dir, 'k.key'), pair.privateKeyPem);
    const key = await loadSigningKey(join(dir, 'k.key'));
    const sig = signManifest(manifestBytes, key);
    expect(sig).toMatch(/^[A-Za-z0-9+/]+={0,2}\n$/);
    expect(await opensslVerify(dir, pair.publicKeyPem, manifestBytes, sig)).toBe('Verified OK');
    expect(verifyManifest(manifestBytes, sig, pair.publicKeyPem)).toBe(true);

    const tampered = Buffer.from(manifestBytes);
    tampered.writeUInt8(tampered.readUInt8(10) ^ 0x01, 10);
    expect(await opensslVerify(dir, pair.publicKeyPem, tampered, sig)).toBe('exit≠0: Verification failure');
    expect(verifyManifest(tampered, sig, pair.publicKeyPem)).toBe(false);
    expect(verifyManifest(manifestBytes, sig, generateSigningKeyPair().publicKeyPem)).toBe(false);
    expect(keyFingerprint(key)).toBe(pair.fingerprint);
  });

  it('signs deterministically (RFC 6979): the same key and bytes give the same signature, so signed bundles reproduce', async () => {
    const pair = generateSigningKeyPair();
    const dir = await scratchDir('bundle-sign-det-');
    const keyFile = join(dir, 'k.pem');
    await writeFile(keyFile, pair.privateKeyPem);
    const key = await loadSigningKey(keyFile);
    const msg = Buffer.from('{"formatVersion":1}\n');
    const first = signManifest(msg, key);
    expect(signManifest(msg, key)).toBe(first);
    expect(signManifest(Buffer.from('{"formatVersion":2}\n'), key)).not.toBe(first);
    expect(verifyManifest(msg, first, pair.publicKeyPem)).toBe(true);
  });

  it('interoperates with a key made by openssl: our signature verifies there, theirs verifies here, same fingerprint', async () => {
    const dir = await tmp();
    await run('openssl', ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', join(dir, 'sec1.pem')]);
    await run('openssl', ['pkcs8', '-topk8', '-nocrypt', '-in', join(dir, 'sec1.pem'), '-out', join(dir, 'k.key')]);
    await run('openssl', ['pkey', '-in', join(dir, 'k.key'), '-pubout', '-out', join(dir, 'k.pub')]);
    const pubPem = await readFile(join(dir, 'k.pub'), 'utf8');

    const key = await loadSigningKey(join(dir, 'k.key'));
    expect(await opensslVerify(dir, pubPem, manifestBytes, signManifest(manifestBytes, key))).toBe('Verified OK');

    await writeFile(join(dir, 'm'), manifestBytes);
    await run('openssl', ['dgst', '-sha256', '-sign', join(dir, 'k.key'), '-out', join(dir, 'm.sig'), join(dir, 'm')]);
    const theirs = (await readFile(join(dir, 'm.sig'))).toString('base64'); // no newline, as cosign writes it
    expect(verifyManifest(manifestBytes, theirs, await loadPublicKey(join(dir, 'k.pub')))).toBe(true);

    await run('openssl', ['pkey', '-pubin', '-in', join(dir, 'k.pub'), '-outform', 'DER', '-out', join(dir, 'k.der')]);
    const expected = (await run('sha256sum', [join(dir, 'k.der')])).split(' ')[0];
    expect(keyFingerprint(key)).toBe(`SHA256:${expected}`);
  });

  it('loads an encrypted key with its passphrase; a wrong or missing one is a one-line error without key material', async () => {
    const dir = await tmp();
    const secret = 'correct horse battery staple';
    const pair = generateSigningKeyPair(secret);
    await writeFile(join(dir, 'enc.key'), pair.privateKeyPem);
    const key = await loadSigningKey(join(dir, 'enc.key'), secret);
    expect(await opensslVerify(dir, pair.publicKeyPem, manifestBytes, signManifest(manifestBytes, key))).toBe('Verified OK');

    for (const pass of ['wrong passphrase', undefined]) {
      const err = await rejection(loadSigningKey(join(dir, 'enc.key'), pass));
      expect(isOciError(err, 'UNAUTHORIZED')).toBe(true);
      expect(err.message).toContain('enc.key');
      expect(err.message).toMatch(pass ? /wrong passphrase/ : /is encrypted; give its passphrase/);
      expect(err.message).not.toContain('\n');
      expect(err.message).not.toMatch(/BEGIN|PRIVATE KEY-----/);
      expect(err.message).not.toContain(secret);
      expect(err.message).not.toContain(pair.privateKeyPem.split('\n')[1]!.slice(0, 16));
    }
  });

  it('refuses RSA and non-P-256 EC keys, private or public', async () => {
    const dir = await tmp();
    await run('openssl', ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', join(dir, 'rsa.key')]);
    await run('openssl', ['pkey', '-in', join(dir, 'rsa.key'), '-pubout', '-out', join(dir, 'rsa.pub')]);
    await run('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-384', '-out', join(dir, 'p384.key')]);

    const rsa = await rejection(loadSigningKey(join(dir, 'rsa.key')));
    expect(isOciError(rsa, 'UNSUPPORTED')).toBe(true);
    expect(rsa.message).toMatch(/rsa\.key is a RSA key; bundles are signed with ECDSA P-256/);
    expect((await rejection(loadPublicKey(join(dir, 'rsa.pub')))).message).toMatch(/is a RSA key/);
    expect((await rejection(loadSigningKey(join(dir, 'p384.key')))).message).toMatch(/is a EC secp384r1 key/);
    const rsaPub = await readFile(join(dir, 'rsa.pub'), 'utf8');
    expect(() => verifyManifest(manifestBytes, 'AAAA', rsaPub)).toThrow(/ECDSA P-256/);
  });

  it('reports an unreadable or non-key file in one line, and treats a malformed signature as not verified', async () => {
    const dir = await tmp();
    const missing = await rejection(loadSigningKey(join(dir, 'nope.key')));
    expect(missing.message).toBe(`cannot read the signing key ${join(dir, 'nope.key')}: ENOENT`);
    await writeFile(join(dir, 'junk.key'), 'not a key\n');
    expect((await rejection(loadSigningKey(join(dir, 'junk.key')))).message).toBe(`${join(dir, 'junk.key')} is not a PEM private key`);
    expect((await rejection(loadPublicKey(join(dir, 'junk.key')))).message).toBe(`${join(dir, 'junk.key')} is not a PEM public key`);

    const pair = generateSigningKeyPair();
    for (const bad of ['', 'not base64!', 'AAAA\n', Buffer.from('garbage').toString('base64')]) {
      expect(verifyManifest(manifestBytes, bad, pair.publicKeyPem)).toBe(false);
    }
  });
});
