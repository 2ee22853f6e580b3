import { execFile } from 'node:child_process';
import { createHash, createPrivateKey, createPublicKey, randomBytes } from 'node:crypto';
import { appendFile, copyFile, mkdir, mkdtemp, open, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { pack as tarPack, type Header } from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSigningKeyPair } from '../../src/bundle/keys.ts';
import type { BundleManifest } from '../../src/bundle/manifest.ts';
import { BundleError, openBundle } from '../../src/bundle/reader.ts';
import { verifyBundle } from '../../src/bundle/verify.ts';
import { EntryHashes } from '../../src/tar/hash-thread.ts';
import { fileEntry, writeBundle, type EntrySource, type WriteBundleOptions } from '../../src/bundle/writer.ts';

const execFileP = promisify(execFile);
const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const MTIME = new Date('2025-11-18T12:34:56Z');
const BUCKET = 'cartesia-acme';
const ART = `artifacts/${BUCKET}/loras/voice-1/adapter.bin`;

let tmp = '';
const keyA = generateSigningKeyPair();
const keyB = generateSigningKeyPair();
const pubA = createPublicKey(keyA.publicKeyPem);
const pubB = createPublicKey(keyB.publicKeyPem);
let signed = '';
let unsigned = '';
let n = 0;
const fresh = (name: string): string => join(tmp, `${n++}-${name}`);

/** A small but complete bundle: release, one image (index → manifest → layer), two artifacts. */
async function writeFixture(output: string, opts: { signingKey?: string; edit?: (m: WriteBundleOptions['manifest']) => void } = {}): Promise<void> {
  const src = fresh('src');
  await mkdir(src);
  const layer = randomBytes(2_500_017); // several 1 MiB reads, not a multiple of 512
  const config = Buffer.from('{"architecture":"amd64","os":"linux"}');
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${sha256(config)}`, size: config.length }, layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${sha256(layer)}`, size: layer.length }] }));
  const digest = `sha256:${sha256(manifest)}`;
  const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest, size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': 'cartesia-api:t1' } }] }));
  const archive = randomBytes(70_600); // sizes chosen so the tar is not a multiple of 10240 bytes
  const blobs = [config, manifest, layer].sort((a, b) => (sha256(a) < sha256(b) ? -1 : 1));
  const contents: [string, Buffer][] = [
    ['release/cartesia-kube-1.0.0.tar.gz', archive],
    ['release/SHA256SUMS', Buffer.from(`${sha256(archive)}  cartesia-kube-1.0.0.tar.gz\n`)],
    ['images/oci-layout', Buffer.from('{"imageLayoutVersion":"1.0.0"}\n')],
    ['images/index.json', index],
    ...blobs.map((b): [string, Buffer] => [`images/blobs/sha256/${sha256(b)}`, b]),
    [`artifacts/${BUCKET}/migrations/v2/migrations/0001.json`, Buffer.from('{"id":1}\n')],
    [ART, randomBytes(4096)],
  ];
  const entries: EntrySource[] = [];
  for (const [i, [path, bytes]] of contents.entries()) {
    await writeFile(join(src, String(i)), bytes);
    entries.push(fileEntry(path, join(src, String(i)), bytes.length, sha256(bytes)));
  }
  const m: WriteBundleOptions['manifest'] = {
    formatVersion: 1,
    tool: { name: 'cartesia-airgap', version: '0.1.0' },
    created: MTIME.toISOString(),
    recipe: { name: 'cartesia', sha256: 'a'.repeat(64) },
    release: { version: '1.0.0', tag: 't1', archive: { path: entries[0]!.path, sha256: entries[0]!.sha256, size: entries[0]!.size } },
    customer: { name: 'acme', bucket: BUCKET },
    images: [{ name: 'cartesia-api', source: 'example.com/cartesia-api:t1', tag: 't1', digest, mediaType: 'application/vnd.oci.image.manifest.v1+json', ref: 'cartesia-api:t1', platforms: [{ os: 'linux', architecture: 'amd64', digest }], size: layer.length + config.length + manifest.length }],
    artifacts: entries.filter((e) => e.path.startsWith('artifacts/')).map((e) => ({ bucket: BUCKET, key: e.path.slice(`artifacts/${BUCKET}/`.length), size: e.size, sha256: e.sha256, path: e.path })),
  };
  opts.edit?.(m);
  await writeBundle({ output, manifest: m, entries, mtime: MTIME, ...(opts.signingKey ? { signingKey: createPrivateKey(opts.signingKey) } : {}) });
}

