import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm, symlink, link, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OciError } from '../../src/oci/errors.ts';
import { TarLayoutFiles } from '../../src/oci/tar-files.ts';
import { isSafeRelativePath, scanTar } from '../../src/tar/index.ts';
import type { TarIndex } from '../../src/tar/index.ts';

const execFileP = promisify(execFile);
const tar = async (...args: string[]): Promise<string> => (await execFileP('/usr/bin/tar', args, { maxBuffer: 1 << 26 })).stdout;
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

let tmp = '';
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'airgap-tar-'));
});
afterAll(async () => {
  if (tmp !== '') await rm(tmp, { recursive: true, force: true });
});

async function readRange(file: string, offset: number, size: number): Promise<Buffer> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(size);
    const { bytesRead } = await fh.read(buf, 0, size, offset);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** The scanner's error for `file`, which must be a one-line OciError 'LAYOUT'. */
async function scanError(file: string): Promise<string> {
  const err: unknown = await scanTar(file).then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(OciError);
  expect((err as OciError).code).toBe('LAYOUT');
  expect((err as OciError).message).not.toContain('\n');
  return (err as OciError).message;
}

/** GNU tar's own listing, normalised like scanTar's: `./` stripped, no trailing `/` on directories. */
async function gnuListing(file: string): Promise<{ path: string; type: string; size: number; linkname?: string }[]> {
  const norm = (p: string): string => p.replace(/^(\.\/)+/, '').replace(/(.)\/$/, '$1').replace(/^\.\/?$/, '');
  const types: Record<string, string> = { '-': 'file', d: 'directory', l: 'symlink', h: 'hardlink' };
  const lines = (await tar('--numeric-owner', '-tvf', file)).split('\n').filter((l) => l !== '');
  return lines.map((line) => {
    const m = /^(\S)\S*\s+\S+\s+(\d+)\s+\S+\s+\S+\s(.*)$/.exec(line);
    if (m === null) throw new Error(`unparsed tar -tv line: ${line}`);
    const [, t = '', size = '', rest = ''] = m;
    const type = types[t] ?? 'other';
    if (type === 'symlink') {
      const [p = '', target = ''] = rest.split(' -> ');
      return { path: norm(p), type, size: Number(size), linkname: target };
    }
    if (type === 'hardlink') {
      const [p = '', target = ''] = rest.split(' link to ');
      return { path: norm(p), type, size: Number(size), linkname: norm(target) };
    }
    return { path: norm(rest), type, size: Number(size) };
  });
}

async function expectMatchesGnuTar(file: string, src: string): Promise<TarIndex> {
  const index = await scanTar(file);
  const ours = index.entries.map((e) => ({ path: e.path, type: e.type, size: e.size, ...(e.linkname === undefined ? {} : { linkname: e.linkname }) }));
  expect(ours).toEqual(await gnuListing(file));
  expect(index.endOffset + 1024).toBeLessThanOrEqual(index.fileSize);
  for (const e of index.entries.filter((x) => x.type === 'file')) {
    expect(sha256(await readRange(file, e.offset, e.size)), e.path).toBe(sha256(await readFile(join(src, e.path))));
  }
  return index;
}

