// The installer carried across the gap: a fresh bundle holds tool/cartesia-airgap, which is checked
// by hand with openssl and sha256sum, extracted alone, and run with an empty environment (no Node.js
// on PATH, no node_modules anywhere above it, strace showing it never touches the repository), with
// the same outcome as the npm-installed CLI.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { access, mkdir, readdir, readFile, realpath, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { beforeAll, describe, expect, inject, it } from 'vitest';
import { openBundle } from '../../src/bundle/reader.ts';
import { run } from '../testbed/run.ts';
import { runCli, type CliResult } from './cli.ts';
import { authFile, sha256, skopeo } from './helpers.ts';
import { installArgs, installEnv, s3 } from './install-target.ts';

const bed = inject('testbed');
const fixture = inject('fixture');
const REPO = join(import.meta.dirname, '..', '..');
const BIN = join(REPO, 'bin', 'run.js');
const work = join(bed.root, `installer-test-${randomBytes(3).toString('hex')}`);
const keys = join(work, 'keys');
const bundle = join(work, 'cartesia.tar');
/** Where the disconnected side extracts the installer: outside the repository. */
const side = join(work, 'disconnected');
const exe = join(side, 'tool', 'cartesia-airgap');
/** An empty PATH directory and HOME: nothing of this machine's Node or Docker config is found. */
const emptyPath = join(work, 'empty-bin');
const home = join(work, 'home');
const exists = (p: string) => access(p).then(() => true, () => false);

