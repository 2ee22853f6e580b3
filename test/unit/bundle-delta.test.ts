import { createHash, createPrivateKey, createPublicKey, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openSignedManifest, type SignedManifest } from '../../src/bundle/base.ts';
import { contentsOf, cutDelta, deltaSummary } from '../../src/bundle/delta.ts';
import { diffManifests } from '../../src/bundle/diff.ts';
import { generateSigningKeyPair } from '../../src/bundle/keys.ts';
import { bundleManifestSchema, type AnyManifest, type BundleArtifact, type BundleImage, type BundleManifest } from '../../src/bundle/manifest.ts';
import { BundleError, openBundle } from '../../src/bundle/reader.ts';
import { signManifest } from '../../src/bundle/sign.ts';
import { verifyBundle } from '../../src/bundle/verify.ts';
import { fileEntry, writeBundle, type EntrySource, type WriteBundleOptions } from '../../src/bundle/writer.ts';
import { rejection } from './helpers.ts';

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const digestOf = (b: Uint8Array): string => `sha256:${sha256(b)}`;
const MTIME = new Date('2025-12-02T00:00:00Z');
const BUCKET = 'cartesia-acme';
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const keyA = generateSigningKeyPair();
const keyB = generateSigningKeyPair();
let tmp = '';
let n = 0;

/** One single-platform image: manifest → config + layers. */
function image(name: string, layers: Buffer[]) {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', name }));
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digestOf(config), size: config.length }, layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: digestOf(l), size: l.length })) }));
  const record: BundleImage = { name, source: `example.com/${name}:t`, tag: 't', digest: digestOf(manifest), mediaType: OCI_MANIFEST, ref: `${name}:t`, platforms: [{ os: 'linux', architecture: 'amd64', digest: digestOf(manifest) }], size: manifest.length + config.length + layers.reduce((s, l) => s + l.length, 0) };
  const desc = (b: Buffer, mediaType = 'application/octet-stream') => ({ mediaType, digest: digestOf(b), size: b.length });
  return { record, blobs: [manifest, config, ...layers], graph: { name, manifests: [desc(manifest, OCI_MANIFEST)], blobs: [desc(config), ...layers.map((l) => desc(l))] } };
}

type Img = ReturnType<typeof image>;

/** The parts of a full bundle: entries (files on disk), artifacts, image graphs, and the manifest to write. */
async function fullBundle(images: Img[], artifacts: Record<string, Buffer>, version: string) {
  const files: [string, Buffer][] = [['release/cartesia-kube.tar.gz', Buffer.from(`release ${version}`)]];
  files.push(['images/oci-layout', Buffer.from('{"imageLayoutVersion":"1.0.0"}\n')]);
  const index = { schemaVersion: 2, manifests: images.map((i) => ({ mediaType: OCI_MANIFEST, digest: i.record.digest, size: i.blobs[0]!.length, annotations: { 'org.opencontainers.image.ref.name': i.record.ref } })) };
  files.push(['images/index.json', Buffer.from(JSON.stringify(index))]);
  const blobs = new Map(images.flatMap((i) => i.blobs.map((b): [string, Buffer] => [sha256(b), b])));
  for (const [hex, b] of [...blobs].sort(([a], [b]) => (a < b ? -1 : 1))) files.push([`images/blobs/sha256/${hex}`, b]);
  for (const [key, b] of Object.entries(artifacts).sort()) files.push([`artifacts/${BUCKET}/${key}`, b]);
  const entries: EntrySource[] = [];
  for (const [path, b] of files) {
    const f = join(tmp, `f${n++}`);
    await writeFile(f, b);
    entries.push(fileEntry(path, f, b.length, sha256(b)));
  }
  const arts: BundleArtifact[] = entries.filter((e) => e.path.startsWith('artifacts/')).map((e) => ({ bucket: BUCKET, key: e.path.slice(`artifacts/${BUCKET}/`.length), size: e.size, sha256: e.sha256, path: e.path }));
  const manifest: WriteBundleOptions['manifest'] = {
    formatVersion: 1,
    tool: { name: 'cartesia-airgap', version: '0.1.0' },
    created: MTIME.toISOString(),
    recipe: { name: 'cartesia', sha256: 'a'.repeat(64) },
    release: { version, tag: `t-${version}`, archive: { path: entries[0]!.path, sha256: entries[0]!.sha256, size: entries[0]!.size } },
    customer: { name: 'acme', bucket: BUCKET },
    images: images.map((i) => i.record),
    artifacts: arts,
  };
  return { entries, artifacts: arts, graphs: images.map((i) => i.graph), manifest };
}