async function collect(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** The one-line 'VERIFY' BundleError that `p` rejects with. */
async function refusal(p: Promise<unknown>): Promise<string> {
  const err: unknown = await p.then(() => undefined, (e: unknown) => e);
  expect(err, 'expected a refusal').toBeInstanceOf(BundleError);
  expect((err as BundleError).code).toBe('VERIFY');
  expect((err as Error).message).not.toContain('\n');
  return (err as Error).message;
}
const openError = (file: string): Promise<string> => refusal(openBundle(file));
const verifyError = async (file: string, publicKey = pubA): Promise<string> => refusal(openBundle(file).then((b) => verifyBundle(b, { publicKey })));

/** A copy of the signed bundle with one byte changed `at` bytes into `path` (or at an absolute offset). */
async function flipped(path: string | number, at = 0): Promise<string> {
  const out = fresh('flipped.tar');
  await copyFile(signed, out);
  const offset = typeof path === 'number' ? path : (await openBundle(signed)).entry(path)!.offset + at;
  const fh = await open(out, 'r+');
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, offset);
  b[0] = b[0]! ^ 0x01;
  await fh.write(b, 0, 1, offset);
  await fh.close();
  return out;
}

interface Raw { name: string; body?: Buffer; type?: Header['type']; linkname?: string }

/** The signed bundle's entries as raw tar entries, to re-pack with hostile changes. */
async function rawEntries(): Promise<Raw[]> {
  const b = await openBundle(signed);
  return Promise.all(b.index.entries.map(async (e) => ({ name: e.path, body: await collect(b.open(e.path)) })));
}

async function pack(entries: Raw[]): Promise<string> {
  const p = tarPack();
  const out = collect(p as unknown as Readable);
  for (const e of entries) {
    const header = { name: e.name, type: e.type ?? 'file', mtime: MTIME, mode: 0o644, ...(e.linkname ? { linkname: e.linkname } : {}), size: e.body?.length ?? 0 };
    await new Promise<void>((resolve, reject) => p.entry(header, e.body ?? Buffer.alloc(0), (err) => (err ? reject(err) : resolve())));
  }
  p.finalize();
  const file = fresh('hostile.tar');
  await writeFile(file, await out);
  return file;
}

/** Re-packs with bundle.json edited (the signature is then stale, which openBundle does not check). */
async function withManifest(edit: (m: BundleManifest, raw: Raw[]) => void): Promise<string> {
  const raw = await rawEntries();
  const m = JSON.parse(raw[0]!.body!.toString()) as BundleManifest;
  edit(m, raw);
  raw[0]!.body = Buffer.from(JSON.stringify(m));
  return pack(raw);
}

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'airgap-reader-'));
  signed = join(tmp, 'signed.tar');
  unsigned = join(tmp, 'unsigned.tar');
  await writeFixture(signed, { signingKey: keyA.privateKeyPem });
  await writeFixture(unsigned);
});
afterAll(async () => {
  if (tmp !== '') await rm(tmp, { recursive: true, force: true });
});

