// The last step of `npm run build`: the built CLI (dist/, every command oclif.manifest.json lists
// plus those of the oclif plugins) bundled with its dependencies into one CommonJS file,
// dist/cli/cartesia-airgap.cjs. bin/run.js starts it, and build:exe puts the same file into the
// single executable.
//
// Why: started from dist/ and node_modules, Node resolves, reads and compiles ~900 files on every
// run (a no-op bundle or install spent about 0.2 s of its 0.65 s there); one file is one read and
// one compile, and Node's compile cache (bin/run.js) can keep it. Each command's module is still
// evaluated only when that command runs.
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { rolldown } from 'rolldown';

const ROOT = join(import.meta.dirname, '..');
/** Two levels under the package root, as dist/util/ is: the code finds bundles/ and templates/ at ../../. */
const CLI_BUNDLE = join(ROOT, 'dist', 'cli', 'cartesia-airgap.cjs');

const fail = (message: string): never => {
  console.error(`Error: ${message}`);
  process.exit(1);
};

interface Manifest {
  commands: Record<string, { relativePath?: string[] }>;
}

interface Commands {
  manifest: Manifest['commands'];
  /** id → the module file. */
  files: Record<string, string>;
}

/** Every command: the package's own and each oclif plugin's, from their oclif.manifest.json. */
async function commands(pkg: { oclif?: { plugins?: string[] } }): Promise<Commands> {
  const roots = [ROOT, ...(pkg.oclif?.plugins ?? []).map((p) => join(ROOT, 'node_modules', p))];
  const out: Commands = { manifest: {}, files: {} };
  for (const root of roots) {
    const manifest = JSON.parse(await readFile(join(root, 'oclif.manifest.json'), 'utf8').catch(() => fail(`${relative(ROOT, root) || '.'} has no oclif.manifest.json; run \`npm run build\` first`))) as Manifest;
    for (const [id, c] of Object.entries(manifest.commands)) {
      if (!c.relativePath) fail(`oclif.manifest.json in ${root} gives no path for ${id}; regenerate it with \`npm run build\``);
      if (out.files[id]) fail(`two plugins define the command ${id}`);
      const file = join(root, ...c.relativePath!);
      await stat(file).catch(() => fail(`${relative(ROOT, file)} (command ${id}) is missing; run \`npm run build\``));
      out.manifest[id] = c;
      out.files[id] = file;
    }
  }
  return out;
}

/**
 * The generated entry (CommonJS, so each command's module is required, and evaluated, only when
 * that command runs): the manifest and a loader per command, handed to src/exe/embedded.ts.
 */
function entrySource(c: Commands): string {
  const ids = Object.keys(c.files).sort();
  return [
    `'use strict';`,
    `const { runEmbedded } = require(${JSON.stringify(join(ROOT, 'dist', 'exe', 'embedded.js'))});`,
    `runEmbedded({`,
    `  manifest: ${JSON.stringify(c.manifest)},`,
    `  modules: {`,
    ...ids.map((id) => `    ${JSON.stringify(id)}: () => require(${JSON.stringify(c.files[id])}),`),
    `  },`,
    `});`,
    '',
  ].join('\n');
}

const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { oclif?: { plugins?: string[] } };
const found = await commands(pkg);
const entry = join(ROOT, 'dist', 'cli', 'entry.cjs');
await rm(dirname(entry), { recursive: true, force: true });
await mkdir(dirname(entry), { recursive: true });
await writeFile(entry, entrySource(found));
const warnings: string[] = [];
const bundle = await rolldown({
  input: entry,
  platform: 'node',
  // oclif's ts-node support asks for typescript inside a try; the CLI runs compiled code.
  external: ['typescript'],
  onLog: (level, log) => {
    if (level === 'warn') warnings.push(log.message);
  },
});
await bundle.write({ file: CLI_BUNDLE, format: 'cjs', codeSplitting: false, minify: true, keepNames: true });
await bundle.close();
await rm(entry);
for (const w of warnings) console.warn(`  rolldown: ${w.split('\n')[0]}`);
console.log(`${Object.keys(found.files).length} commands bundled into ${relative(ROOT, CLI_BUNDLE)} (${((await stat(CLI_BUNDLE)).size / 2 ** 20).toFixed(1)} MiB)`);
