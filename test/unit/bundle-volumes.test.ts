import { execFile } from 'node:child_process';
import { createHash, createPrivateKey, createPublicKey, randomBytes } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import type { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { pack as tarPack } from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSigningKeyPair } from '../../src/bundle/keys.ts';
import { splitManifestSchema, type SplitManifest } from '../../src/bundle/manifest.ts';
import { BundleError, openBundle } from '../../src/bundle/reader.ts';
import { verifyBundle } from '../../src/bundle/verify.ts';
import { openBundleSet } from '../../src/bundle/volume-set.ts';
import { writeVolumes } from '../../src/bundle/volume-writer.ts';
import { planVolumes, volumeFile } from '../../src/bundle/volumes.ts';
import { tarHeaderBytes } from '../../src/tar/header.ts';
import { fileEntry, writeBundle, type EntrySource, type WriteBundleOptions } from '../../src/bundle/writer.ts';
import { LayoutReader } from '../../src/oci/layout/reader.ts';
import { run } from '../testbed/run.ts';

const execFileP = promisify(execFile);
const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const MTIME = new Date('2025-11-18T12:34:56Z');
const BUCKET = 'cartesia-acme';
const LIMIT = 100_000;
const key = generateSigningKeyPair();
const pub = createPublicKey(key.publicKeyPem);

let tmp = '';
let n = 0;
const fresh = (name: string): string => join(tmp, `${n++}-${name}`);

interface Fixture {
  entries: EntrySource[];
  manifest: WriteBundleOptions['manifest'];
  contents: Map<string, Buffer>;
  layer: string;
}
let fx: Fixture;

/** A small complete bundle: release, one image (index → manifest → config + a layer larger than a volume), artifacts. */
async function fixture(): Promise<Fixture> {
  const src = fresh('src');
  await mkdir(src);
  const layer = randomBytes(300_017);
  const config = Buffer.from('{"architecture":"amd64","os":"linux"}');
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${sha256(config)}`, size: config.length }, layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${sha256(layer)}`, size: layer.length }] }));
  const digest = `sha256:${sha256(manifest)}`;
  const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest, size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': 'cartesia-api:t1' } }] }));
  const archive = randomBytes(70_600);
  const blobs = [config, manifest, layer].sort((a, b) => (sha256(a) < sha256(b) ? -1 : 1));
  const list: [string, Buffer][] = [
    ['release/cartesia-kube-1.0.0.tar.gz', archive],
    ['release/SHA256SUMS', Buffer.from(`${sha256(archive)}  cartesia-kube-1.0.0.tar.gz\n`)],
    ['images/oci-layout', Buffer.from('{"imageLayoutVersion":"1.0.0"}\n')],
    ['images/index.json', index],
    ...blobs.map((b): [string, Buffer] => [`images/blobs/sha256/${sha256(b)}`, b]),
    ...Array.from({ length: 12 }, (_, i): [string, Buffer] => [`artifacts/${BUCKET}/loras/voice-${i}/adapter.bin`, randomBytes(9_000 + i * 1_000)]),
    [`artifacts/${BUCKET}/migrations/v2/migrations/0001.json`, Buffer.from('{"id":1}\n')],
    [`artifacts/${BUCKET}/empty.marker`, Buffer.alloc(0)],
  ];
  const entries: EntrySource[] = [];
  for (const [i, [path, bytes]] of list.entries()) {
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
  return { entries, manifest: m, contents: new Map(list), layer: `images/blobs/sha256/${sha256(layer)}` };
}

async function split(dir: string, opts: { signed?: boolean; limit?: number } = {}): Promise<{ files: string[]; manifest: SplitManifest }> {
  await mkdir(dir, { recursive: true });
  const res = await writeVolumes({ output: join(dir, 'cartesia.tar'), manifest: fx.manifest, entries: fx.entries, mtime: MTIME, limit: opts.limit ?? LIMIT, ...(opts.signed === false ? {} : { signingKey: createPrivateKey(key.privateKeyPem) }) });
  return { files: res.volumes!.map((v) => v.path), manifest: splitManifestSchema.parse(res.manifest) };
}