describe('scanTar against GNU tar', () => {
  const longDir = `d/${'x'.repeat(170)}`; // > 155 bytes: ustar's prefix field cannot hold it
  const longPath = `${longDir}/long-file-name-${'y'.repeat(60)}`;
  const longTarget = `target-${'z'.repeat(150)}`;
  let src = '';

  beforeAll(async () => {
    src = join(tmp, 'tree');
    await mkdir(join(src, longDir), { recursive: true });
    await mkdir(join(src, 'empty-dir'));
    for (const n of [0, 1, 511, 512, 513, (1 << 20) + 3]) await writeFile(join(src, `f${n}`), randomBytes(n));
    await writeFile(join(src, longPath), randomBytes(700));
    await symlink('f511', join(src, 'short-link'));
    await symlink(longTarget, join(src, 'long-link'));
    await link(join(src, 'f513'), join(src, 'hard-link'));
  });

  for (const format of ['posix', 'gnu']) {
    it(`lists the same entries as tar -tv for --format=${format}, and offsets point at the file bytes`, async () => {
      const file = join(tmp, `tree-${format}.tar`);
      await tar(`--format=${format}`, '-C', src, '-cf', file, '.');
      const index = await expectMatchesGnuTar(file, src);
      const byPath = new Map(index.entries.map((e) => [e.path, e]));
      expect(byPath.get('')?.type).toBe('directory'); // the `./` root entry
      expect(byPath.get(longPath)?.size).toBe(700);
      expect(byPath.get('long-link')?.linkname).toBe(longTarget);
      // Whichever of the two names tar met first holds the bytes; the other links to it.
      const pair = [byPath.get('hard-link'), byPath.get('f513')];
      const plain = pair.find((e) => e?.type === 'file');
      expect(plain?.size).toBe(513);
      expect(pair.find((e) => e?.type === 'hardlink')).toMatchObject({ size: 0, linkname: plain?.path });
      expect(byPath.get('empty-dir')?.type).toBe('directory');
      expect(byPath.get(`f${(1 << 20) + 3}`)).toMatchObject({ type: 'file', size: (1 << 20) + 3, mode: 0o644 });
    });
  }

  it('joins the ustar prefix and name fields (--format=ustar)', async () => {
    const tree = join(tmp, 'ustar-tree');
    const p = `${'p'.repeat(80)}/${'q'.repeat(60)}`; // 141 bytes: needs the prefix field
    await mkdir(join(tree, 'p'.repeat(80)), { recursive: true });
    await writeFile(join(tree, p), 'prefixed\n');
    const file = join(tmp, 'ustar.tar');
    await tar('--format=ustar', '-C', tree, '-cf', file, p);
    const index = await expectMatchesGnuTar(file, tree);
    expect(index.entries.map((e) => e.path)).toEqual([p]);
  });

  it('skips a global pax header without applying it', async () => {
    const file = join(tmp, 'global.tar');
    await tar('--format=posix', '--pax-option=comment=hello', '-C', src, '-cf', file, 'f1', 'f512');
    expect((await readRange(file, 156, 1)).toString()).toBe('g');
    await expectMatchesGnuTar(file, src);
  });
});

/** A GNU-format header whose size is `size`, written base-256 when octal cannot hold it. */
function gnuHeader(name: string, typeflag: string, size: number): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 'utf8');
  h.write('0000644\0', 100, 'latin1');
  h.write('0000000\0', 108, 'latin1');
  h.write('0000000\0', 116, 'latin1');
  if (size < 8 ** 11) {
    h.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  } else {
    h[124] = 0x80;
    h.writeBigUInt64BE(BigInt(size), 128);
  }
  h.write('14733154130\0', 136, 'latin1');
  h.write(typeflag, 156, 'latin1');
  h.write('ustar  \0', 257, 'latin1');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}

describe('scanTar sizes and errors', () => {
  it('reads a GNU base-256 size above 8 GiB, as GNU tar does', async () => {
    const size = 9 * 2 ** 30;
    const file = join(tmp, 'huge.tar');
    await writeFile(file, gnuHeader('huge.bin', '0', size));
    await truncate(file, 512 + size + 1024); // sparse: the content and end blocks are holes of zeros
    const index = await scanTar(file);
    expect(index.entries).toEqual([expect.objectContaining({ path: 'huge.bin', type: 'file', size, offset: 512, headerOffset: 0 })]);
    expect(index.endOffset).toBe(512 + size);
    expect(index.fileSize).toBe(512 + size + 1024);
    expect((await tar('-tvf', file)).split(/\s+/)[2]).toBe(String(size));
  });

  describe('damaged archives', () => {
    let good = '';
    let index: TarIndex | undefined;
    const variant = async (name: string, edit: (f: string) => Promise<void>): Promise<string> => {
      const f = join(tmp, name);
      await writeFile(f, await readFile(good));
      await edit(f);
      return f;
    };
    const entry = (p: string) => index?.entries.find((e) => e.path === p) ?? expect.fail(`no ${p}`);

    beforeAll(async () => {
      const tree = join(tmp, 'small');
      await mkdir(tree);
      await writeFile(join(tree, 'a'), randomBytes(1000));
      await writeFile(join(tree, 'b'), randomBytes(10));
      good = join(tmp, 'small.tar');
      await tar('--format=gnu', '-C', tree, '-cf', good, 'a', 'b');
      index = await scanTar(good);
    });

    it('refuses content cut short', async () => {
      const a = entry('a');
      const f = await variant('cut-content.tar', (f) => truncate(f, a.offset + 100));
      expect(await scanError(f)).toMatch(new RegExp(`truncated archive.*byte ${a.offset}\\b`));
    });

    it('refuses a header cut short', async () => {
      const b = entry('b');
      const f = await variant('cut-header.tar', (f) => truncate(f, b.headerOffset + 100));
      expect(await scanError(f)).toMatch(new RegExp(`truncated header at byte ${b.headerOffset}\\b`));
    });

    it('refuses a header whose checksum is wrong', async () => {
      const b = entry('b');
      const f = await variant('flipped.tar', async (f) => {
        const fh = await open(f, 'r+');
        await fh.write(Buffer.from('c'), 0, 1, b.headerOffset); // name 'b' → 'c'
        await fh.close();
      });
      expect(await scanError(f)).toMatch(new RegExp(`bad header checksum at byte ${b.headerOffset}\\b`));
    });

    it('refuses an archive without its end-of-archive blocks', async () => {
      const end = index?.endOffset ?? 0;
      const none = await variant('no-end.tar', (f) => truncate(f, end));
      expect(await scanError(none)).toMatch(new RegExp(`missing end-of-archive blocks.*byte ${end}\\b`));
      const one = await variant('one-end.tar', (f) => truncate(f, end + 512));
      expect(await scanError(one)).toMatch(new RegExp(`missing second end-of-archive block at byte ${end + 512}\\b`));
    });

    it('refuses a lone zero block followed by more entries', async () => {
      const f = join(tmp, 'lone-zero.tar');
      await writeFile(f, Buffer.concat([Buffer.alloc(512), gnuHeader('x', '0', 0), Buffer.alloc(1024)]));
      expect(await scanError(f)).toMatch(/lone zero block at byte 0\b/);
    });

    it('refuses a directory that declares content bytes', async () => {
      const f = join(tmp, 'dir-size.tar');
      await writeFile(f, Buffer.concat([gnuHeader('dir/', '5', 512), Buffer.alloc(512 + 1024)]));
      expect(await scanError(f)).toMatch(/directory entry 'dir\/' at byte 0 declares 512 content bytes/);
    });
  });

  it('isSafeRelativePath accepts plain relative paths only', () => {
    expect(isSafeRelativePath('blobs/sha256/abc')).toBe(true);
    for (const p of ['', '/etc/passwd', '../x', 'a/../b', 'a//b', 'a/', './a', 'a\\b', 'a\0b']) expect(isSafeRelativePath(p), p).toBe(false);
  });
});