/** Writes a bundle and returns its path. */
async function write(manifest: WriteBundleOptions['manifest'], entries: EntrySource[], key = keyA): Promise<string> {
  const output = join(tmp, `b${n++}.tar`);
  await writeBundle({ output, manifest, entries, mtime: MTIME, signingKey: createPrivateKey(key.privateKeyPem) });
  return output;
}

/** A signed bundle.json (+ .sig) on disk, for a manifest that needs no tar. */
async function signedJson(m: AnyManifest, key = keyA): Promise<string> {
  const file = join(tmp, `bundle-${n++}.json`);
  const bytes = Buffer.from(`${JSON.stringify(bundleManifestSchema.parse(m), null, 2)}\n`);
  await writeFile(file, bytes);
  await writeFile(`${file}.sig`, signManifest(bytes, createPrivateKey(key.privateKeyPem)));
  return file;
}

const L1 = randomBytes(3000); // shared by both images
const L2 = randomBytes(2000);
const L3 = randomBytes(1000);
const api = image('api', [L1, L2]);
const worker = image('worker', [L1, L3]);
let oldFile = '';
let old: SignedManifest;

afterAll(() => rm(tmp, { recursive: true, force: true }));

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'airgap-delta-'));
  // The base: api alone, artifacts k1 and k2.
  const base = await fullBundle([api], { 'loras/k1': Buffer.from('one'), 'loras/k2': Buffer.from('two') }, '1.0.0');
  oldFile = await write(base.manifest, base.entries);
  old = await openSignedManifest(oldFile, createPublicKey(keyA.publicKeyPem));
});

describe('cutDelta', () => {
  it('leaves out what the base holds (by digest; artifacts by key and sha256), lists it per image, and the result verifies', async () => {
    // The new release: api unchanged, worker new (sharing L1), k1 unchanged, k2 changed, k3 new.
    const next = await fullBundle([api, worker], { 'loras/k1': Buffer.from('one'), 'loras/k2': Buffer.from('two, again'), 'loras/k3': Buffer.from('three') }, '1.1.0');
    const d = cutDelta(next, old);
    const file = await write({ ...next.manifest, artifacts: d.artifacts, base: d.base }, d.entries);
    const b = await openBundle(file);
    const paths = b.manifest.entries.map((e) => e.path);
    const hex = (x: Buffer) => `images/blobs/sha256/${sha256(x)}`;
    expect(paths).toEqual(['SHA256SUMS', 'release/cartesia-kube.tar.gz', 'images/oci-layout', 'images/index.json', ...worker.blobs.filter((x) => x !== L1).map(hex).sort(), `artifacts/${BUCKET}/loras/k2`, `artifacts/${BUCKET}/loras/k3`]);
    expect(d.base.manifestSha256).toBe(sha256(old.manifestBytes));
    expect(d.base.signer.fingerprint).toBe(keyA.fingerprint);
    expect(d.base.images).toEqual(['api']);
    expect(d.base.relies.images).toEqual([
      { name: 'api', manifests: [{ digest: api.record.digest, size: api.blobs[0]!.length }], blobs: api.graph.blobs.map((x) => ({ digest: x.digest, size: x.size })) },
      { name: 'worker', manifests: [], blobs: [{ digest: digestOf(L1), size: L1.length }] },
    ]);
    expect(d.base.relies.artifacts.map((a) => a.key)).toEqual(['loras/k1']);
    expect(deltaSummary(d.base)).toMatchObject({ relies: { manifests: 1, blobs: 3, artifacts: 1 }, saved: { images: api.record.size, artifacts: 3, total: api.record.size + 3 } });
    await expect(verifyBundle(b, { publicKey: createPublicKey(keyA.publicKeyPem) })).resolves.toMatchObject({ fingerprint: keyA.fingerprint });
  });

  it('a delta of a delta relies on what its base relied on too (contentsOf counts both)', async () => {
    const next = await fullBundle([api, worker], { 'loras/k1': Buffer.from('one') }, '1.1.0');
    const d1 = cutDelta(next, old);
    const d1File = await write({ ...next.manifest, artifacts: d1.artifacts, base: d1.base }, d1.entries);
    const d1Signed = await openSignedManifest(d1File, createPublicKey(keyA.publicKeyPem));
    const c = contentsOf(d1Signed.manifest);
    for (const x of [...api.blobs, ...worker.blobs]) expect(c.digests.has(digestOf(x)), sha256(x)).toBe(true);
    expect([...c.artifacts.keys()]).toEqual(['loras/k1']);
    // The same release again against the delta: nothing left to carry but the metadata and release.
    const d2 = cutDelta(next, d1Signed);
    expect(d2.entries.map((e) => e.path)).toEqual(['release/cartesia-kube.tar.gz', 'images/oci-layout', 'images/index.json']);
    expect(d2.base.images).toEqual(['api', 'worker']);
  });

  it('verify refuses a delta that leaves out a blob without listing it as relied on', async () => {
    const next = await fullBundle([api, worker], {}, '1.1.0');
    const d = cutDelta(next, old);
    const entries = d.entries.filter((e) => e.path !== `images/blobs/sha256/${sha256(L3)}`);
    const file = await write({ ...next.manifest, artifacts: d.artifacts, base: d.base }, entries);
    const err = await rejection(openBundle(file).then((b) => verifyBundle(b, { publicKey: createPublicKey(keyA.publicKeyPem) })));
    expect(err).toBeInstanceOf(BundleError);
    expect(err.message).toBe(`manifest ${worker.record.digest} names ${digestOf(L3)}, which the bundle neither carries nor relies on`);
  });
});