describe('openBundle and verifyBundle: good bundles', () => {
  it('opens a signed bundle in place and verifies it with its key', async () => {
    const b = await openBundle(signed);
    expect(b.index.entries.map((e) => e.path).slice(0, 3)).toEqual(['bundle.json', 'bundle.json.sig', 'SHA256SUMS']);
    expect(b.manifest.signer?.fingerprint).toBe(keyA.fingerprint);
    expect(b.signature).toMatch(/^[A-Za-z0-9+/]+={0,2}\n$/);
    const art = b.entry(ART)!;
    expect(art.size).toBe(4096);
    const bytes = await collect(b.open(ART));
    expect(sha256(bytes)).toBe(b.manifest.entries.find((e) => e.path === ART)!.sha256);
    expect(await collect(b.open(ART, 4000))).toEqual(bytes.subarray(4000));
    expect((await collect(b.open(ART, 4096))).length).toBe(0);
    expect(JSON.parse((await b.layoutFiles('images/').read('index.json')).toString())).toMatchObject({ schemaVersion: 2 });
    expect(b.entry('nope')).toBeUndefined();

    const progress = new Map<string, number>();
    const r = await verifyBundle(b, { publicKey: pubA, onEntry: (p, got, total) => progress.set(p, total - got) });
    expect(r).toEqual({ fingerprint: keyA.fingerprint, entries: b.manifest.entries.length, bytes: b.manifest.entries.reduce((s, e) => s + e.size, 0), skipped: 0 });
    expect([...progress.keys()]).toEqual(b.manifest.entries.map((e) => e.path));
    expect([...progress.values()].every((left) => left === 0)).toBe(true);
    // Without a key the caller skipped the check: the claimed signer is reported.
    expect((await verifyBundle(b)).fingerprint).toBe(keyA.fingerprint);
  });

  it('an unsigned bundle verifies only without a key', async () => {
    const b = await openBundle(unsigned);
    expect(b.signature).toBeUndefined();
    expect((await verifyBundle(b)).fingerprint).toBeNull();
    expect(await verifyError(unsigned)).toMatch(/^the bundle is unsigned \(it has no bundle\.json\.sig\), but it must be signed by SHA256:/);
  });

  it('accepts the same bundle re-packed by GNU tar (padded to a 10240-byte record)', async () => {
    const x = fresh('x');
    await mkdir(x);
    await execFileP('tar', ['-xf', signed, '-C', x]);
    const names = (await openBundle(signed)).index.entries.map((e) => e.path);
    const out = fresh('gnu.tar');
    await execFileP('tar', ['--format=ustar', '--no-recursion', '-C', x, '-cf', out, ...names]);
    expect((await stat(out)).size % 10240).toBe(0);
    expect((await verifyBundle(await openBundle(out), { publicKey: pubA })).fingerprint).toBe(keyA.fingerprint);
  });
});

describe('verifyBundle: signatures and hashes', () => {
  it('refuses another key, naming both fingerprints', async () => {
    expect(await verifyError(signed, pubB)).toBe(`bundle.json is signed by ${keyA.fingerprint}, not by the given key ${keyB.fingerprint}`);
  });

  it('refuses a changed bundle.json (still valid JSON) and a changed signature', async () => {
    const b = await openBundle(signed);
    const at = b.manifestBytes.indexOf('"0.1.0"') + 5; // tool version 0.1.0 → 0.1.1
    expect(await verifyError(await flipped('bundle.json', at))).toMatch(/^bundle\.json\.sig does not verify bundle\.json with the key SHA256:[a-f0-9]{64}: bundle\.json or its signature was changed/);
    expect(await verifyError(await flipped('bundle.json.sig', 10))).toMatch(/^bundle\.json\.sig does not verify bundle\.json/);
    // A change that breaks the JSON is refused while opening, naming bundle.json.
    expect(await openError(await flipped('bundle.json', 0))).toMatch(/^bundle\.json is not valid UTF-8 JSON/);
  });

  it('with `only`, hashes just the entries it accepts: damage elsewhere goes unread, damage there is refused', async () => {
    const damaged = await openBundle(await flipped(ART, 4095));
    const release = 'release/cartesia-kube-1.0.0.tar.gz';
    const r = await verifyBundle(damaged, { publicKey: pubA, only: (p) => p === release });
    expect(r).toMatchObject({ entries: 1, skipped: damaged.manifest.entries.length - 1, bytes: damaged.entry(release)!.size });
    await expect(verifyBundle(damaged, { publicKey: pubA, only: (p) => p === ART })).rejects.toThrow(/is damaged or changed/);
  });

  it.each([['SHA256SUMS', 3], [ART, 4095], ['release/cartesia-kube-1.0.0.tar.gz', 0]])('refuses a flipped byte in %s, naming it', async (path, at) => {
    const msg = await verifyError(await flipped(path, at));
    expect(msg).toMatch(new RegExp(`^${path.replace(/[.]/g, '\\.')} is damaged or changed: its sha256 is [a-f0-9]{64}, bundle\\.json says [a-f0-9]{64}$`));
  });

  it('refuses a bundle.json promising an image blob or artifact the tar lacks', async () => {
    const ghost = `sha256:${'e'.repeat(64)}`;
    const noBlob = fresh('noblob.tar');
    await writeFixture(noBlob, { edit: (m) => (m.images[0]!.platforms[0]!.digest = ghost) });
    expect(await refusal(openBundle(noBlob).then((b) => verifyBundle(b)))).toBe(`bundle.json lists the image cartesia-api:t1 with ${ghost}, but the bundle has no images/blobs/sha256/${'e'.repeat(64)}`);
    const noArt = await withManifest((m) => m.artifacts.push({ ...m.artifacts[0]!, key: 'loras/ghost', path: `artifacts/${BUCKET}/loras/ghost` }));
    expect(await refusal(openBundle(noArt).then((b) => verifyBundle(b)))).toBe(`bundle.json names artifacts/${BUCKET}/loras/ghost, but the bundle has no such entry`);
  });
});

