import { execFile } from 'node:child_process';
import { createHash, createPrivateKey, randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm, stat, symlink, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { describe, expect, it, vi } from 'vitest';
import { Arrivals } from '../../src/bundle/arrivals.ts';
import { generateSigningKeyPair } from '../../src/bundle/keys.ts';
import { bundleManifestSchema, type BundleManifest } from '../../src/bundle/manifest.ts';
import { loadSigningKey } from '../../src/bundle/sign.ts';
import { pack as tarPack } from 'tar-stream';
import { fileEntry, writeBundle, writeTarFile, type EntrySource, type WriteBundleOptions } from '../../src/bundle/writer.ts';
import { isOciError } from '../../src/oci/errors.ts';
import { run } from '../testbed/run.ts';
import { rejection, scratchDir } from './helpers.ts';

const execFileP = promisify(execFile);
const MTIME = new Date('2025-11-18T12:34:56Z');
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const sha256sum = async (file: string) => (await run('sha256sum', [file])).split(' ')[0];
const BUCKET = 'cartesia-acme';
// 150+ characters with short components (fits ustar's prefix field) and one with a 120-character
// name (needs a pax header).
const LONG_PREFIXED = `artifacts/${BUCKET}/loras/voice-clones/2025/november/customer-acme-en-us/speaker-0042/checkpoints/step-0012000/adapter_model.safetensors`;
const LONG_PAX = `artifacts/${BUCKET}/loras/${'x'.repeat(120)}.bin`;

interface Fixture {
  dir: string;
  entries: EntrySource[];
  manifest: WriteBundleOptions['manifest'];
}

async function fixture(): Promise<Fixture> {
  const dir = await scratchDir('airgap-writer-');
  await mkdir(join(dir, 'src'));
  const archive = randomBytes(300_000);
  const blob = randomBytes(2_500_000 + 17); // several 1 MiB reads, and not a multiple of 512
  const contents: [string, Buffer][] = [
    ['release/cartesia-kube-1.4.2.tar.gz', archive],
    ['release/VERSION', Buffer.from('1.4.2\n')],
    ['release/SHA256SUMS', Buffer.from(`${sha256(archive)}  cartesia-kube-1.4.2.tar.gz\n`)],
    ['images/oci-layout', Buffer.from('{"imageLayoutVersion":"1.0.0"}')],
    [`images/blobs/sha256/${sha256(blob)}`, blob],
    ['images/index.json', Buffer.from('{"schemaVersion":2,"manifests":[]}')],
    [`artifacts/${BUCKET}/migrations/0001_init.sql`, Buffer.from('create table voices (id text);\n')],
    [LONG_PREFIXED, randomBytes(4096)],
    [LONG_PAX, randomBytes(513)],
    [`artifacts/${BUCKET}/empty.marker`, Buffer.alloc(0)],
  ];
  const entries: EntrySource[] = [];
  for (const [i, [path, bytes]] of contents.entries()) {
    await writeFile(join(dir, 'src', String(i)), bytes);
    entries.push(fileEntry(path, join(dir, 'src', String(i)), bytes.length, sha256(bytes)));
  }
  const digest = `sha256:${sha256(blob)}`;
  const manifest: WriteBundleOptions['manifest'] = {
    formatVersion: 1,
    tool: { name: 'cartesia-airgap', version: '0.1.0' },
    created: MTIME.toISOString(),
    recipe: { name: 'cartesia', sha256: 'a'.repeat(64) },
    release: { version: '1.4.2', tag: 'sonic-20251118', archive: { path: entries[0]!.path, sha256: entries[0]!.sha256, size: entries[0]!.size } },
    customer: { name: 'acme', bucket: BUCKET },
    images: [{ name: 'cartesia-api', source: 'us-docker.pkg.dev/cartesia-external/self-serve/cartesia-api:sonic-20251118', tag: 'sonic-20251118', digest, mediaType: 'application/vnd.oci.image.index.v1+json', ref: 'cartesia-api:sonic-20251118', platforms: [{ os: 'linux', architecture: 'amd64', digest }], size: blob.length }],
    artifacts: entries.filter((e) => e.path.startsWith('artifacts/')).map((e) => ({ bucket: BUCKET, key: e.path.slice(`artifacts/${BUCKET}/`.length), size: e.size, sha256: e.sha256, path: e.path })),
  };
  return { dir, entries, manifest };
}

/** `tar -tv` as [mode, uid, gid, size, time, path] rows; GNU tar must not warn about anything. */
async function tarList(file: string): Promise<string[][]> {
  const { stdout, stderr } = await execFileP('tar', ['--full-time', '--numeric-owner', '-tvf', file], { env: { ...process.env, TZ: 'UTC' } });
  expect(stderr).toBe('');
  return stdout.trimEnd().split('\n').map((line) => {
    const m = /^(\S+) (\d+)\/(\d+) +(\d+) (\S+ \S+) (.*)$/.exec(line);
    expect(m, line).not.toBeNull();
    return m!.slice(1);
  });
}

async function extract(file: string): Promise<string> {
  const out = await scratchDir('airgap-extract-');
  await run('tar', ['-xf', file, '-C', out]);
  return out;
}

describe('writeBundle', () => {
  it('writes a signed tar that GNU tar lists exactly, sha256sum -c checks and openssl verifies', async () => {
    const fx = await fixture();
    const pair = generateSigningKeyPair();
    await writeFile(join(fx.dir, 'k.key'), pair.privateKeyPem);
    await writeFile(join(fx.dir, 'k.pub'), pair.publicKeyPem);
    const output = join(fx.dir, 'release.tar');
    const progress = new Map<string, number>();
    const res = await writeBundle({ output, manifest: fx.manifest, entries: fx.entries, signingKey: await loadSigningKey(join(fx.dir, 'k.key')), mtime: MTIME, onBytes: (p, n) => progress.set(p, n) });

    const rows = await tarList(output);
    expect(rows.map((r) => r[5])).toEqual(['bundle.json', 'bundle.json.sig', 'SHA256SUMS', ...fx.entries.map((e) => e.path)]);
    for (const [mode, uid, gid, , time] of rows) expect([mode, uid, gid, time]).toEqual(['-rw-r--r--', '0', '0', '2025-11-18 12:34:56']);
    expect(rows.slice(3).map((r) => Number(r[3]))).toEqual(fx.entries.map((e) => e.size));
    expect(Object.fromEntries(progress)).toEqual(Object.fromEntries(fx.entries.map((e) => [e.path, e.size])));

    const x = await extract(output);
    expect(await run('sha256sum', ['--strict', '-c', 'SHA256SUMS'], { cwd: x })).toBe(fx.entries.map((e) => `${e.path}: OK\n`).join(''));
    const sums = await readFile(join(x, 'SHA256SUMS'));
    const sig = await readFile(join(x, 'bundle.json.sig'), 'utf8');
    expect(sig).toMatch(/^[A-Za-z0-9+/]+={0,2}\n$/);
    await writeFile(join(fx.dir, 'sig.der'), Buffer.from(sig, 'base64'));
    expect(await run('openssl', ['dgst', '-sha256', '-verify', join(fx.dir, 'k.pub'), '-signature', join(fx.dir, 'sig.der'), join(x, 'bundle.json')])).toBe('Verified OK\n');

    const json = await readFile(join(x, 'bundle.json'), 'utf8');
    const parsed: BundleManifest = bundleManifestSchema.parse(JSON.parse(json));
    expect(json).toBe(`${JSON.stringify(res.manifest, null, 2)}\n`);
    expect(parsed).toEqual(res.manifest);
    // Schema order; optional keys this bundle lacks are left out.
    expect(Object.keys(JSON.parse(json) as object)).toEqual(Object.keys(bundleManifestSchema.shape).filter((k) => (res.manifest as Record<string, unknown>)[k] !== undefined));
    expect(parsed.signer).toEqual({ algorithm: 'ecdsa-p256-sha256', fingerprint: pair.fingerprint });
    expect(parsed.entries[0]).toEqual({ path: 'SHA256SUMS', size: sums.length, sha256: await sha256sum(join(x, 'SHA256SUMS')) });
    expect(parsed.entries.slice(1)).toEqual(fx.entries.map(({ path, size, sha256 }) => ({ path, size, sha256 })));

    expect(res.path).toBe(output);
    expect(res.sha256).toBe(await sha256sum(output));
    expect(res.size).toBe((await stat(output)).size);
    expect(await readdir(fx.dir)).not.toContain('release.tar.partial');
  });

  it('gives byte-identical tars for the same inputs (unsigned), whatever the manifest key order', async () => {
    const fx = await fixture();
    const a = await writeBundle({ output: join(fx.dir, 'a.tar'), manifest: fx.manifest, entries: fx.entries, mtime: MTIME });
    const reordered = Object.fromEntries(Object.entries(fx.manifest).reverse()) as WriteBundleOptions['manifest'];
    const b = await writeBundle({ output: join(fx.dir, 'b.tar'), manifest: reordered, entries: fx.entries, mtime: MTIME });
    const sumA = await sha256sum(join(fx.dir, 'a.tar'));
    expect(sumA).toBe(await sha256sum(join(fx.dir, 'b.tar')));
    expect([a.sha256, b.sha256]).toEqual([sumA, sumA]);
    expect(a.manifest.signer).toBeNull();
    expect((await tarList(join(fx.dir, 'a.tar'))).map((r) => r[5]).slice(0, 3)).toEqual(['bundle.json', 'SHA256SUMS', 'release/cartesia-kube-1.4.2.tar.gz']);
  });

  it('signed twice with the same key: byte-identical tars (deterministic ECDSA nonces)', async () => {
    const fx = await fixture();
    const signingKey = createPrivateKey(generateSigningKeyPair().privateKeyPem);
    const a = await writeBundle({ output: join(fx.dir, 'a.tar'), manifest: fx.manifest, entries: fx.entries, signingKey, mtime: MTIME });
    const b = await writeBundle({ output: join(fx.dir, 'b.tar'), manifest: fx.manifest, entries: fx.entries, signingKey, mtime: MTIME });
    expect(a.sha256).toBe(b.sha256);
    expect((await run('sha256sum', [a.path, b.path])).split('\n').map((l) => l.split(' ')[0]).filter(Boolean)).toEqual([a.sha256, a.sha256]);
  });

  // A local file is read in place (EntrySource.file); any other source through its stream.
  const streamOnly = ({ file: _file, ...e }: EntrySource): EntrySource => e;
  it.each(([
    ['sha256', (e: EntrySource) => ({ ...e, sha256: 'f'.repeat(64) }), /sha256 [0-9a-f]{64}, declared f{64}/, 'DIGEST_MISMATCH'],
    ['size (source shorter)', (e: EntrySource) => ({ ...e, size: e.size + 1 }), /4096 bytes, declared 4097/, 'SIZE_MISMATCH'],
    ['size (source longer)', (e: EntrySource) => ({ ...e, size: e.size - 1 }), /more than the declared 4095 bytes/, 'SIZE_MISMATCH'],
  ] as const).flatMap(([what, ...c]) => [[`${what} mismatch (file source)`, ...c, 'file'] as const, [`${what} mismatch (stream source)`, ...c, 'stream'] as const]))('aborts on a %s naming the entry, leaving neither the output nor the partial', async (_what, corrupt, message, code, kind) => {
    const fx = await fixture();
    const i = fx.entries.findIndex((e) => e.path === LONG_PREFIXED);
    expect(fx.entries[i]!.file).toBeDefined();
    fx.entries[i] = corrupt(kind === 'file' ? fx.entries[i]! : streamOnly(fx.entries[i]!));
    fx.manifest.artifacts = fx.manifest.artifacts.map((a) => (a.path === LONG_PREFIXED ? { ...a, size: fx.entries[i]!.size, sha256: fx.entries[i]!.sha256 } : a));
    const output = join(fx.dir, 'release.tar');
    const err = await rejection(writeBundle({ output, manifest: fx.manifest, entries: fx.entries, mtime: MTIME }));
    expect(isOciError(err, code)).toBe(true);
    expect(err.message).toContain(LONG_PREFIXED);
    expect(err.message).toMatch(message);
    expect(err.message).not.toContain('\n');
    expect((await readdir(fx.dir)).filter((f) => f.startsWith('release.tar'))).toEqual([]);
  });

  it('follows entries still arriving: writes each once it has landed, and the same bytes as when all were there', async () => {
    const fx = await fixture();
    const whole = await writeBundle({ output: join(fx.dir, 'whole.tar'), manifest: fx.manifest, entries: fx.entries, mtime: MTIME });
    // The blob (entry 4) has not landed yet: its file is elsewhere until the arrival says it is in.
    const blob = fx.entries[4]!;
    await rename(blob.file!.path, `${blob.file!.path}.landing`);
    const arrivals = new Arrivals();
    const entries = fx.entries.map((e, i) => (i === 4 ? { ...e, arrival: () => arrivals.wait('sha256:blob') } : e));
    const written = writeBundle({ output: join(fx.dir, 'followed.tar'), manifest: fx.manifest, entries, mtime: MTIME });
    await vi.waitFor(() => stat(join(fx.dir, 'followed.tar.partial')), { timeout: 5000 }); // started
    let settled = false;
    written.finally(() => (settled = true)).catch(() => {});
    await new Promise((r) => setTimeout(r, 200));
    expect(settled).toBe(false); // waiting at the blob, not failing on its missing file
    await rename(`${blob.file!.path}.landing`, blob.file!.path);
    arrivals.landed('sha256:blob', false);
    const r = await written;
    expect(r.sha256).toBe(whole.sha256);
    expect(await sha256sum(join(fx.dir, 'followed.tar'))).toBe(whole.sha256);
  });

  it('hashes an arrival again unless this run verified it as it landed; a fetch that failed stops the writer and removes the partial', async () => {
    const fx = await fixture();
    const file = fx.entries[4]!.file!.path;
    const bytes = await readFile(file);
    bytes[1000]! ^= 1;
    await writeFile(file, bytes); // damaged after the (pretended) check at landing
    const landed = (verified: boolean) => fx.entries.map((e, i) => (i === 4 ? { ...e, arrival: async () => ({ verified }) } : e));
    const err = await rejection(writeBundle({ output: join(fx.dir, 'a.tar'), manifest: fx.manifest, entries: landed(false), mtime: MTIME }));
    expect(isOciError(err, 'DIGEST_MISMATCH')).toBe(true);
    // Verified on landing: only counted; the tar carries what is there (verify would name it).
    await writeBundle({ output: join(fx.dir, 'b.tar'), manifest: fx.manifest, entries: landed(true), mtime: MTIME });
    const out = await extract(join(fx.dir, 'b.tar'));
    expect((await readFile(join(out, fx.entries[4]!.path))).equals(bytes)).toBe(true);

    const arrivals = new Arrivals();
    const stopped = rejection(writeBundle({ output: join(fx.dir, 'c.tar'), manifest: fx.manifest, entries: fx.entries.map((e, i) => (i === 4 ? { ...e, arrival: () => arrivals.wait('sha256:x') } : e)), mtime: MTIME }));
    arrivals.fail(new Error('registry went away'));
    expect((await stopped).message).toBe('registry went away');
    expect((await readdir(fx.dir)).filter((f) => f.startsWith('c.tar'))).toEqual([]);
  });

  it('cleans up when a source fails to read', async () => {
    const fx = await fixture();
    const failing = Readable.from((async function* () {
      yield Buffer.alloc(10);
      throw new Error('connection reset');
    })());
    fx.entries[0] = { ...streamOnly(fx.entries[0]!), open: async () => failing };
    const err = await rejection(writeBundle({ output: join(fx.dir, 'out.tar'), manifest: fx.manifest, entries: fx.entries, mtime: MTIME }));
    expect(err.message).toBe('reading release/cartesia-kube-1.4.2.tar.gz for the bundle failed: connection reset');
    expect((await readdir(fx.dir)).filter((f) => f.startsWith('out.tar'))).toEqual([]);
  });

  it('cleans up when a source file has gone', async () => {
    const fx = await fixture();
    await rm(fx.entries[1]!.file!.path);
    const err = await rejection(writeBundle({ output: join(fx.dir, 'out.tar'), manifest: fx.manifest, entries: fx.entries, mtime: MTIME }));
    expect(isOciError(err, 'NOT_FOUND')).toBe(true);
    expect(err.message).toMatch(/^reading release\/VERSION for the bundle failed: ENOENT: no such file or directory, open '[^']+'$/);
    expect((await readdir(fx.dir)).filter((f) => f.startsWith('out.tar'))).toEqual([]);
  });

  it('stops without hanging when writing the tar fails (disk full), removing the partial', { timeout: 20_000 }, async () => {
    const fx = await fixture();
    const probe = await open(join(fx.dir, 'probe'), 'w');
    const proto = Object.getPrototypeOf(probe) as FileHandle;
    await probe.close();
    // The source's second chunk is held back until the disk has failed, so the writer meets a
    // destroyed tar entry while it still has bytes to write: the case that could wait forever.
    let diskFailed!: () => void;
    const gate = new Promise<void>((r) => (diskFailed = r));
    const body = randomBytes(2 << 20);
    fx.entries[1] = { path: 'release/VERSION', size: body.length, sha256: sha256(body), open: async () => Readable.from((async function* () {
      yield body.subarray(0, 1 << 20);
      await gate;
      await new Promise((r) => setImmediate(r));
      yield body.subarray(1 << 20);
    })()) };
    const realWrite = proto.write;
    const spy = vi.spyOn(proto, 'write').mockImplementation(function (this: FileHandle, ...args: unknown[]) {
      // The first large write fails: the writer gathers about 1 MiB per write (its first a little less).
      if ((args[0] as Buffer).length >= 512 << 10) {
        diskFailed();
        return Promise.reject(Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' }));
      }
      return (realWrite as (...a: unknown[]) => ReturnType<FileHandle['write']>).apply(this, args);
    } as FileHandle['write']);
    try {
      const output = join(fx.dir, 'full.tar');
      const err = await rejection(writeBundle({ output, manifest: fx.manifest, entries: fx.entries, mtime: MTIME }));
      expect(err.message).toBe(`cannot write ${output}.partial: ENOSPC: no space left on device, write`);
    } finally {
      spy.mockRestore();
    }
    expect((await readdir(fx.dir)).filter((f) => f.startsWith('full.tar'))).toEqual([]);
  });

  it('replaces a stale .partial from a crashed run without following a symlink there', async () => {
    const fx = await fixture();
    const output = join(fx.dir, 'release.tar');
    await writeFile(`${output}.partial`, randomBytes(8 << 20));
    const first = await writeBundle({ output, manifest: fx.manifest, entries: fx.entries, mtime: MTIME });
    expect(first.sha256).toBe(await sha256sum(output));

    await writeFile(join(fx.dir, 'victim'), 'keep me\n');
    await symlink(join(fx.dir, 'victim'), `${output}.partial`);
    await rm(output); // else the second run finds its own bundle there and writes nothing
    const second = await writeBundle({ output, manifest: fx.manifest, entries: fx.entries, mtime: MTIME });
    expect(second.sha256).toBe(first.sha256);
    expect(await readFile(join(fx.dir, 'victim'), 'utf8')).toBe('keep me\n');
    expect(await readdir(fx.dir)).not.toContain('release.tar.partial');
    expect((await tarList(output)).length).toBe(2 + fx.entries.length);
  });

  it.each([
    ['a duplicate path', (es: EntrySource[]) => [...es, es[1]!], /release\/VERSION is listed twice/],
    ['a path with ..', (es: EntrySource[]) => [...es, { ...es[1]!, path: 'release/../../etc/passwd' }], /not a safe relative path/],
    ['an absolute path', (es: EntrySource[]) => [...es, { ...es[1]!, path: '/etc/passwd' }], /not a safe relative path/],
    ['an empty component', (es: EntrySource[]) => [...es, { ...es[1]!, path: 'release//VERSION2' }], /not a safe relative path/],
    ['a newline', (es: EntrySource[]) => [...es, { ...es[1]!, path: 'release/VERSION\n2' }], /newline/],
    ['a reserved name', (es: EntrySource[]) => [...es, { ...es[1]!, path: 'SHA256SUMS' }], /clash with the bundle's own SHA256SUMS/],
    ['a file that is also a directory', (es: EntrySource[]) => [...es, { ...es[1]!, path: 'release/VERSION/x' }], /release\/VERSION is a file, but release\/VERSION\/x needs it/],
    ['an artifact missing from the entries', (es: EntrySource[]) => es.filter((e) => !e.path.endsWith('.sql')), /bundle.json names artifacts\/cartesia-acme\/migrations\/0001_init.sql .* do not include it/],
    ['a mode other than 644 or 755', (es: EntrySource[]) => [...es.slice(0, 1), { ...es[1]!, mode: 0o4755 }, ...es.slice(2)], /release\/VERSION: mode 4755 is neither 644 nor 755/],
  ] as const)('refuses %s up front, opening nothing and creating nothing', async (_what, mutate, message) => {
    const fx = await fixture();
    let opened = 0;
    const entries = mutate(fx.entries).map((e) => ({ ...e, open: () => (opened++, e.open()) }));
    const err = await rejection(writeBundle({ output: join(fx.dir, 'out.tar'), manifest: fx.manifest, entries, mtime: MTIME }));
    expect(err.message).toMatch(message);
    expect(opened).toBe(0);
    expect((await readdir(fx.dir)).filter((f) => f.startsWith('out.tar'))).toEqual([]);
  });

  it('stores an executable entry as 755 and refuses an installer record that disagrees with its entry', async () => {
    const fx = await fixture();
    const exe = randomBytes(1000);
    await writeFile(join(fx.dir, 'exe'), exe);
    const tool: EntrySource = { ...fileEntry('tool/cartesia-airgap', join(fx.dir, 'exe'), exe.length, sha256(exe)), mode: 0o755 };
    const installer = { path: tool.path, size: exe.length, sha256: tool.sha256, version: '0.1.0', node: 'v24.21.0', platform: 'linux-x64', formatVersion: 1 };
    const output = join(fx.dir, 'with-tool.tar');
    const res = await writeBundle({ output, manifest: { ...fx.manifest, installer }, entries: [tool, ...fx.entries], mtime: MTIME });
    expect(res.manifest.installer).toEqual(installer);
    const rows = await tarList(output);
    expect(rows.find((r) => r[5] === 'tool/cartesia-airgap')?.[0]).toBe('-rwxr-xr-x');
    expect(rows.filter((r) => r[5] !== 'tool/cartesia-airgap').every((r) => r[0] === '-rw-r--r--')).toBe(true);

    const err = await rejection(writeBundle({ output: join(fx.dir, 'bad.tar'), manifest: { ...fx.manifest, installer: { ...installer, sha256: 'e'.repeat(64) } }, entries: [tool, ...fx.entries], mtime: MTIME }));
    expect(err.message).toMatch(/^bundle.json names tool\/cartesia-airgap \(1000 bytes, sha256 e{64}\) but the entries disagree$/);
  });

  it('writes byte for byte what tar-stream (which wrote bundles before) writes for the same entries, from files and streams alike', async () => {
    const fx = await fixture();
    const exe = randomBytes(3 << 20); // several of the writer's buffers
    await writeFile(join(fx.dir, 'exe'), exe);
    const entries: EntrySource[] = [
      { ...fileEntry('tool/cartesia-airgap', join(fx.dir, 'exe'), exe.length, sha256(exe)), mode: 0o755 },
      ...fx.entries.map((e, i) => (i % 2 ? e : { ...e, file: undefined })),
      { path: 'artifacts/generated/3-chunks', size: 5000, sha256: sha256(Buffer.alloc(5000, 7)), open: async () => Readable.from([Buffer.alloc(1, 7), Buffer.alloc(4098, 7), Buffer.alloc(901, 7)]) },
    ];
    const head = [{ path: 'bundle.json', bytes: Buffer.from('{"formatVersion":1}\n') }, { path: 'SHA256SUMS', bytes: Buffer.alloc(0) }];
    const ours = await writeTarFile(join(fx.dir, 'ours.tar'), head, entries, MTIME);

    const p = tarPack();
    const chunks: Buffer[] = [];
    p.on('data', (c) => chunks.push(c as Buffer));
    const ended = new Promise<void>((r) => p.on('end', () => r()));
    for (const [name, body, mode] of [...head.map((h) => [h.path, h.bytes, 0o644] as const), ...(await Promise.all(entries.map(async (e) => [e.path, Buffer.concat(await (await e.open()).toArray()), e.mode ?? 0o644] as const)))]) {
      await new Promise<void>((resolve, reject) => p.entry({ name, size: body.length, mode, uid: 0, gid: 0, uname: '', gname: '', mtime: MTIME, type: 'file' }, body, (err) => (err ? reject(err) : resolve())));
    }
    p.finalize();
    await ended;
    const theirs = Buffer.concat(chunks);
    const written = await readFile(join(fx.dir, 'ours.tar'));
    expect(written.equals(theirs)).toBe(true);
    expect(ours).toEqual({ size: theirs.length, sha256: sha256(theirs) });
  });
});
