import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, open } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, inject, it } from 'vitest';
import { openBundle } from '../../src/bundle/reader.ts';
import { runCli, type CliResult } from './cli.ts';

const bed = inject('testbed');
const fixture = inject('fixture');
const work = join(bed.root, `verify-test-${randomBytes(3).toString('hex')}`);
const sourceArgs = ['--key-file', bed.saKeyFile, '--gcs-endpoint', bed.gcs.endpoint, '--source-registry', `${bed.source.host}/${bed.source.prefix}`, '--source-ca-file', bed.caFile];
const good = join(work, 'good.tar');
const other = join(work, 'other-key.tar');
const pubA = join(work, 'keys-a', 'bundle.pub');
let fingerprintA = '';
let fingerprintB = '';

async function keys(dir: string): Promise<string> {
  const r = await runCli(['keys', 'generate', '--out', dir]);
  expect(r.code, r.stderr).toBe(0);
  return /fingerprint\s+(SHA256:[a-f0-9]{64})/.exec(r.stdout)![1]!;
}

async function bundle(out: string, keyDir: string): Promise<void> {
  const r = await runCli(['bundle', '--output', out, ...sourceArgs, '--customer', fixture.customer, '--signing-key', join(keyDir, 'bundle.key'), '--cache-dir', join(work, 'cache'), '--json']);
  expect(r.code, r.stderr).toBe(0);
}

/** A copy of the good bundle with one byte flipped `at` bytes into entry `path`. */
async function flipped(path: string, at = 0): Promise<string> {
  const loc = (await openBundle(good)).entry(path);
  expect(loc, path).toBeDefined();
  const out = join(work, `flipped-${randomBytes(3).toString('hex')}.tar`);
  await copyFile(good, out);
  const fh = await open(out, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, loc!.offset + at);
    b[0] = b[0]! ^ 0x01;
    await fh.write(b, 0, 1, loc!.offset + at);
  } finally {
    await fh.close();
  }
  return out;
}

/** The stderr lines starting with `Error:`: a failure must print exactly one. */
const errorLines = (r: CliResult): string[] => r.stderr.split('\n').filter((l) => l.startsWith('Error:'));

beforeAll(async () => {
  await mkdir(work, { recursive: true });
  fingerprintA = await keys(join(work, 'keys-a'));
  fingerprintB = await keys(join(work, 'keys-b'));
  await bundle(good, join(work, 'keys-a'));
  await bundle(other, join(work, 'keys-b')); // same cache: nothing is fetched twice
});

