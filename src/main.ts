/**
 * The CLI's entry, shared by bin/run.js (the npm package) and the single executable: `--version`
 * answers here (tool, Node runtime and the bundle format this tool reads and writes), everything
 * else goes to oclif.
 */
import { execute, type Interfaces } from '@oclif/core';
import { READABLE_FORMAT_VERSION } from './bundle/manifest.ts';
import { packageJson } from './util/package-files.ts';

/** `cartesia-airgap/0.1.0 linux-x64 node-v24.21.0 bundle-format-1`: oclif's own line plus the format. */
export function versionLine(): string {
  const { name, version } = packageJson();
  return `${name}/${version} ${process.platform}-${process.arch} node-${process.version} bundle-format-${READABLE_FORMAT_VERSION}`;
}

/** `load` is bin/run.js's import.meta.url, or the executable's prepared oclif options. */
export async function main(load: string | Interfaces.Options, argv = process.argv.slice(2)): Promise<void> {
  if (argv[0] === '--version') {
    process.stdout.write(`${versionLine()}\n`);
    return;
  }
  await execute(typeof load === 'string' ? { dir: load, args: argv } : { loadOptions: load, args: argv });
}
