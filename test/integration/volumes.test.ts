/**
 * Split bundles on the real bed: `bundle --split-size` from the synthetic release, each volume
 * checked alone (and by GNU tar, sha256sum and openssl), damaged and missing volumes named, and
 * an install from the volumes compared with an install from the single file by skopeo and S3.
 */
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { beforeAll, describe, expect, inject, it } from 'vitest';
import { openBundle } from '../../src/bundle/reader.ts';
import { run } from '../testbed/run.ts';
import { runCli, type CliResult } from './cli.ts';
import { authFile, sha256, skopeo } from './helpers.ts';
import { installArgs, installEnv, objectsIn, repoExists, s3 } from './install-target.ts';

const bed = inject('testbed');
const fixture = inject('fixture');
const work = join(bed.root, `volumes-test-${randomBytes(3).toString('hex')}`);
const keys = join(work, 'keys');
const pub = join(keys, 'bundle.pub');
const sourceArgs = ['--key-file', bed.saKeyFile, '--gcs-endpoint', bed.gcs.endpoint, '--source-registry', `${bed.source.host}/${bed.source.prefix}`, '--source-ca-file', bed.caFile, '--customer', fixture.customer];
/** About an eighth of the synthetic bundle, and smaller than its largest layers and LoRAs, so they come in pieces. */
const LIMIT = 130_000;
const single = join(work, 'single.tar');
const setA = join(work, 'a');
const setB = join(work, 'b');
let volumes: string[] = [];
const label = (k: number): string => `cartesia.vol${String(k).padStart(3, '0')}.tar (volume ${k} of ${volumes.length})`;
const errorLines = (r: CliResult): string[] => r.stderr.split('\n').filter((l) => l.startsWith('Error:'));
const re = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

interface Summary {
  path: string;
  sha256: string;
  size: number;
  volumes?: { path: string; sha256: string; size: number }[];
}

async function bundle(args: string[]): Promise<Summary> {
  const r = await runCli(['bundle', ...sourceArgs, '--signing-key', join(keys, 'bundle.key'), '--json', ...args]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Summary;
}

/** A copy of set A in a fresh directory, `change` applied there. */
async function copySet(change?: (dir: string) => Promise<void>): Promise<string> {
  const dir = join(work, `set-${randomBytes(3).toString('hex')}`);
  await mkdir(dir);
  for (const f of volumes) await copyFile(f, join(dir, basename(f)));
  await change?.(dir);
  return dir;
}

/** Flips one byte in the middle of the last entry of a volume; returns that entry's path. */
async function flipIn(file: string): Promise<string> {
  const t = (await openBundle(file)).tars[0]!;
  const victim = t.listing.at(-1)!;
  const at = t.extent(victim.path)!.offset + Math.floor(victim.size / 2);
  const fh = await open(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0] = b[0]! ^ 0x01;
    await fh.write(b, 0, 1, at);
  } finally {
    await fh.close();
  }
  return victim.path;
}

/** Installs into a fresh prefix and bucket; checks nothing was written when it must fail. */
async function install(from: string, tag: string, expectCode = 0, extra: string[] = []): Promise<{ r: CliResult; prefix: string; bucket: string; out: string }> {
  const prefix = `vol-${tag}/cartesia`;
  const bucket = `vol-${tag}`;
  const out = join(work, `out-${tag}`);
  await mkdir(out);
  const r = await runCli([...installArgs(from, pub, prefix, bucket, out), '--json', ...extra], { env: installEnv });
  expect(r.code, r.stderr).toBe(expectCode);
  if (expectCode !== 0) {
    expect(errorLines(r)).toHaveLength(1);
    expect(await repoExists(`${prefix}/cartesia-api`, fixture.release.releaseTag)).toBe(false);
    expect(await objectsIn(bucket)).toHaveLength(0);
    expect(await readdir(out)).toEqual([]);
  }
  return { r, prefix, bucket, out };
}

beforeAll(async () => {
  await mkdir(work, { recursive: true });
  expect((await runCli(['keys', 'generate', '--out', keys])).code).toBe(0);
  await bundle(['--output', single, '--cache-dir', join(work, 'cache-a')]);
  await mkdir(setA);
  const a = await bundle(['--output', join(setA, 'cartesia.tar'), '--split-size', String(LIMIT), '--cache-dir', join(work, 'cache-a')]);
  volumes = a.volumes!.map((v) => v.path);
});

