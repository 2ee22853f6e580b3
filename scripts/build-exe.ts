// npm run build:exe — the installer that crosses the gap: build/cartesia-airgap, one linux-x64
// executable that runs where there is no Node.js and no node_modules.
//
// The CLI as `npm run build` bundled it into one CommonJS file (dist/cli/cartesia-airgap.cjs, see
// scripts/bundle-cli.ts, the file bin/run.js starts) is made into a Node single-executable blob with the
// shipped data files (package.json, bundles/, templates/) as assets, and put into a copy of the
// pinned runtime (node_modules/node, the `node` devDependency) as an ELF note, with a second note
// saying what the executable is. The runtime starts with the V8 flags bin/run.js's shebang gives the
// npm CLI. Nothing is downloaded. Same inputs, same bytes.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { READABLE_FORMAT_VERSION } from '../src/bundle/manifest.ts';
import { BUILD_INFO_NOTE, SEA_BLOB_NOTE, type BuildInfo } from '../src/exe/build-info.ts';
import { appendNoteSegment } from '../src/exe/elf.ts';
import { SHIPPED_DIRS } from '../src/util/package-files.ts';

const ROOT = join(import.meta.dirname, '..');
const OUT_DIR = join(ROOT, 'build');
const EXE = join(OUT_DIR, 'cartesia-airgap');
const RUNTIME = join(ROOT, 'node_modules', 'node', 'bin', 'node');
const BIN = join(ROOT, 'bin', 'run.js');
/** Node's fuse: the runtime looks for its blob only when this reads `:1`. */
const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2:';

const started = Date.now();
const step = (what: string): void => console.log(`${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s  ${what}`);
const fail = (message: string): never => {
  console.error(`Error: ${message}`);
  process.exit(1);
};

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await listFiles(p)));
    else if (e.isFile()) out.push(p);
  }
  return out.sort();
}

/** Sets the fuse in place; exactly one must be in the runtime. */
async function burnFuse(file: string): Promise<void> {
  const bytes = await readFile(file);
  const fuse = Buffer.from(`${SEA_FUSE}0`);
  const at = bytes.indexOf(fuse);
  if (at < 0 || bytes.indexOf(fuse, at + 1) >= 0) fail(`${RUNTIME} does not hold exactly one ${SEA_FUSE}0; it cannot become a single executable`);
  const fh = await open(file, 'r+');
  await fh.write(Buffer.from('1'), 0, 1, at + fuse.length - 1);
  await fh.close();
}

/**
 * The Node flags bin/run.js's shebang gives the npm CLI (`#!/usr/bin/env -S [VAR=…] node FLAGS…`),
 * which the executable's runtime is started with too (SEA `execArgv`): one place says what they
 * are. Environment settings before `node` cannot be carried: the executable starts without them.
 */
async function shebangFlags(): Promise<string[]> {
  const first = (await readFile(BIN, 'utf8')).split('\n', 1)[0]!;
  const m = /^#!\/usr\/bin\/env -S (?:[A-Z_]+=\S+ )*node((?: --[\w-]+(?:=\S+)?)*)$/.exec(first);
  if (!m) return fail(`${relative(ROOT, BIN)} starts with ${JSON.stringify(first)}, not \`#!/usr/bin/env -S node --flag…\`; cannot tell which Node flags the executable needs`);
  return m[1]!.split(' ').filter(Boolean);
}

async function main(): Promise<void> {
  if (process.platform !== 'linux' || process.arch !== 'x64') fail(`build:exe makes a linux-x64 executable from the linux-x64 runtime in node_modules/node; this is ${process.platform}-${process.arch}`);
  const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string };
  const runtimeVersion = execFileSync(RUNTIME, ['--version'], { encoding: 'utf8' }).trim();
  await mkdir(OUT_DIR, { recursive: true });

  const script = join(ROOT, 'dist', 'cli', 'cartesia-airgap.cjs');
  await stat(script).catch(() => fail(`${relative(ROOT, script)} is missing; run \`npm run build\` first`));
  step(`the CLI bundled by npm run build: ${relative(ROOT, script)} (${((await stat(script)).size / 2 ** 20).toFixed(1)} MiB)`);

  const assets: Record<string, string> = { 'package.json': join(ROOT, 'package.json') };
  for (const dir of SHIPPED_DIRS) for (const f of await listFiles(join(ROOT, dir))) assets[relative(ROOT, f)] = f;
  const blob = join(OUT_DIR, 'sea.blob');
  const seaConfig = join(OUT_DIR, 'sea-config.json');
  const execArgv = await shebangFlags();
  await writeFile(seaConfig, `${JSON.stringify({ main: script, output: blob, disableExperimentalSEAWarning: true, useSnapshot: false, useCodeCache: false, execArgv, assets }, null, 2)}\n`);
  execFileSync(RUNTIME, ['--experimental-sea-config', seaConfig], { stdio: ['ignore', 'ignore', 'inherit'] });
  step(`single-executable blob with ${Object.keys(assets).length} assets and Node flags ${execArgv.join(' ') || '(none)'} (${((await stat(blob)).size / 2 ** 20).toFixed(1)} MiB)`);

  const info: BuildInfo = { name: 'cartesia-airgap', version: pkg.version, node: runtimeVersion, platform: 'linux-x64', formatVersion: READABLE_FORMAT_VERSION };
  const partial = `${EXE}.partial`;
  await rm(partial, { force: true });
  await copyFile(RUNTIME, partial);
  await appendNoteSegment(partial, [
    { name: SEA_BLOB_NOTE, type: 0, desc: await readFile(blob) },
    { name: BUILD_INFO_NOTE.name, type: BUILD_INFO_NOTE.type, desc: Buffer.from(JSON.stringify(info)) },
  ]);
  await burnFuse(partial);

  // It must answer as the tool does, with nothing from this machine's Node or node_modules.
  const want = `${pkg.name}/${pkg.version} linux-x64 node-${runtimeVersion} bundle-format-${READABLE_FORMAT_VERSION}`;
  const got = execFileSync(partial, ['--version'], { encoding: 'utf8', env: {}, cwd: '/' }).trim();
  if (got !== want) fail(`the new executable answers --version with ${JSON.stringify(got)}, not ${JSON.stringify(want)}`);
  await rename(partial, EXE);
  const bytes = await readFile(EXE);
  step(`${relative(ROOT, EXE)}: ${bytes.length} bytes (${(bytes.length / 2 ** 20).toFixed(1)} MiB), sha256 ${createHash('sha256').update(bytes).digest('hex')}`);
  console.log(`        ${got}`);
}

await main();
