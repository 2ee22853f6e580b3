/**
 * Hostile bundles end to end: one real signed bundle from the CLI, re-packed with one structural
 * change per case (re-signed with the test's key where the change is in bundle.json, so the refusal
 * is about the structure and not the signature). Every case must be refused by `verify` (exit 3)
 * and by `install` before anything is pushed, uploaded or written. The results are written as a
 * table to docs/generated/hostile-bundles.md.
 */
import { createHash, randomBytes, type KeyObject } from 'node:crypto';
import { appendFile, copyFile, mkdir, open, readdir, truncate, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { pack as tarPack, type Header } from 'tar-stream';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { BundleManifest } from '../../src/bundle/manifest.ts';
import { openBundle, type OpenedBundle } from '../../src/bundle/reader.ts';
import { loadSigningKey, signManifest } from '../../src/bundle/sign.ts';
import { installArgs, installEnv, objectsIn, repoExists, s3 } from './install-target.ts';
import { runCli, type CliResult } from './cli.ts';

const bed = inject('testbed');
const fixture = inject('fixture');
const work = join(bed.root, `hostile-test-${randomBytes(3).toString('hex')}`);
const keys = join(work, 'keys');
const good = join(work, 'good.tar');
const small = join(work, 'sonic-3.tar');
const DOC = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'docs', 'generated', 'hostile-bundles.md');
const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const re = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
let n = 0;
const fresh = (what: string): string => join(work, `${String(n++).padStart(2, '0')}-${what}.tar`);

let g: OpenedBundle;
let key: KeyObject;

const errorLines = (r: CliResult): string[] => r.stderr.split('\n').filter((l) => l.startsWith('Error:'));

