/**
 * The installer a bundle carries across the gap: the single executable from `npm run build:exe`,
 * stored as tool/cartesia-airgap (mode 755) and described in bundle.json. It is identified by the
 * build note inside it, never by running it (bundle may run on another platform).
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { isSea } from 'node:sea';
import { BUILD_INFO_NOTE, buildInfoSchema, SEA_BLOB_NOTE, type BuildInfo } from '../exe/build-info.ts';
import { readElfNotes } from '../exe/elf.ts';
import { hashFile } from '../objects/hashes.ts';
import { OciError } from '../oci/errors.ts';
import { packageRoot } from '../util/package-files.ts';
import { BUNDLE_FORMAT_VERSION, INSTALLER_PATH, type BundleInstaller } from './manifest.ts';
import { fileEntry, type EntrySource } from './writer.ts';

export interface Installer {
  file: string;
  size: number;
  sha256: string;
  info: BuildInfo;
}

/** The executable itself when running as one (it carries itself), else the package's build/cartesia-airgap. */
export const defaultInstaller = (): string => (isSea() ? process.execPath : join(packageRoot(), 'build', 'cartesia-airgap'));

/** Checks that `file` is a cartesia-airgap executable able to read the bundles this tool writes, and hashes it. */
export async function loadInstaller(file: string, named: boolean): Promise<Installer> {
  const st = await stat(file).catch(() => undefined);
  if (!st?.isFile()) {
    throw new OciError(
      'NOT_FOUND',
      named
        ? `the installer ${file} is not a file`
        : `no installer executable at ${file}; build it with \`npm run build:exe\`, name one with --installer FILE, or leave it out with --no-installer`,
    );
  }
  const notes = await readElfNotes(file).catch((err: Error) => {
    throw new OciError('UNSUPPORTED', `the installer ${file} is not a cartesia-airgap executable (${err.message}); build one with \`npm run build:exe\``);
  });
  const note = notes.find((n) => n.name === BUILD_INFO_NOTE.name && n.type === BUILD_INFO_NOTE.type);
  let doc: unknown;
  try {
    doc = note?.desc && JSON.parse(note.desc.toString('utf8'));
  } catch {
    doc = undefined;
  }
  const parsed = buildInfoSchema.safeParse(doc);
  if (!parsed.success || !notes.some((n) => n.name === SEA_BLOB_NOTE)) {
    throw new OciError('UNSUPPORTED', `the installer ${file} is not a cartesia-airgap executable (no build note); build one with \`npm run build:exe\``);
  }
  const info = parsed.data;
  if (info.formatVersion < BUNDLE_FORMAT_VERSION) {
    throw new OciError('UNSUPPORTED', `the installer ${file} (${info.version}) reads bundle format ${info.formatVersion}, but this bundle is format ${BUNDLE_FORMAT_VERSION}; build a new one with \`npm run build:exe\``);
  }
  const { sha256 } = await hashFile(file);
  return { file, size: st.size, sha256, info };
}

export const installerEntry = (i: Installer): EntrySource => ({ ...fileEntry(INSTALLER_PATH, i.file, i.size, i.sha256), mode: 0o755 });

export const installerRecord = (i: Installer): BundleInstaller => ({
  path: INSTALLER_PATH,
  size: i.size,
  sha256: i.sha256,
  version: i.info.version,
  node: i.info.node,
  platform: i.info.platform,
  formatVersion: i.info.formatVersion,
});