describe('verifyBundle with a hashing thread beside (install: the entries on two cores)', () => {
  const RELEASE = 'release/cartesia-kube-1.0.0.tar.gz';
  /** A thread that records the file offsets it was asked to hash from. */
  const recording = (): { thread: EntryHashes; starts: number[] } => {
    const thread = new EntryHashes();
    const starts: number[] = [];
    const open = thread.open.bind(thread);
    thread.open = (prefix) => {
      starts.push(prefix!.start);
      return open(prefix);
    };
    return { thread, starts };
  };

  it('checks the same entries and bytes as this thread alone, the thread taking some of them', async () => {
    const b = await openBundle(signed);
    const alone = await verifyBundle(b, { publicKey: pubA });
    const { thread, starts } = recording();
    try {
      const progress = new Map<string, number>();
      expect(await verifyBundle(b, { publicKey: pubA, thread, onEntry: (p, got, total) => progress.set(p, total - got) })).toEqual(alone);
      expect(starts.length).toBeGreaterThan(0);
      expect(starts.length).toBeLessThan(alone.entries);
      expect([...progress.values()].every((left) => left === 0)).toBe(true);
      expect(progress.size).toBe(alone.entries);
    } finally {
      await thread.close();
    }
  });

  // The first whole entry goes to this thread, the next to the hashing thread: a flipped byte in
  // either is refused alike, and one the hashing thread read short is an IO error naming it.
  it.each([[RELEASE, 'this thread'], [ART, 'the hashing thread']])('refuses a flipped byte in %s, hashed by %s', async (path) => {
    const damaged = await openBundle(await flipped(path, 100));
    const { thread, starts } = recording();
    try {
      const err = await verifyBundle(damaged, { publicKey: pubA, thread, only: (p) => p === RELEASE || p === ART }).then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(BundleError);
      expect((err as Error).message).toMatch(new RegExp(`^${path.replace(/[.]/g, '\\.')} is damaged or changed: its sha256 is [a-f0-9]{64}, bundle\\.json says [a-f0-9]{64}$`));
      expect(starts).toEqual([damaged.entry(ART)!.offset]);
    } finally {
      await thread.close();
    }
  });

  it('an entry the hashing thread finds cut short is an IO error naming it', async () => {
    const out = fresh('cut-after-open.tar');
    await copyFile(signed, out);
    const b = await openBundle(out);
    await truncate(out, b.entry(ART)!.offset + 10);
    const thread = new EntryHashes();
    try {
      const err = await verifyBundle(b, { publicKey: pubA, thread, only: (p) => p === RELEASE || p === ART }).then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(BundleError);
      expect((err as BundleError).code).toBe('IO');
      expect((err as Error).message).toContain(`reading ${ART} from ${out} failed`);
    } finally {
      await thread.close();
    }
  });
});