async function collect(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** A tar entry to pack: content copied from the good bundle's entry `from`, or `body`. */
interface Raw { name: string; from?: string; body?: Buffer; type?: Header['type']; linkname?: string }

/** The good bundle's entries, in order, as they would be re-packed unchanged. */
const base = (): Raw[] => g.index.entries.map((e) => ({ name: e.path, from: e.path }));

/** Writes `entries` with tar-stream (ustar, no padding), as our writer does. */
async function pack(entries: Raw[], file = fresh('packed')): Promise<string> {
  const p = tarPack();
  const fh = await open(file, 'w');
  const drained = (async () => {
    for await (const c of p as AsyncIterable<Buffer>) await fh.write(c);
  })();
  for (const e of entries) {
    const body = e.body ?? (e.from === undefined ? Buffer.alloc(0) : await collect(g.open(e.from)));
    const header: Partial<Header> & { name: string } = { name: e.name, type: e.type ?? 'file', size: body.length, mode: 0o644, uid: 0, gid: 0, uname: '', gname: '', mtime: new Date(g.manifest.created) };
    if (e.linkname !== undefined) header.linkname = e.linkname;
    if (e.type === 'character-device') Object.assign(header, { devmajor: 1, devminor: 3 }); // /dev/null
    await new Promise<void>((resolve, reject) => p.entry(header, body, (err) => (err ? reject(err) : resolve())));
  }
  p.finalize();
  await drained;
  await fh.close();
  return file;
}

/** Re-packs with bundle.json edited and signed again with the test's key: the signature is valid. */
async function resigned(edit: (m: BundleManifest, raw: Raw[]) => void, what: string): Promise<string> {
  const raw = base();
  const m = JSON.parse(g.manifestBytes.toString('utf8')) as BundleManifest;
  edit(m, raw);
  const json = Buffer.from(`${JSON.stringify(m, null, 2)}\n`);
  raw[0] = { name: 'bundle.json', body: json };
  raw[1] = { name: 'bundle.json.sig', body: Buffer.from(signManifest(json, key)) };
  return pack(raw, fresh(what));
}

/** A byte copy of the good bundle cut `at` bytes into `path` (or at an absolute offset). */
async function cut(what: string, path: string | number, at = 0): Promise<string> {
  const file = fresh(`cut-${what}`);
  await copyFile(good, file);
  await truncate(file, typeof path === 'number' ? path : g.entry(path)!.offset + at);
  return file;
}

const blob = () => g.manifest.entries.filter((e) => e.path.startsWith('images/blobs/')).sort((x, y) => y.size - x.size)[0]!;
const artifact = () => [...g.manifest.artifacts].sort((x, y) => y.size - x.size)[0]!;
const at = (path: string) => `the entry ${re(JSON.stringify(path))} at byte \\d+`;
/** scanTar's refusal when the file ends inside the content of `path`, cut `by` bytes in. */
const truncated = (path: string, by: number) => {
  const e = g.entry(path)!;
  return new RegExp(`^bundle ${re(work)}/\\S+: truncated archive: the ${e.size}-byte content at byte ${e.offset} runs past the end of the file \\(${e.offset + by} bytes\\)$`);
};

interface Case { name: string; make: () => Promise<string>; reason: () => RegExp }

const cases: Case[] = [
  { name: 'path traversal (`../evil`)', make: () => pack([...base(), { name: '../evil', body: Buffer.from('x') }]), reason: () => new RegExp(`^${at('../evil')} has an unsafe path \\(absolute, empty or with \\.\\.\\)$`) },
  { name: 'absolute path (`/etc/evil`)', make: () => pack([...base(), { name: '/etc/evil', body: Buffer.from('x') }]), reason: () => new RegExp(`^${at('/etc/evil')} has an unsafe path`) },
  { name: 'symlink entry', make: () => pack([...base(), { name: 'images/link', type: 'symlink', linkname: '/etc/passwd' }]), reason: () => new RegExp(`^${at('images/link')} is a symlink; a bundle holds only regular files$`) },
  { name: 'hard link entry', make: () => pack([...base(), { name: 'images/hard', type: 'link', linkname: 'SHA256SUMS' }]), reason: () => new RegExp(`^${at('images/hard')} is a hardlink; a bundle holds only regular files$`) },
  { name: 'character device entry', make: () => pack([...base(), { name: 'images/null', type: 'character-device' }]), reason: () => new RegExp(`^${at('images/null')} is a character-device; a bundle holds only regular files$`) },
  {
    name: 'duplicate entry (an image blob twice)',
    make: () => pack(base().flatMap((r) => (r.name === blob().path ? [r, r] : [r]))),
    reason: () => new RegExp(`^${re(JSON.stringify(blob().path))} appears twice in the bundle \\(again at byte \\d+\\)$`),
  },
  {
    name: 'entry not in bundle.json',
    make: () => pack([...base(), { name: `${artifact().path}.extra`, body: Buffer.from('x') }]),
    reason: () => new RegExp(`^${at(`${artifact().path}.extra`)} is not listed in bundle\\.json$`),
  },
  {
    name: 'bundle.json (re-signed) lists `etc/passwd`',
    make: () => resigned((m, raw) => {
      m.entries.push({ path: 'etc/passwd', size: 1, sha256: sha256('x') });
      raw.push({ name: 'etc/passwd', body: Buffer.from('x') });
    }, 'etc-passwd'),
    reason: () => /^bundle\.json lists "etc\/passwd", outside the names a bundle may hold \(SHA256SUMS, tool\/, release\/, images\/, artifacts\/\)$/,
  },
  {
    name: 'bundle.json (re-signed) declares an entry larger than the file',
    make: () => resigned((m) => (m.entries.find((e) => e.path === artifact().path)!.size = 2 ** 40), 'huge'),
    reason: () => new RegExp(`^${re(artifact().path)} is ${artifact().size} bytes in the tar, but bundle\\.json says ${2 ** 40}$`),
  },
  { name: 'truncated inside bundle.json', make: () => cut('manifest', 'bundle.json', 100), reason: () => truncated('bundle.json', 100) },
  { name: 'truncated inside the signature', make: () => cut('sig', 'bundle.json.sig', 10), reason: () => truncated('bundle.json.sig', 10) },
  { name: 'truncated inside SHA256SUMS', make: () => cut('sums', 'SHA256SUMS', 70), reason: () => truncated('SHA256SUMS', 70) },
  { name: 'truncated inside an image blob', make: () => cut('blob', blob().path, Math.floor(blob().size / 2)), reason: () => truncated(blob().path, Math.floor(blob().size / 2)) },
  { name: 'truncated inside an artifact', make: () => cut('artifact', artifact().path, Math.floor(artifact().size / 2)), reason: () => truncated(artifact().path, Math.floor(artifact().size / 2)) },
  {
    name: 'truncated inside the end-of-archive blocks',
    make: () => cut('end', g.index.endOffset + 512),
    reason: () => new RegExp(`^bundle ${re(work)}/\\S+: missing second end-of-archive block at byte ${g.index.endOffset + 512}$`),
  },
  {
    name: 'trailing garbage after the end',
    make: async () => {
      const file = fresh('trailing');
      await copyFile(good, file);
      await appendFile(file, 'garbage\n');
      return file;
    },
    reason: () => new RegExp(`^trailing data: 8 bytes after the end of the archive at byte ${g.index.endOffset + 1024}$`),
  },
  {
    name: 'swapped signature (of another bundle, same key)',
    make: async () => {
      const other = await collect((await openBundle(small)).open('bundle.json.sig'));
      return pack(base().map((r) => (r.name === 'bundle.json.sig' ? { ...r, body: other } : r)), fresh('swapped-sig'));
    },
    reason: () => /^bundle\.json\.sig does not verify bundle\.json with the key SHA256:[a-f0-9]{64}: bundle\.json or its signature was changed or damaged$/,
  },
  {
    name: 'images/index.json (re-signed) names a manifest not in the bundle',
    make: () => withIndex((manifests) => void (manifests[0]!.digest = GHOST), 'index-json'),
    reason: () => new RegExp(`^images/index\\.json names ${GHOST} for \\S+, but bundle\\.json says sha256:[a-f0-9]{64}$`),
  },
  {
    name: 'images/index.json (re-signed) has an extra entry whose manifest is not in the bundle',
    make: () => withIndex((manifests) => void manifests.push({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: GHOST, size: 100, annotations: { 'org.opencontainers.image.ref.name': 'ghost:1' } }), 'index-json-extra'),
    reason: () => new RegExp(`^images/index\\.json names ${GHOST}, which is not in the bundle$`),
  },
];

const GHOST = `sha256:${'e'.repeat(64)}`;

type IndexEntry = { mediaType: string; digest: string; size: number; annotations?: Record<string, string> };

/** The good bundle with images/index.json edited, and bundle.json and SHA256SUMS (re-signed) agreeing with it. */
async function withIndex(edit: (manifests: IndexEntry[]) => void, name: string): Promise<string> {
  const index = JSON.parse((await collect(g.open('images/index.json'))).toString('utf8')) as { manifests: IndexEntry[] };
  edit(index.manifests);
  const indexBytes = Buffer.from(`${JSON.stringify(index, null, 2)}\n`);
  const sums = Buffer.from((await collect(g.open('SHA256SUMS'))).toString('utf8').replace(/^[a-f0-9]{64}(?= {2}images\/index\.json$)/m, sha256(indexBytes)));
  return resigned((m, raw) => {
    for (const [path, bytes] of [['images/index.json', indexBytes], ['SHA256SUMS', sums]] as const) {
      Object.assign(m.entries.find((e) => e.path === path)!, { size: bytes.length, sha256: sha256(bytes) });
      raw.find((r) => r.name === path)!.body = bytes;
    }
  }, name);
}

interface Row { case: string; verifyExit: number | null; installExit: number | null; reason: string; registryUnchanged: boolean; bucketUnchanged: boolean }
const rows: Row[] = [];

beforeAll(async () => {
  await mkdir(work, { recursive: true });
  expect((await runCli(['keys', 'generate', '--out', keys])).code).toBe(0);
  const source = ['--key-file', bed.saKeyFile, '--gcs-endpoint', bed.gcs.endpoint, '--source-registry', `${bed.source.host}/${bed.source.prefix}`, '--source-ca-file', bed.caFile];
  const sign = ['--signing-key', join(keys, 'bundle.key'), '--cache-dir', join(work, 'cache')];
  const r = await runCli(['bundle', '--output', good, ...source, '--customer', fixture.customer, ...sign]);
  expect(r.code, r.stderr).toBe(0);
  const s = await runCli(['bundle', '--output', small, ...source, '--models', 'sonic-3', ...sign]);
  expect(s.code, s.stderr).toBe(0);
  g = await openBundle(good);
  key = await loadSigningKey(join(keys, 'bundle.key'));
});

afterAll(async () => {
  const cell = (s: string) => s.replaceAll(work, '$WORK').replace(/SHA256:[a-f0-9]{64}/g, 'SHA256:<test key>').replaceAll('|', '\\|');
  const table = [
    '<!-- Generated by test/integration/hostile.test.ts; do not edit. -->',
    '# Hostile bundles: how `verify` and `install` refuse them',
    '',
    'Generated by test/integration/hostile.test.ts from one real signed bundle. Exit 3 is "the bundle failed verification";',
    '"registry/bucket unchanged": after the refused install, the private registry has no `PREFIX/cartesia-api:TAG` and the bucket no objects.',
    '',
    '| case | verify exit | install exit | reason | registry unchanged | bucket unchanged |',
    '| --- | --- | --- | --- | --- | --- |',
    ...rows.map((r) => `| ${cell(r.case)} | ${r.verifyExit} | ${r.installExit} | ${cell(r.reason)} | ${r.registryUnchanged ? 'yes' : 'NO'} | ${r.bucketUnchanged ? 'yes' : 'NO'} |`),
    '',
  ].join('\n');
  await writeFile(join(bed.root, 'hostile-table.md'), table);
  // Only a run of every case rewrites the repo's copy (not `-t` or a failed beforeAll).
  if (rows.filter(Boolean).length !== cases.length) return;
  await mkdir(dirname(DOC), { recursive: true });
  await writeFile(DOC, table);
});

describe('hostile bundles: verify and install refuse each, writing nothing', () => {
  it('controls: the good bundle and an unchanged re-pack verify; the two bundles carry different signatures', async () => {
    for (const file of [good, await pack(base(), fresh('repacked'))]) {
      const r = await runCli(['verify', file, '--public-key', join(keys, 'bundle.pub')]);
      expect(r.code, r.stderr).toBe(0);
    }
    expect(g.signature).toBeDefined();
    expect((await openBundle(small)).signature).not.toBe(g.signature);
  });

  it.each(cases.map((c, i) => [c.name, c, i] as const))('%s', async (_name, c, i) => {
    const file = await c.make();
    const v = await runCli(['verify', file, '--public-key', join(keys, 'bundle.pub')]);
    const tag = `${String(i).padStart(2, '0')}-${randomBytes(3).toString('hex')}`;
    const [prefix, bucket, out] = [`hostile-${tag}/cartesia`, `hostile-${tag}`, join(work, `out-${tag}`)];
    await mkdir(out);
    const inst = await runCli(installArgs(file, join(keys, 'bundle.pub'), prefix, bucket, out), { env: installEnv });
    const registryUnchanged = !(await repoExists(`${prefix}/cartesia-api`, fixture.release.releaseTag));
    const bucketUnchanged = (await objectsIn(bucket)).length === 0;
    const reason = (errorLines(v)[0] ?? '(no Error: line)').replace(/^Error: /, '');
    rows[i] = { case: c.name, verifyExit: v.code, installExit: inst.code, reason, registryUnchanged, bucketUnchanged };

    expect(v.code, v.stderr).toBe(3);
    expect(errorLines(v), v.stderr).toHaveLength(1);
    expect(reason).toMatch(c.reason());
    expect(v.stdout).not.toContain('OK:');
    expect(inst.code, inst.stderr).toBe(3);
    expect(errorLines(inst), inst.stderr).toEqual([`Error: ${reason}`]);
    expect(registryUnchanged).toBe(true);
    expect(bucketUnchanged).toBe(true);
    expect(await readdir(out)).toEqual([]);
  });
});