async function collect(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function refusal(p: Promise<unknown>): Promise<string> {
  const err: unknown = await p.then(() => undefined, (e: unknown) => e);
  expect(err, 'expected a refusal').toBeInstanceOf(BundleError);
  expect((err as BundleError).code).toBe('VERIFY');
  expect((err as Error).message).not.toContain('\n');
  return (err as Error).message;
}

/** Copies the set into a new directory, `change` applied there. */
async function copySet(files: string[], change?: (dir: string) => Promise<void>): Promise<string> {
  const dir = fresh('set');
  await mkdir(dir);
  for (const f of files) await copyFile(f, join(dir, basename(f)));
  await change?.(dir);
  return dir;
}

async function flip(file: string, offset: number): Promise<void> {
  const fh = await open(file, 'r+');
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, offset);
  b[0] = b[0]! ^ 0x01;
  await fh.write(b, 0, 1, offset);
  await fh.close();
}

let set: { files: string[]; manifest: SplitManifest };

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'airgap-volumes-'));
  fx = await fixture();
  set = await split(fresh('out'));
});
afterAll(async () => {
  if (tmp !== '') await rm(tmp, { recursive: true, force: true });
});

describe('tarHeaderBytes', () => {
  it('matches what tar-stream writes for short, prefixed, long and non-ASCII names', async () => {
    const names = ['a', 'x'.repeat(100), 'x'.repeat(101), `${'d/'.repeat(70)}f`, `${'d'.repeat(156)}/f`, `${'d/'.repeat(30)}${'f'.repeat(101)}`, `artifacts/${'ü'.repeat(10)}`, `parts/images/blobs/sha256/${'a'.repeat(64)}/001`];
    for (let len = 90; len < 400; len += 7) names.push(`artifacts/${BUCKET}/${'k/'.repeat(len % 40)}${'n'.repeat(len)}`);
    for (const name of names) {
      const p = tarPack();
      const out = collect(p as unknown as Readable);
      p.entry({ name, size: 0, mtime: MTIME }, Buffer.alloc(0));
      p.finalize();
      expect(tarHeaderBytes(name), name).toBe((await out).length - 1024);
    }
  });
});

describe('planVolumes', () => {
  it('keeps every volume within the limit and cuts only entries larger than a volume, the first piece filling the last volume', () => {
    const entries = [
      { path: 'release/a', size: 60_000 },
      { path: 'images/big', size: 250_000 },
      { path: 'images/b', size: 50_000 },
    ];
    const plan = planVolumes({ limit: 100_000, entries, headBytes: 2048 });
    for (const v of plan) expect(v.bytes).toBeLessThanOrEqual(100_000);
    const pieces = plan.flatMap((v) => v.entries).filter((e) => e.offset !== undefined);
    expect(new Set(pieces.map((p) => p.entry))).toEqual(new Set([1]));
    expect(pieces.reduce((s, p) => s + p.size, 0)).toBe(250_000);
    expect(pieces.map((p) => p.path)).toEqual(['parts/images/big/001', 'parts/images/big/002', 'parts/images/big/003', 'parts/images/big/004']);
    expect(plan.map((v) => v.entries.map((e) => e.path))).toEqual([['release/a', 'parts/images/big/001'], ['parts/images/big/002'], ['parts/images/big/003'], ['parts/images/big/004', 'images/b']]);
    expect(planVolumes({ limit: 100_000, entries, headBytes: 2048 })).toEqual(plan);
  });

  it('puts a later small entry into the gap an earlier large one left', () => {
    const plan = planVolumes({ limit: 100_000, entries: [{ path: 'release/a', size: 60_000 }, { path: 'images/b', size: 50_000 }, { path: 'artifacts/c', size: 20_000 }], headBytes: 2048 });
    expect(plan.map((v) => v.entries.map((e) => e.path))).toEqual([['release/a', 'artifacts/c'], ['images/b']]);
  });

  it('refuses a limit with no room for content beside bundle.json, in one line', () => {
    expect(() => planVolumes({ limit: 4000, entries: [{ path: 'images/x', size: 10_000 }], headBytes: 3000 })).toThrow(/^--split-size 4000 bytes is too small: every volume starts with bundle\.json, its signature and a SHA256SUMS \(\d+ bytes for this bundle\) before any content; give a size many times larger$/);
  });
});