describe('openSignedManifest', () => {
  it('reads a bundle.json with its .sig beside it, and a bundle, to the same bytes', async () => {
    const json = join(tmp, 'base.json');
    await writeFile(json, old.manifestBytes);
    await writeFile(`${json}.sig`, old.signature!);
    const fromJson = await openSignedManifest(json, createPublicKey(keyA.publicKeyPem));
    expect(fromJson.manifestSha256).toBe(old.manifestSha256);
    expect(fromJson.verifiedBy).toBe(keyA.fingerprint);
  });

  it('refuses another key, a missing signature, and damaged bytes', async () => {
    const wrong = await rejection(openSignedManifest(oldFile, createPublicKey(keyB.publicKeyPem)));
    expect(wrong.message).toBe(`bundle.json is signed by ${keyA.fingerprint}, not by the given key ${keyB.fingerprint}`);
    const bare = join(tmp, 'bare.json');
    await writeFile(bare, old.manifestBytes);
    expect((await rejection(openSignedManifest(bare, createPublicKey(keyA.publicKeyPem)))).message).toMatch(/^the bundle is unsigned \(it has no bundle\.json\.sig\)/);
    const damaged = join(tmp, 'damaged.json');
    await writeFile(damaged, Buffer.from(old.manifestBytes.toString().replace('"1.0.0"', '"1.0.1"')));
    await writeFile(`${damaged}.sig`, old.signature!);
    expect((await rejection(openSignedManifest(damaged, createPublicKey(keyA.publicKeyPem)))).message).toMatch(/does not verify bundle\.json with the key/);
    // Without a key nothing is checked, and it says so.
    expect((await openSignedManifest(damaged)).verifiedBy).toBeNull();
  });
});

describe('diffManifests', () => {
  it('images added, removed and changed (with the platform that moved); artifacts added, removed and changed', async () => {
    const api2 = image('api', [L1, randomBytes(10)]);
    const newer = { ...old.manifest, release: { ...old.manifest.release, version: '1.1.0', tag: 't2' } };
    newer.images = [api2.record, worker.record];
    newer.artifacts = [
      { ...old.manifest.artifacts[0]!, sha256: 'f'.repeat(64), size: 9 },
      { bucket: BUCKET, key: 'loras/k9', size: 1, sha256: 'e'.repeat(64), path: `artifacts/${BUCKET}/loras/k9` },
    ];
    const d = diffManifests(old, await openSignedManifest(await signedJson(newer)));
    expect(d.release).toEqual({ changed: true, version: { old: '1.0.0', new: '1.1.0' }, tag: { old: 't-1.0.0', new: 't2' } });
    expect(d.images.added).toEqual([{ name: 'worker', tag: 't', digest: worker.record.digest }]);
    expect(d.images.removed).toEqual([]);
    expect(d.images.changed).toEqual([{ name: 'api', old: { tag: 't', digest: api.record.digest }, new: { tag: 't', digest: api2.record.digest }, platforms: [{ platform: 'linux/amd64', old: api.record.digest, new: api2.record.digest }] }]);
    expect(d.artifacts.added.map((a) => a.key)).toEqual(['loras/k9']);
    expect(d.artifacts.removed.map((a) => a.key)).toEqual(['loras/k2']);
    expect(d.artifacts.changed).toEqual([{ key: 'loras/k1', old: expect.objectContaining({ sha256: sha256(Buffer.from('one')) }), new: expect.objectContaining({ sha256: 'f'.repeat(64) }) }]);
    expect(d.artifacts.unchanged).toBe(0);
    expect([d.old.verified, d.new.verified]).toEqual([true, false]);
    // Reversed, additions become removals.
    const back = diffManifests(await openSignedManifest(await signedJson(newer)), old);
    expect(back.images.removed.map((i) => i.name)).toEqual(['worker']);
    expect(back.artifacts.added.map((a) => a.key)).toEqual(['loras/k2']);
  });
});
