/**
 * Files the tool ships beside its code: package.json, bundles/ (recipes) and templates/. From the
 * npm package they are read under the package root; the single executable (`npm run build:exe`)
 * has nothing beside it and carries them as SEA assets under the same relative names.
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { getAsset, isSea } from 'node:sea';
import { fileURLToPath } from 'node:url';

/** The shipped directories the executable embeds whole (package.json is embedded too). */
export const SHIPPED_DIRS = ['bundles', 'templates'] as const;

/** The npm package's root; computed on use, since inside the executable there is none. */
export const packageRoot = (): string => fileURLToPath(new URL('../../', import.meta.url));

/** How messages name a shipped file. */
export const shippedName = (rel: string): string => (isSea() ? `${rel} (built into ${process.execPath})` : join(packageRoot(), rel));

export async function readShipped(rel: string): Promise<Buffer> {
  return isSea() ? Buffer.from(getAsset(rel)) : readFile(join(packageRoot(), rel));
}

export function readShippedSync(rel: string): Buffer {
  return isSea() ? Buffer.from(getAsset(rel)) : readFileSync(join(packageRoot(), rel));
}

/** The tool's own version (package.json), for bundle.json, receipts and --version. */
export const toolVersion = (): string => packageJson().version;

export const packageJson = (): { name: string; version: string; [key: string]: unknown } => JSON.parse(readShippedSync('package.json').toString('utf8')) as { name: string; version: string };