describe('bundle --split-size', () => {
  it('writes at least 4 volumes, each within the limit, each a tar that GNU tar, sha256sum -c and openssl check alone', async () => {
    expect(volumes.length).toBeGreaterThanOrEqual(4);
    expect((await readdir(setA)).sort()).toEqual(volumes.map((v) => basename(v)));
    let pieces = 0;
    for (const v of volumes) {
      expect((await stat(v)).size, v).toBeLessThanOrEqual(LIMIT);
      const x = join(work, `x-${basename(v)}`);
      await mkdir(x);
      await run('tar', ['-xf', v, '-C', x]);
      await run('sha256sum', ['--strict', '--quiet', '-c', 'SHA256SUMS'], { cwd: x });
      await writeFile(join(x, 'sig.der'), Buffer.from(await readFile(join(x, 'bundle.json.sig'), 'utf8'), 'base64'));
      expect(await run('openssl', ['dgst', '-sha256', '-verify', pub, '-signature', join(x, 'sig.der'), join(x, 'bundle.json')])).toBe('Verified OK\n');
      pieces += (await run('tar', ['-tf', v])).split('\n').filter((p) => p.startsWith('parts/')).length;
    }
    expect(pieces, 'entries larger than a volume are carried in pieces').toBeGreaterThanOrEqual(2);
    console.log(`[volumes] ${volumes.length} volumes of at most ${LIMIT} bytes, ${pieces} pieces; single file ${(await stat(single)).size} bytes`);
  });

  it('gives byte-identical volumes from another empty cache', async () => {
    await mkdir(setB);
    const b = await bundle(['--output', join(setB, 'cartesia.tar'), '--split-size', String(LIMIT), '--cache-dir', join(work, 'cache-b')]);
    expect(b.volumes!.map((v) => basename(v.path))).toEqual(volumes.map((v) => basename(v)));
    for (const [i, v] of volumes.entries()) expect(b.volumes![i]!.sha256, v).toBe(sha256(await readFile(v)));
  });

  it('refuses a bad or too small size in one line with exit 2, writing nothing', async () => {
    const dir = join(work, 'bad-size');
    await mkdir(dir);
    for (const [size, message] of [
      ['4.7Q', /^Error: --split-size "4\.7Q" is not a size; give bytes/],
      ['20000', /^Error: --split-size 20000 bytes is too small: every volume starts with bundle\.json/],
    ] as const) {
      const r = await runCli(['bundle', ...sourceArgs, '--signing-key', join(keys, 'bundle.key'), '--cache-dir', join(work, 'cache-a'), '--output', join(dir, 'c.tar'), '--split-size', size]);
      expect(r.code, r.stderr).toBe(2);
      expect(errorLines(r)).toHaveLength(1);
      expect(errorLines(r)[0]).toMatch(message);
      expect(await readdir(dir)).toEqual([]);
    }
  });
});