describe('writeVolumes', () => {
  it('writes at least 4 volumes, each within the limit, each a tar GNU tar reads, sha256sum -c checks and openssl verifies', async () => {
    expect(set.files.length).toBeGreaterThanOrEqual(4);
    expect(set.files.map((f) => basename(f))).toEqual(set.files.map((_, i) => `cartesia.vol${String(i + 1).padStart(3, '0')}.tar`));
    expect(set.manifest.formatVersion).toBe(1.1);
    expect(set.manifest.volumes.limit).toBe(LIMIT);
    const der = fresh('sig.der');
    for (const [i, f] of set.files.entries()) {
      expect((await stat(f)).size, f).toBeLessThanOrEqual(LIMIT);
      const x = fresh('x');
      await mkdir(x);
      const { stderr } = await execFileP('tar', ['-xf', f, '-C', x]);
      expect(stderr).toBe('');
      await run('sha256sum', ['--strict', '--quiet', '-c', 'SHA256SUMS'], { cwd: x });
      await writeFile(der, Buffer.from(await readFile(join(x, 'bundle.json.sig'), 'utf8'), 'base64'));
      await writeFile(fresh('k.pub'), key.publicKeyPem);
      expect(await run('openssl', ['dgst', '-sha256', '-verify', join(tmp, `${n - 1}-k.pub`), '-signature', der, join(x, 'bundle.json')])).toBe('Verified OK\n');
      const listed = (await run('tar', ['-tf', f])).trimEnd().split('\n');
      expect(listed).toEqual(['bundle.json', 'bundle.json.sig', 'SHA256SUMS', ...set.manifest.volumes.list[i]!.entries.slice(1).map((e) => e.path)]);
    }
  });

  it('cuts the layer larger than a volume into pieces that cat joins back (GNU tar, cat and sha256sum as the oracle)', async () => {
    const x = fresh('all');
    await mkdir(x);
    for (const f of set.files) await execFileP('tar', ['-xf', f, '-C', x]);
    const pieces = (await readdir(join(x, 'parts', fx.layer))).sort();
    expect(pieces.length).toBeGreaterThanOrEqual(3);
    const joined = await run('sh', ['-c', `cat ${pieces.map((p) => `'parts/${fx.layer}/${p}'`).join(' ')} | sha256sum`], { cwd: x });
    expect(joined.split(' ')[0]).toBe(sha256(fx.contents.get(fx.layer)!));
    // Every other entry is whole in exactly one volume.
    for (const [path, bytes] of fx.contents) if (path !== fx.layer) expect(sha256(await readFile(join(x, path))), path).toBe(sha256(bytes));
  });

  it('gives byte-identical volumes when run again', async () => {
    const again = await split(fresh('again'));
    expect(again.files.length).toBe(set.files.length);
    for (const [i, f] of set.files.entries()) expect(sha256(await readFile(again.files[i]!)), f).toBe(sha256(await readFile(f)));
  });

  it('leaves nothing under the volume names when an entry changed since it was listed', async () => {
    const dir = fresh('changed');
    await mkdir(dir);
    const entries = fx.entries.map((e) => (e.path === fx.layer ? { ...e, sha256: 'f'.repeat(64) } : e));
    const err = await writeVolumes({ output: join(dir, 'c.tar'), manifest: fx.manifest, entries, mtime: MTIME, limit: LIMIT }).catch((e: unknown) => e as Error);
    expect(err).toBeInstanceOf(Error);
    expect(await readdir(dir)).toEqual([]);
  });
});

