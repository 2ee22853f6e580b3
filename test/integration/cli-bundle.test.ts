// The npm CLI starts from one bundled file (dist/cli/cartesia-airgap.cjs) and keeps V8's compiled
// code in the user's cache: the package ships that file and its data files only, and copied alone
// as `npm pack` lists them, beside no node_modules, it still runs every command, and a run leaves compiled code under XDG_CACHE_HOME
// unless NODE_DISABLE_COMPILE_CACHE says not to, or the cache cannot be made.
import { execFileSync, spawn } from 'node:child_process';
import { cp, mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const REPO = join(import.meta.dirname, '..', '..');
let root: string;

function node(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  // Killed if it hangs (it would spin on, using a core, after the test gave up).
  const child = spawn(process.execPath, args, { env: { PATH: process.env.PATH, HOME: root, ...env }, cwd: root, stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000, killSignal: 'SIGKILL' });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve, reject) => child.on('error', reject).on('close', (code) => resolve({ code, stdout, stderr })));
}

/** Every file below `dir`, relative to it. */
async function files(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => [])).filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
}

describe('the npm CLI, bundled', () => {
  let pkg: string;
  /** What `npm pack` puts in the package. */
  let shipped: string[];
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'airgap-cli-bundle-'));
    pkg = join(root, 'pkg');
    const packed = JSON.parse(execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: REPO, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })) as { files: { path: string }[] }[];
    shipped = packed[0]!.files.map((f) => f.path);
    for (const f of shipped) await cp(join(REPO, f), join(pkg, f));
  });
  afterAll(() => rm(root, { recursive: true, force: true }));

  it("ships the one bundled file and the data files, none of dist/'s separate modules", () => {
    expect(shipped).toEqual(expect.arrayContaining(['package.json', 'bin/run.js', 'dist/cli/cartesia-airgap.cjs']));
    expect(shipped.filter((f) => f.startsWith('dist/') && !f.startsWith('dist/cli/'))).toEqual([]);
    expect(shipped.some((f) => f.startsWith('bundles/')) && shipped.some((f) => f.startsWith('templates/'))).toBe(true);
  });

  it('runs from what the package ships: its one file, no dist/ modules and no node_modules beside it', async () => {
    const bin = join(pkg, 'bin', 'run.js');
    const version = await node([bin, '--version']);
    expect(version.stderr).toBe('');
    expect(version.stdout).toMatch(/^cartesia-airgap\/\d+\.\d+\.\d+ linux-x64 node-v\d+\.\d+\.\d+ bundle-format-\d+\.\d+\n$/);
    const help = await node([bin, 'install', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('--public-key');
    // A command doing real work: its module, the crypto and the recipes come from the bundle.
    const keys = await node([bin, 'keys', 'generate', '--out', join(root, 'keys'), '--json']);
    expect(keys.stderr).toBe('');
    expect(keys.code).toBe(0);
    expect((await files(join(root, 'keys'))).map((f) => f.slice(root.length)).sort()).toEqual(['/keys/bundle.key', '/keys/bundle.pub']);
  });

  it("keeps V8's compiled code under XDG_CACHE_HOME, and not when NODE_DISABLE_COMPILE_CACHE is set", async () => {
    const bin = join(pkg, 'bin', 'run.js');
    const on = join(root, 'cache-on');
    const off = join(root, 'cache-off');
    await mkdir(off);
    expect((await node([bin, 'inspect', '--help'], { XDG_CACHE_HOME: on })).code).toBe(0);
    expect((await files(join(on, 'cartesia-airgap', 'node-compile-cache'))).length).toBeGreaterThan(0);
    expect((await node([bin, 'inspect', '--help'], { XDG_CACHE_HOME: off, NODE_DISABLE_COMPILE_CACHE: '1' })).code).toBe(0);
    expect(await files(off)).toEqual([]);
    // A cache that cannot be made is no error: a file where its directory would be, and a procfs
    // path (where Node's own recursive mkdir never returns).
    for (const where of [join(pkg, 'package.json'), '/proc/no-such-dir']) {
      const help = await node([bin, 'inspect', '--help'], { XDG_CACHE_HOME: where });
      expect(help.code, where).toBe(0);
      expect(help.stderr, where).toBe('');
    }
  });
});