describe('verify: a real bundle from the CLI', () => {
  it('exits 0 and prints the fingerprint `keys generate` printed', async () => {
    const r = await runCli(['verify', good, '--public-key', pubA]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe('');
    const b = await openBundle(good);
    const bytes = b.manifest.entries.reduce((n, e) => n + e.size, 0);
    expect(r.stdout).toBe(`signer       ${fingerprintA}\nOK: ${b.manifest.entries.length} entries, ${bytes} bytes verified\n`);

    const json = await runCli(['verify', good, '--public-key', pubA, '--json']);
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual({ ok: true, fingerprint: fingerprintA, entries: b.manifest.entries.length, bytes });
  });

  it('--insecure-skip-signature checks the hashes and says loudly that the signature was not', async () => {
    const r = await runCli(['verify', other, '--insecure-skip-signature']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/^WARNING: --insecure-skip-signature: the signature is NOT checked/);
    expect(r.stdout).toContain(`signer       ${fingerprintB} (NOT checked)`);
  });

  it('exits 3 with one Error: line naming the bad part, for each damaged copy', async () => {
    const b = await openBundle(good);
    const blob = b.manifest.entries.filter((e) => e.path.startsWith('images/blobs/')).sort((x, y) => y.size - x.size)[0]!;
    const artifact = b.manifest.artifacts[0]!;
    const archive = b.manifest.release.archive.path;
    const toolVersionAt = b.manifestBytes.indexOf(`"version": "${b.manifest.tool.version}"`) + 12; // keeps the JSON valid
    const cases: [string, string, RegExp][] = [
      ['bundle.json', await flipped('bundle.json', toolVersionAt), /^Error: bundle\.json\.sig does not verify bundle\.json with the key SHA256:[a-f0-9]{64}: bundle\.json or its signature was changed or damaged$/],
      ['bundle.json.sig', await flipped('bundle.json.sig', 20), /^Error: bundle\.json\.sig does not verify bundle\.json/],
      ['an image blob', await flipped(blob.path, Math.floor(blob.size / 2)), new RegExp(`^Error: ${blob.path} is damaged or changed: its sha256 is [a-f0-9]{64}, bundle\\.json says ${blob.sha256}$`)],
      ['an artifact', await flipped(artifact.path, artifact.size - 1), new RegExp(`^Error: ${artifact.path.replace(/[.]/g, '\\.')} is damaged or changed`)],
      ['the release archive', await flipped(archive, 100), new RegExp(`^Error: ${archive.replace(/[.]/g, '\\.')} is damaged or changed`)],
      ['another signer', other, new RegExp(`^Error: bundle\\.json is signed by ${fingerprintB}, not by the given key ${fingerprintA}$`)],
    ];
    for (const [what, file, pattern] of cases) {
      const r = await runCli(['verify', file, '--public-key', pubA]);
      expect(r.code, `${what}: ${r.stderr}`).toBe(3);
      expect(errorLines(r), what).toHaveLength(1);
      expect(errorLines(r)[0], what).toMatch(pattern);
      expect(r.stdout, what).not.toContain('OK:');
    }
    const json = await runCli(['verify', other, '--public-key', pubA, '--json']);
    expect(json.code).toBe(3);
    expect(JSON.parse(json.stdout)).toMatchObject({ ok: false, error: `bundle.json is signed by ${fingerprintB}, not by the given key ${fingerprintA}` });
  });

  it('exits 2 without a signature decision and 1 for an unreadable file or key', async () => {
    const usage = await runCli(['verify', good]);
    expect(usage.code).toBe(2);
    expect(errorLines(usage)).toEqual(['Error: give the signer\'s --public-key FILE, or --insecure-skip-signature to check only the hashes']);
    const missing = await runCli(['verify', join(work, 'missing.tar'), '--public-key', pubA]);
    expect(missing.code).toBe(1);
    expect(errorLines(missing)).toEqual([`Error: cannot read the bundle ${join(work, 'missing.tar')}: ENOENT`]);
    const badKey = await runCli(['verify', good, '--public-key', good]);
    expect(badKey.code).toBe(1);
    expect(errorLines(badKey)).toHaveLength(1);
  });
});

describe('inspect', () => {
  it('--json lists the 7 images with their upstream digests and every customer artifact', async () => {
    const r = await runCli(['inspect', good, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { signer: string; release: { version: string; tag: string }; images: { name: string; digest: string; platforms: string[] }[]; artifacts: { count: number; bytes: number; groups: { prefix: string; count: number }[] } };
    expect(out.signer).toBe(fingerprintA);
    expect(out.release).toMatchObject({ version: fixture.release.version, tag: fixture.release.releaseTag });
    expect(out.images).toHaveLength(7);
    expect(out.images.map((i) => i.digest).sort()).toEqual(fixture.images.map((i) => i.digest).sort());
    for (const img of out.images) expect(img.platforms.length, img.name).toBeGreaterThan(0);
    const customer = fixture.objects.filter((o) => o.bucket === `cartesia-${fixture.customer}`);
    expect(out.artifacts.count).toBe(customer.length);
    expect(out.artifacts.groups.map((g) => g.prefix).sort()).toEqual(['loras/', 'migrations/v2/migrations/']);
    expect(out.artifacts.groups.reduce((n, g) => n + g.count, 0)).toBe(customer.length);

    const text = await runCli(['inspect', good]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain(`signer    ${fingerprintA}`);
    for (const img of fixture.images) expect(text.stdout).toContain(img.digest);
  });
});