/** `env -i VARS… PROGRAM ARGS…` from `cwd`, optionally under strace recording every file it names. */
function bare(program: string, args: string[], opts: { vars?: Record<string, string>; cwd?: string; trace?: string } = {}): Promise<CliResult> {
  const vars = Object.entries({ PATH: emptyPath, HOME: home, ...opts.vars }).map(([k, v]) => `${k}=${v}`);
  const cmd = [...(opts.trace ? ['strace', '-f', '-qq', '-e', 'trace=%file,execve', '-o', opts.trace] : []), 'env', '-i', ...vars, program, ...args];
  const child = spawn(cmd[0]!, cmd.slice(1), { cwd: opts.cwd ?? side, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

const npmCli = (args: string[], opts: { vars?: Record<string, string> } = {}) => bare(process.execPath, [BIN, ...args], opts);
const errorLine = (r: CliResult) => r.stderr.split('\n').filter((l) => l.startsWith('Error:'));

beforeAll(async () => {
  await mkdir(join(side), { recursive: true });
  await mkdir(emptyPath);
  await mkdir(home);
  // The executable from the code under test (dist/ is built before integration tests run).
  await run(process.execPath, [join(REPO, 'scripts', 'build-exe.ts')]);
  expect((await runCli(['keys', 'generate', '--out', keys])).code).toBe(0);
  const r = await runCli(
    ['bundle', '--output', bundle, '--key-file', bed.saKeyFile, '--gcs-endpoint', bed.gcs.endpoint, '--source-registry', `${bed.source.host}/${bed.source.prefix}`, '--source-ca-file', bed.caFile, '--customer', fixture.customer, '--signing-key', join(keys, 'bundle.key'), '--cache-dir', join(work, 'cache'), '--json'],
    { env: { CARTESIA_AIRGAP_NO_INSTALLER: '0' } },
  );
  expect(r.code, r.stderr).toBe(0);
}, 300_000);

describe('the installer in the bundle', () => {
  it('is the first entry, tool/cartesia-airgap (mode 755), with the sha256 and version of build/cartesia-airgap in bundle.json', async () => {
    const built = join(REPO, 'build', 'cartesia-airgap');
    const sum = (await run('sha256sum', [built])).split(' ')[0];
    const m = (await openBundle(bundle)).manifest;
    const pkg = JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8')) as { version: string; devDependencies: Record<string, string> };
    expect(m.installer).toEqual({ path: 'tool/cartesia-airgap', size: (await stat(built)).size, sha256: sum, version: pkg.version, node: `v${pkg.devDependencies.node}`, platform: 'linux-x64', formatVersion: 1.1 });
    expect(m.entries[1]).toEqual({ path: 'tool/cartesia-airgap', size: m.installer!.size, sha256: sum });
    const listing = (await run('tar', ['--numeric-owner', '-tvf', bundle])).split('\n');
    expect(listing[3]).toMatch(/^-rwxr-xr-x 0\/0 +\d+ \S+ \S+ tool\/cartesia-airgap$/);

    const inspect = await runCli(['inspect', bundle, '--json']);
    expect((JSON.parse(inspect.stdout) as { installer: unknown }).installer).toEqual({ path: 'tool/cartesia-airgap', version: pkg.version, node: m.installer!.node, platform: 'linux-x64', size: m.installer!.size, sha256: sum });
  });

  it('checks out by hand (openssl, sha256sum) and extracts alone with tar -xf BUNDLE tool/', async () => {
    const by = join(work, 'by-hand');
    await mkdir(by);
    // The commands of the "On the disconnected side" instructions, verbatim.
    const script = [
      `tar -xf ${bundle} bundle.json bundle.json.sig SHA256SUMS tool/`,
      'base64 -d bundle.json.sig > bundle.json.der',
      `openssl dgst -sha256 -verify ${join(keys, 'bundle.pub')} -signature bundle.json.der bundle.json`,
      'grep -q "\\"sha256\\": \\"$(sha256sum SHA256SUMS | cut -d" " -f1)\\"" bundle.json && echo "SHA256SUMS: listed in bundle.json"',
      'sha256sum -c --ignore-missing SHA256SUMS',
    ].join(' && ');
    expect(await run('sh', ['-c', script], { cwd: by })).toBe('Verified OK\nSHA256SUMS: listed in bundle.json\ntool/cartesia-airgap: OK\n');

    await run('tar', ['-xf', bundle, 'tool/'], { cwd: side });
    expect(await readdir(side)).toEqual(['tool']);
    expect(await readdir(join(side, 'tool'))).toEqual(['cartesia-airgap']);
    expect((await stat(exe)).mode & 0o777).toBe(0o755);
    // Nothing a Node.js program could lean on: no node_modules above it, no node on its PATH.
    for (let d = side; ; d = dirname(d)) {
      expect(await exists(join(d, 'node_modules')), d).toBe(false);
      if (d === dirname(d)) break;
    }
    expect(await readdir(emptyPath)).toEqual([]);
  });

  it('--version names the tool, the Node runtime and the bundle format, as the npm CLI does', async () => {
    const [a, b] = await Promise.all([bare(exe, ['--version']), npmCli(['--version'])]);
    expect(a.stdout).toMatch(/^cartesia-airgap\/\d+\.\d+\.\d+\S* linux-x64 node-v24\.\d+\.\d+ bundle-format-1\.1\n$/);
    expect([a.code, a.stdout, a.stderr]).toEqual([b.code, b.stdout, b.stderr]);
  });

  it('starts with the Node flags of bin/run.js\'s shebang, so V8 keeps the same small young generation', async () => {
    // A preload (NODE_OPTIONS reaches a single executable too) reports what V8 was started with.
    const probe = join(work, 'probe.cjs');
    await writeFile(probe, "const v8 = require('node:v8');\nprocess.on('exit', () => require('node:fs').writeSync(2, `probe: ${JSON.stringify({ execArgv: process.execArgv, newSpaceBytes: v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size })}\\n`));\n");
    const vars = { NODE_OPTIONS: `--require ${probe}` };
    const probed = (r: CliResult) => JSON.parse(/^probe: (.*)$/m.exec(r.stderr)?.[1] ?? 'null') as { execArgv: string[]; newSpaceBytes: number } | null;
    const a = await bare(exe, ['--version'], { vars });
    // The npm CLI as users start it: through its shebang, which finds node on PATH.
    const b = await bare(BIN, ['--version'], { vars: { ...vars, PATH: dirname(process.execPath) } });
    expect([a.code, b.code], a.stderr + b.stderr).toEqual([0, 0]);
    expect(probed(a)?.execArgv).toEqual(['--max-semi-space-size=1']);
    // Measured: without the flag V8's new space has grown to 8 MiB (executable) or 16 MiB (npm CLI) by the end of --version; with it, 2 MiB.
    expect(probed(a)?.newSpaceBytes).toBeLessThanOrEqual(2 * 2 ** 20);
    expect(probed(a)).toEqual(probed(b));
  });

  it('verify: the same exit code and output as the npm CLI, touching nothing of the repository', async () => {
    const trace = join(work, 'verify.strace');
    const args = ['verify', bundle, '--public-key', join(keys, 'bundle.pub')];
    const a = await bare(exe, args, { trace });
    const b = await npmCli(args);
    expect(a.code, a.stderr).toBe(0);
    expect([a.code, a.stdout]).toEqual([b.code, b.stdout]);
    expect(a.stdout).toMatch(/^OK: \d+ entries, \d+ bytes verified$/m);

    // strace (not our code) lists every file the executable named: none in the repository or any node_modules.
    const named = [...(await readFile(trace, 'utf8')).matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((x) => x[1]!);
    expect(named).toContain(bundle);
    const repoPaths = [REPO, await realpath(join(REPO, 'node_modules'))];
    expect(named.filter((p) => repoPaths.some((r) => p.startsWith(r)) || p.includes('node_modules'))).toEqual([]);
    const execs = [...(await readFile(trace, 'utf8')).matchAll(/execve\("([^"]+)"/g)].map((x) => x[1]);
    expect(execs.filter((p) => p !== exe && !p!.endsWith('/env'))).toEqual([]);

    // A refusal reads the same too: a key that did not sign the bundle.
    await runCli(['keys', 'generate', '--out', join(work, 'other-keys')]);
    const wrong = ['verify', bundle, '--public-key', join(work, 'other-keys', 'bundle.pub')];
    const [c, d] = await Promise.all([bare(exe, wrong), npmCli(wrong)]);
    expect(c.code).toBe(3);
    expect([c.code, errorLine(c)]).toEqual([d.code, errorLine(d)]);
    expect(errorLine(c)).toHaveLength(1);
  });

  it('install: the same exit code, registry digests, bucket sha256s and values.yaml as the npm CLI', async () => {
    const tag = randomBytes(3).toString('hex');
    const targets = { exe: { prefix: `sea-x-${tag}/cartesia`, bucket: `sea-x-${tag}`, out: join(work, 'out-exe') }, npm: { prefix: `sea-n-${tag}/cartesia`, bucket: `sea-n-${tag}`, out: join(work, 'out-npm') } };
    for (const t of Object.values(targets)) await mkdir(t.out);
    const argsFor = (t: (typeof targets)['exe']) => [...installArgs(bundle, join(keys, 'bundle.pub'), t.prefix, t.bucket, t.out), '--json'];
    const a = await bare(exe, argsFor(targets.exe), { vars: installEnv });
    const b = await npmCli(argsFor(targets.npm), { vars: installEnv });
    expect(a.code, a.stderr).toBe(0);
    expect(a.code).toBe(b.code);

    const auth = await authFile(bed.private.host, bed.private.username, bed.private.password);
    const digests = async (prefix: string) => {
      const out: Record<string, string> = {};
      for (const img of fixture.images) {
        const raw = await skopeo(['inspect', '--raw', '--cert-dir', bed.certDir, '--authfile', auth, `docker://${bed.private.host}/${prefix}/${img.repository.split('/').at(-1)}:${img.tag}`]);
        out[img.repository] = raw.ok ? `sha256:${sha256(raw.stdout)}` : raw.error;
      }
      return out;
    };
    const want = Object.fromEntries(fixture.images.map((i) => [i.repository, i.digest]));
    expect(await digests(targets.exe.prefix)).toEqual(want);
    expect(await digests(targets.npm.prefix)).toEqual(want);

    const objects = async (bucket: string) => {
      const out: Record<string, string> = {};
      for (const o of (await s3.send(new ListObjectsV2Command({ Bucket: bucket }))).Contents ?? []) {
        const body = await (await s3.send(new GetObjectCommand({ Bucket: bucket, Key: o.Key! }))).Body!.transformToByteArray();
        out[o.Key!] = sha256(Buffer.from(body));
      }
      return out;
    };
    const customer = Object.fromEntries(fixture.objects.filter((o) => o.bucket === `cartesia-${fixture.customer}`).map((o) => [o.key, o.sha256]));
    expect(await objects(targets.exe.bucket)).toEqual(customer);
    expect(await objects(targets.npm.bucket)).toEqual(customer);

    // The outputs differ only by the target names each was given.
    const same = (text: string, t: (typeof targets)['exe']) => text.replaceAll(t.prefix, 'PREFIX').replaceAll(t.bucket, 'BUCKET').replaceAll(t.out, 'OUT');
    for (const f of ['values.yaml', '.env']) {
      const [x, y] = await Promise.all([readFile(join(targets.exe.out, f), 'utf8'), readFile(join(targets.npm.out, f), 'utf8')]);
      expect(same(x, targets.exe), f).toBe(same(y, targets.npm));
      expect(x).toContain(`${bed.private.host}/${targets.exe.prefix}`);
    }
    // Which image uploads a blob they share, and which mount it, depends on timing (the images go
    // side by side): the same blobs uploaded in all, per image it may differ.
    const summary = (r: CliResult, t: (typeof targets)['exe']) => {
      const s = JSON.parse(same(r.stdout, t)) as { images: { blobsUploaded: number }[] } & Record<string, unknown>;
      return { ...s, images: s.images.map(({ blobsUploaded: _, ...i }) => i), blobsUploaded: s.images.reduce((n, i) => n + i.blobsUploaded, 0) };
    };
    expect(summary(a, targets.exe)).toEqual(summary(b, targets.npm));
  });

  it('bundle run from the executable carries the executable itself', async () => {
    const out = join(work, 'from-exe.tar');
    const r = await bare(exe, ['bundle', '--output', out, '--key-file', bed.saKeyFile, '--gcs-endpoint', bed.gcs.endpoint, '--source-registry', `${bed.source.host}/${bed.source.prefix}`, '--source-ca-file', bed.caFile, '--models', 'sonic-3', '--unsigned', '--cache-dir', join(work, 'cache'), '--json']);
    expect(r.code, r.stderr).toBe(0);
    const m = (await openBundle(out)).manifest;
    expect(m.installer?.sha256).toBe((await run('sha256sum', [exe])).split(' ')[0]);
    expect(m.entries[1]?.path).toBe('tool/cartesia-airgap');
  });
});