describe('reading volumes', () => {
  it('opens and verifies each volume alone, saying which of how many it is', async () => {
    for (const [i, f] of set.files.entries()) {
      const b = await openBundle(f);
      expect(b.complete).toBe(false);
      expect(b.tars[0]!.label).toBe(`${basename(f)} (volume ${i + 1} of ${set.files.length})`);
      const r = await verifyBundle(b, { publicKey: pub });
      expect(r.volumes).toEqual({ count: set.files.length, checked: [i + 1] });
      expect(r.fingerprint).toBe(key.fingerprint);
      expect(r.entries).toBe(set.manifest.volumes.list[i]!.entries.length);
      expect(r.bytes).toBe(set.manifest.volumes.list[i]!.entries.reduce((s, e) => s + e.size, 0));
    }
  });

  it('opens the set from its first volume or its directory, and serves every entry across volumes without joining them on disk', async () => {
    for (const from of [set.files[0]!, join(set.files[0]!, '..'), set.files[2]!]) {
      const b = await openBundleSet(from);
      expect(b.complete).toBe(true);
      expect(b.tars.map((t) => t.volume)).toEqual(set.files.map((_, i) => i + 1));
      const r = await verifyBundle(b, { publicKey: pub });
      expect(r.volumes!.checked).toHaveLength(set.files.length);
      for (const [path, bytes] of fx.contents) expect(sha256(await collect(b.open(path))), path).toBe(sha256(bytes));
      // Mid-entry reads (what a resumed push asks for) cross piece boundaries too.
      const layer = fx.contents.get(fx.layer)!;
      expect((await collect(b.open(fx.layer, 99_000))).equals(layer.subarray(99_000))).toBe(true);
      const reader = new LayoutReader(b.layoutFiles('images/'));
      const root = await reader.resolve('cartesia-api:t1');
      expect(root.digest).toBe(fx.manifest.images[0]!.digest);
    }
  });

  it('names the volume a flipped byte is in, alone and in the set', async () => {
    for (const k of [1, 3, set.files.length]) {
      const dir = await copySet(set.files);
      const file = join(dir, basename(set.files[k - 1]!));
      const t = (await openBundle(file)).tars[0]!;
      const victim = t.listing.at(-1)!;
      await flip(file, t.extent(victim.path)!.offset + Math.floor(victim.size / 2));
      const label = `cartesia.vol${String(k).padStart(3, '0')}.tar (volume ${k} of ${set.files.length})`;
      const want = `${label}: ${victim.path} is damaged or changed: its sha256 is`;
      expect(await refusal(openBundle(file).then((b) => verifyBundle(b, { publicKey: pub })))).toContain(want);
      expect(await refusal(openBundleSet(dir).then((b) => verifyBundle(b, { publicKey: pub })))).toContain(want);
    }
  });

  it('names a missing volume, a swapped pair and a volume carrying another bundle.json', async () => {
    const count = set.files.length;
    const missing = await copySet(set.files, (dir) => rm(join(dir, 'cartesia.vol003.tar')));
    expect(await refusal(openBundleSet(missing))).toBe(`volume 3 of ${count} is missing: there is no ${join(missing, 'cartesia.vol003.tar')}`);
    expect(await refusal(openBundleSet(join(missing, 'cartesia.vol001.tar')))).toMatch(/^volume 3 of \d+ is missing/);
    const two = await copySet(set.files, async (dir) => {
      await rm(join(dir, 'cartesia.vol002.tar'));
      await rm(join(dir, 'cartesia.vol004.tar'));
    });
    expect(await refusal(openBundleSet(two))).toMatch(/^volume 2 of \d+ is missing: there is no .*cartesia\.vol002\.tar \(and volume 4 too\)$/);

    const swapped = await copySet(set.files, async (dir) => {
      await rename(join(dir, 'cartesia.vol002.tar'), join(dir, 'tmp'));
      await rename(join(dir, 'cartesia.vol003.tar'), join(dir, 'cartesia.vol002.tar'));
      await rename(join(dir, 'tmp'), join(dir, 'cartesia.vol003.tar'));
    });
    expect(await refusal(openBundleSet(swapped))).toMatch(/^cartesia\.vol002\.tar holds volume 3 of \d+, not volume 2: renamed or mixed up \(and volume 3 too\)$/);

    // bundle.json still valid JSON, one character of the tool version changed.
    const foreign = await copySet(set.files, async (dir) => {
      const file = join(dir, 'cartesia.vol004.tar');
      const t = (await openBundle(file)).tars[0]!;
      await flip(file, t.extent('bundle.json')!.offset + t.manifestBytes.indexOf('"version": "0.1.0"') + 13);
    });
    expect(await refusal(openBundleSet(foreign))).toBe(`cartesia.vol004.tar (volume 4 of ${count}) carries a different bundle.json than the other volumes: it is damaged or from another bundle`);
    // Alone, that volume's own signature fails.
    expect(await refusal(openBundle(join(foreign, 'cartesia.vol004.tar')).then((b) => verifyBundle(b, { publicKey: pub })))).toMatch(/^bundle\.json\.sig does not verify bundle\.json/);
  });

  it('refuses a directory with no volumes or with two sets, and a renamed volume whose set cannot be found', async () => {
    const empty = fresh('empty');
    await mkdir(empty);
    expect(await refusal(openBundleSet(empty))).toMatch(/holds no bundle volumes/);
    const mixed = await copySet(set.files, (dir) => copyFile(set.files[0]!, join(dir, 'other.vol001.tar')));
    expect(await refusal(openBundleSet(mixed))).toMatch(/holds volumes of 2 bundles \(cartesia, other\); give the first volume of the one you mean$/);
    const renamed = fresh('renamed.tar');
    await copyFile(set.files[1]!, renamed);
    expect(await refusal(openBundleSet(renamed))).toMatch(/is volume 2 of a split bundle, but not named NAME\.volNNN\.tar/);
  });

  it('a single-file bundle of the same entries opens as before, and the same content comes out of both', async () => {
    const single = fresh('single.tar');
    await writeBundle({ output: single, manifest: fx.manifest, entries: fx.entries, mtime: MTIME, signingKey: createPrivateKey(key.privateKeyPem) });
    const one = await openBundleSet(single);
    expect(one.manifest.formatVersion).toBe(1);
    expect(one.volumes).toBeUndefined();
    const many = await openBundleSet(set.files[0]!);
    expect(many.manifest.images).toEqual(one.manifest.images);
    expect(many.manifest.artifacts).toEqual(one.manifest.artifacts);
    expect(many.manifest.entries).toEqual(one.manifest.entries.slice(1)); // no SHA256SUMS of its own
  });

  it('refuses a split bundle.json whose volumes do not add up, naming the problem', async () => {
    /** Volume 1 re-packed with its bundle.json edited (openBundle checks structure, not the signature). */
    const edited = async (edit: (m: SplitManifest) => void): Promise<string> => {
      const t = (await openBundle(set.files[0]!)).tars[0]!;
      const m = JSON.parse(t.manifestBytes.toString()) as SplitManifest;
      edit(m);
      const p = tarPack();
      const out = collect(p as unknown as Readable);
      for (const e of t.index.entries) {
        const body = e.path === 'bundle.json' ? Buffer.from(JSON.stringify(m)) : await collect(t.files.stream(e.path));
        await new Promise<void>((resolve, reject) => p.entry({ name: e.path, size: body.length, mtime: MTIME }, body, (err) => (err ? reject(err) : resolve())));
      }
      p.finalize();
      const file = fresh('edited.vol001.tar');
      await writeFile(file, await out);
      return file;
    };
    const list = (m: SplitManifest) => m.volumes.list;
    const pieceAt = (m: SplitManifest) => list(m).flatMap((v) => v.entries).find((e) => e.piece)!;
    const cases: [string, (m: SplitManifest) => void, RegExp][] = [
      ['no SHA256SUMS first', (m) => list(m)[0]!.entries.reverse(), /^bundle\.json: volume 1 does not list its SHA256SUMS first$/],
      ['an entry stored twice', (m) => list(m)[1]!.entries.push(list(m)[0]!.entries[1]!), /^bundle\.json: volume 2 lists "release\/cartesia-kube-1\.0\.0\.tar\.gz", which is stored more than once$/],
      ['an entry stored nowhere', (m) => m.entries.push({ path: 'artifacts/x', size: 1, sha256: 'a'.repeat(64) }), /^bundle\.json: artifacts\/x is stored in none of the \d+ volumes$/],
      ['a whole entry with another sha256', (m) => (list(m)[0]!.entries[1]!.sha256 = 'b'.repeat(64)), /^bundle\.json: volume 1 lists release\/cartesia-kube-1\.0\.0\.tar\.gz with another size or sha256 than the bundle's entries$/],
      ['a piece at the wrong offset', (m) => (pieceAt(m).piece!.offset += 512), /^bundle\.json: volume \d+ lists the piece of images\/blobs\/sha256\/[a-f0-9]{64} at byte \d+, but the pieces before it end at byte \d+$/],
      ['a piece named outside parts/', (m) => (pieceAt(m).path = 'images/evil'), /^bundle\.json: volume \d+ names a piece of images\/blobs\/sha256\/[a-f0-9]{64} "images\/evil"; pieces are named parts\//],
      ['a piece of nothing listed', (m) => (pieceAt(m).piece!.of = 'images/none'), /^bundle\.json: volume \d+ lists a piece of "images\/none", which is not among the bundle's entries$/],
      ['an entry outside the allowed names', (m) => (m.entries[0]!.path = 'SHA256SUMS'), /^bundle\.json lists "SHA256SUMS", outside the names a bundle may hold/],
      ['a split bundle.json without volumes', (m) => delete (m as Partial<SplitManifest>).volumes, /^bundle\.json is invalid at volumes:/],
    ];
    for (const [what, edit, message] of cases) expect(await refusal(openBundle(await edited(edit))), what).toMatch(message);
  });

  it('splits an unsigned bundle too', async () => {
    const u = await split(fresh('unsigned'), { signed: false });
    const b = await openBundleSet(u.files[0]!);
    expect(b.signature).toBeUndefined();
    expect((await verifyBundle(b)).volumes!.count).toBe(u.files.length);
    expect(volumeFile('/x/cartesia', 12, 1200)).toBe('/x/cartesia.vol0012.tar');
  });
});