describe('verify and inspect a split bundle', () => {
  it('verifies each volume alone and says which of how many it is; the directory verifies the whole set', async () => {
    for (const [i, v] of volumes.entries()) {
      const r = await runCli(['verify', v, '--public-key', pub]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain(`volume       ${i + 1} of ${volumes.length} (${basename(v)})\n`);
      expect(r.stdout).toMatch(new RegExp(`\\nOK: volume ${i + 1} of ${volumes.length}: \\d+ entries, \\d+ bytes verified; give the directory`));
    }
    const all = await runCli(['verify', setA, '--public-key', pub, '--json']);
    expect(all.code, all.stderr).toBe(0);
    expect(JSON.parse(all.stdout)).toMatchObject({ ok: true, volumes: { count: volumes.length, checked: volumes.map((_, i) => i + 1) } });
  });

  it('names the volume a flipped byte is in, alone and in the set, and install from that set writes nothing', async () => {
    for (const k of [2, volumes.length]) {
      let path = '';
      const dir = await copySet(async (d) => {
        path = await flipIn(join(d, basename(volumes[k - 1]!)));
      });
      const want = new RegExp(`^Error: ${re(label(k))}: ${re(path)} is damaged or changed: its sha256 is [a-f0-9]{64}, bundle\\.json says [a-f0-9]{64}$`);
      for (const target of [dir, join(dir, basename(volumes[k - 1]!))]) {
        const r = await runCli(['verify', target, '--public-key', pub]);
        expect(r.code, r.stderr).toBe(3);
        expect(errorLines(r)).toHaveLength(1);
        expect(errorLines(r)[0]).toMatch(want);
      }
      const { r } = await install(join(dir, 'cartesia.vol001.tar'), `flip${k}`, 3);
      expect(errorLines(r)[0]).toMatch(want);
    }
  });

  it('names a missing volume in verify, inspect and install, which writes nothing', async () => {
    const dir = await copySet((d) => rm(join(d, 'cartesia.vol004.tar')));
    const missing = `Error: volume 4 of ${volumes.length} is missing: there is no ${join(dir, 'cartesia.vol004.tar')}`;
    const v = await runCli(['verify', dir, '--public-key', pub]);
    expect(v.code).toBe(3);
    expect(errorLines(v)).toEqual([missing]);
    const { r } = await install(join(dir, 'cartesia.vol001.tar'), 'missing', 3);
    expect(errorLines(r)).toEqual([missing]);
    const inspect = await runCli(['inspect', dir, '--json']);
    expect(inspect.code, inspect.stderr).toBe(0);
    const out = JSON.parse(inspect.stdout) as { volumes: { count: number; read: number; list: { number: number; present: boolean }[] } };
    expect(out.volumes.count).toBe(volumes.length);
    expect(out.volumes.read).toBe(1);
    expect(out.volumes.list.filter((x) => !x.present).map((x) => x.number)).toEqual([4]);
    const text = await runCli(['inspect', dir]);
    expect(text.stdout).toMatch(/\n {2}4 +cartesia\.vol004\.tar +\d+ +[\d.]+ KiB +MISSING\n/);
  });
});

describe('install from volumes', () => {
  it('leaves the registry and the bucket exactly as an install from the single file does (skopeo and S3 compared)', async () => {
    const one = await install(single, 'single');
    const many = await install(setA, 'split', 0, ['--file-sha256']);
    const auth = await authFile(bed.private.host, bed.private.username, bed.private.password);
    const name = (repo: string) => repo.split('/').at(-1)!;
    for (const img of fixture.images) {
      const layouts: string[] = [];
      for (const prefix of [one.prefix, many.prefix]) {
        const ref = `docker://${bed.private.host}/${prefix}/${name(img.repository)}:${img.tag}`;
        const raw = await skopeo(['inspect', '--raw', '--cert-dir', bed.certDir, '--authfile', auth, ref]);
        expect(raw.ok && `sha256:${sha256(raw.stdout)}`, ref).toBe(img.digest);
        // skopeo pulls every manifest and blob back, checking each digest; the two copies must hold the same blobs.
        const layout = join(work, `pulled-${randomBytes(3).toString('hex')}`);
        const copied = await skopeo(['copy', '--all', '--preserve-digests', '--src-cert-dir', bed.certDir, '--src-authfile', auth, ref, `oci:${layout}:x`]);
        expect(copied.ok, copied.ok ? '' : copied.error).toBe(true);
        layouts.push(layout);
      }
      const [a, b] = await Promise.all(layouts.map(async (l) => (await readdir(join(l, 'blobs', 'sha256'))).sort()));
      expect(b, img.repository).toEqual(a);
      expect(a!.length).toBeGreaterThan(2);
    }
    const objects = async (bucket: string) => {
      const out = new Map<string, string>();
      for (const o of await objectsIn(bucket)) {
        const got = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: o.Key! }));
        out.set(o.Key!, sha256(Buffer.from(await got.Body!.transformToByteArray())));
      }
      return out;
    };
    const [oneObjects, manyObjects] = await Promise.all([objects(one.bucket), objects(many.bucket)]);
    expect(manyObjects).toEqual(oneObjects);
    const customer = fixture.objects.filter((o) => o.bucket === `cartesia-${fixture.customer}`);
    expect(manyObjects.size).toBe(customer.length);
    for (const o of customer) expect(manyObjects.get(o.key), o.key).toBe(o.sha256);
    expect(await readFile(join(many.out, 'values.yaml'), 'utf8')).toBe((await readFile(join(one.out, 'values.yaml'), 'utf8')).replaceAll('vol-single', 'vol-split'));

    const receipt = JSON.parse(await readFile(join(many.out, 'cartesia-install-receipt.json'), 'utf8')) as { bundle: { volumes: { path: string; sha256: string }[] } };
    expect(receipt.bundle.volumes.map((v) => v.path)).toEqual(volumes.map((v) => join(setA, basename(v))));
    for (const v of receipt.bundle.volumes) expect(v.sha256).toBe((await run('sha256sum', [v.path])).split(' ')[0]);
  });
});