describe('TarLayoutFiles', () => {
  const blob = randomBytes(3000);
  const config = Buffer.from('{"architecture":"amd64","os":"linux"}');
  const index = Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [] }));
  let parent = '';
  let file = '';

  beforeAll(async () => {
    parent = join(tmp, 'layout-parent');
    const blobs = join(parent, 'images', 'blobs', 'sha256');
    await mkdir(blobs, { recursive: true });
    await writeFile(join(parent, 'images', 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    await writeFile(join(parent, 'images', 'index.json'), index);
    for (const b of [blob, config, Buffer.alloc(0)]) await writeFile(join(blobs, sha256(b)), b);
    file = join(tmp, 'layout.tar');
    await tar('-C', parent, '-cf', file, 'images');
  });

  it('serves the layout under images/ by byte offset', async () => {
    const files = await TarLayoutFiles.open(file, 'images/');
    expect(files.description).toBe(`tar:${file}:images/`);
    expect(await files.read('index.json')).toEqual(index);
    expect(await files.size('oci-layout')).toBe(30);
    const path = `blobs/sha256/${sha256(blob)}`;
    expect(await files.size(path)).toBe(3000);
    expect(await collect(await files.open(path, 0))).toEqual(blob);
    expect(await collect(await files.open(path, 5))).toEqual(blob.subarray(5));
    expect(await collect(await files.open(path, 3000))).toEqual(Buffer.alloc(0));
    expect(await files.read(`blobs/sha256/${sha256(config)}`)).toEqual(config);
    const empty = `blobs/sha256/${sha256(Buffer.alloc(0))}`;
    expect(await files.size(empty)).toBe(0);
    expect(await collect(await files.open(empty, 0))).toEqual(Buffer.alloc(0));
    expect(await files.size('absent.json')).toBeUndefined();
    expect(await files.size('blobs')).toBeUndefined(); // directories are not files
    await expect(files.read('absent.json')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(files.open(path, 3001)).rejects.toBeInstanceOf(OciError);
  });

  it('serves a layout at the root of the tar with an empty prefix', async () => {
    const root = join(tmp, 'layout-root.tar');
    await tar('-C', join(parent, 'images'), '-cf', root, '.');
    const files = await TarLayoutFiles.open(root, '');
    expect(files.description).toBe(`tar:${root}`);
    expect(await files.read('index.json')).toEqual(index);
  });

  it('refuses a tar in which a path appears twice', async () => {
    const dup = join(tmp, 'dup.tar');
    await writeFile(dup, await readFile(file));
    await tar('-C', parent, '-rf', dup, 'images/index.json');
    await expect(TarLayoutFiles.open(dup, 'images')).rejects.toThrow(/'images\/index\.json' appears more than once/);
  });
});