describe('openBundle: hostile and damaged tars', () => {
  it('refuses truncation anywhere, naming the offset', async () => {
    const b = await openBundle(signed);
    const size = b.index.fileSize;
    for (const cut of [0, 100, 600, b.entry(ART)!.offset + 10, b.index.endOffset, b.index.endOffset + 600, size - 1]) {
      const out = fresh('cut.tar');
      await copyFile(signed, out);
      await truncate(out, cut);
      expect(await openError(out), `cut at ${cut}`).toMatch(/byte \d+/);
    }
  });

  it('refuses trailing data; accepts zero padding only to a 10240-byte record', async () => {
    const size = (await stat(signed)).size;
    const add = async (bytes: Buffer): Promise<string> => {
      const out = fresh('trail.tar');
      await copyFile(signed, out);
      await appendFile(out, bytes);
      return out;
    };
    expect(await openError(await add(Buffer.from('junk')))).toMatch(/^trailing data: 4 bytes after the end of the archive at byte \d+$/);
    const pad = 10240 - (size % 10240);
    expect(pad).toBeLessThan(10240); // our writer does not pad; GNU tar would add `pad` zeros
    expect(await openError(await add(Buffer.concat([Buffer.alloc(pad - 1), Buffer.from('x')])))).toMatch(/are not zero padding$/);
    expect(await openError(await add(Buffer.alloc(pad + 10240)))).toMatch(/^trailing data/);
    await openBundle(await add(Buffer.alloc(pad)));
  });

  it.each<[string, (raw: Raw[]) => Raw[], RegExp]>([
    ['an entry not listed', (r) => [...r, { name: 'images/extra', body: Buffer.from('x') }], /^the entry "images\/extra" at byte \d+ is not listed in bundle\.json$/],
    ['a duplicate entry', (r) => [...r.slice(0, 4), r[3]!, ...r.slice(4)], /^"release\/cartesia-kube-1\.0\.0\.tar\.gz" appears twice in the bundle \(again at byte \d+\)$/],
    ['a symlink', (r) => [...r, { name: 'images/link', type: 'symlink', linkname: '/etc/passwd' }], /^the entry "images\/link" at byte \d+ is a symlink; a bundle holds only regular files$/],
    ['a hard link', (r) => [...r, { name: 'images/hard', type: 'link', linkname: 'SHA256SUMS' }], /is a hardlink; a bundle holds only regular files$/],
    ['a directory', (r) => [...r.slice(0, 3), { name: 'release/', type: 'directory' }, ...r.slice(3)], /^the entry "release" at byte \d+ is a directory/],
    ['a fifo', (r) => [...r, { name: 'images/fifo', type: 'fifo' }], /is a fifo/],
    ['a ../ path', (r) => [...r, { name: '../x', body: Buffer.from('x') }], /^the entry "\.\.\/x" at byte \d+ has an unsafe path/],
    ['an absolute path', (r) => [...r, { name: '/abs', body: Buffer.from('x') }], /^the entry "\/abs" at byte \d+ has an unsafe path/],
    ['a missing entry', (r) => r.filter((e) => e.name !== ART), new RegExp(`^bundle\\.json lists ${ART}, but the bundle ends before it$`)],
    ['entries out of order', (r) => [...r.slice(0, 3), r[4]!, r[3]!, ...r.slice(5)], /^the entry "release\/SHA256SUMS" at byte \d+ is out of order: bundle\.json lists "release\/cartesia-kube-1\.0\.0\.tar\.gz" there$/],
    ['bundle.json not first', (r) => [r[1]!, r[0]!, ...r.slice(2)], /^the first entry is "bundle\.json\.sig" at byte 0; a bundle starts with bundle\.json$/],
  ])('refuses %s', async (_what, edit, message) => {
    expect(await openError(await pack(edit(await rawEntries())))).toMatch(message);
  });

  it('refuses a bundle.json listing paths outside the allowed names, or sizes the tar does not have', async () => {
    const outside = await withManifest((m, raw) => {
      m.entries.push({ path: 'etc/cron.d/x', size: 1, sha256: sha256(Buffer.from('x')) });
      raw.push({ name: 'etc/cron.d/x', body: Buffer.from('x') });
    });
    expect(await openError(outside)).toBe('bundle.json lists "etc/cron.d/x", outside the names a bundle may hold (SHA256SUMS, tool/, release/, images/, artifacts/)');
    const bigger = await withManifest((m) => (m.entries.find((e) => e.path === ART)!.size = 2 ** 40));
    expect(await openError(bigger)).toBe(`${ART} is 4096 bytes in the tar, but bundle.json says ${2 ** 40}`);
    const newer = await withManifest((m) => ((m as { formatVersion: number }).formatVersion = 2));
    expect(await openError(newer)).toMatch(/^this bundle needs a newer cartesia-airgap: its format version is 2/);
  });

  it('refuses a header declaring more content than the file holds', async () => {
    const out = fresh('huge.tar');
    await copyFile(signed, out);
    const b = await openBundle(signed);
    const e = b.index.entries.find((x) => x.path === ART)!;
    const fh = await open(out, 'r+');
    const h = Buffer.alloc(512);
    await fh.read(h, 0, 512, e.headerOffset);
    h.write('77777777777\0', 124, 'latin1'); // 8 GiB
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (const byte of h) sum += byte;
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    await fh.write(h, 0, 512, e.headerOffset);
    await fh.close();
    expect(await openError(out)).toMatch(/truncated archive: the 8589934591-byte content at byte \d+ runs past the end of the file/);
  });

  it('reports a missing file as IO, not as a bad bundle', async () => {
    const err: unknown = await openBundle(join(tmp, 'missing.tar')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BundleError);
    expect((err as BundleError).code).toBe('IO');
    expect((err as Error).message).toMatch(/^cannot read the bundle .*missing\.tar: ENOENT$/);
  });
});
