import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { parse } from 'yaml';
import { OciError } from '../oci/errors.ts';
import { fetchObject } from '../objects/cache.ts';
import type { CachedObject, ObjectInfo, ObjectSource } from '../objects/types.ts';
import { valueAt, type Recipe } from './recipe.ts';
import { readArchiveFiles } from './release-archive.ts';

export interface ResolvedRelease {
  version: string;
  /** The archive, and the file name SHA256SUMS gives it (its name in the bundle). */
  archive: CachedObject;
  archiveName: string;
  sums: CachedObject;
  /** latest/VERSION, when the release is the latest one. */
  versionFile?: CachedObject;
  /** From the chart's values (or --release-tag). */
  tag: string;
  /** The NATS image the chart names, `registry/repository:tag`. */
  nats: string;
  /** The newest timestamp inside the archive: the bundle's fixed mtime unless SOURCE_DATE_EPOCH is set. */
  date: Date;
}

const VERSION_RE = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/;

const gs = (bucket: string, key: string) => `gs://${bucket}/${key}`;

async function mustStat(src: ObjectSource, bucket: string, key: string, hint: string): Promise<ObjectInfo> {
  const info = await src.stat(bucket, key);
  if (!info) throw new OciError('NOT_FOUND', `${gs(bucket, key)} is missing; ${hint}`);
  return info;
}

/** The line for `names` in a coreutils SHA256SUMS file (`HEX  NAME` or `HEX *NAME`). */
export function sumFor(text: string, names: string[]): string | undefined {
  for (const line of text.split('\n')) {
    const m = /^([a-f0-9]{64}) [ *](.+)$/.exec(line.trimEnd());
    if (m && names.includes(m[2]!.replace(/^\.\//, ''))) return m[1];
  }
  return undefined;
}

/**
 * Resolves and fetches the release (DESIGN.md §1): `latest` reads latest/VERSION; a pinned
 * VERSION uses releases/VERSION/ when it holds the archive, else latest/ when VERSION is the
 * latest. The archive is checked against releases/VERSION/SHA256SUMS as Cartesia's instructions
 * do, and a mismatch or a missing line stops everything.
 */
export async function resolveRelease(src: ObjectSource, recipe: Recipe, wanted: string, cacheDir: string, opts: { releaseTag?: string } = {}): Promise<ResolvedRelease> {
  const { bucket, prefix } = recipe.release;
  const latestKey = `${prefix}/latest/VERSION`;
  const latestInfo = await src.stat(bucket, latestKey);
  let versionFile: CachedObject | undefined;
  let latest: string | undefined;
  if (latestInfo) {
    const fetched = await fetchObject(src, latestInfo, cacheDir);
    versionFile = fetched;
    latest = (await readFile(fetched.path, 'utf8')).trim();
    if (!VERSION_RE.test(latest)) throw new OciError('UNSUPPORTED', `${gs(bucket, latestKey)} does not hold a version string`);
  }
  let version: string;
  if (wanted === 'latest') {
    if (!latest) throw new OciError('NOT_FOUND', `${gs(bucket, latestKey)} is missing, so there is no latest release; pin one with --release VERSION`);
    version = latest;
  } else {
    if (!VERSION_RE.test(wanted)) throw new OciError('BAD_REFERENCE', `--release "${wanted}" is not a version string`);
    version = wanted;
  }

  const archiveName = `${prefix}-${version}.tar.gz`;
  const pinnedKey = `${prefix}/releases/${version}/${archiveName}`;
  let archiveInfo = await src.stat(bucket, pinnedKey);
  if (!archiveInfo) {
    if (version !== latest) {
      throw new OciError('NOT_FOUND', `release ${version} not found: ${gs(bucket, pinnedKey)} is missing and the latest release is ${latest ?? 'unknown'}`);
    }
    archiveInfo = await mustStat(src, bucket, `${prefix}/latest/${prefix}-latest.tar.gz`, 'the release bucket lists a latest VERSION without its archive');
  }
  const sumsKey = `${prefix}/releases/${version}/SHA256SUMS`;
  const sumsInfo = await mustStat(src, bucket, sumsKey, 'refusing a release that cannot be checked');
  const [archive, sums] = await Promise.all([fetchObject(src, archiveInfo, cacheDir), fetchObject(src, sumsInfo, cacheDir)]);

  const expected = sumFor(await readFile(sums.path, 'utf8'), [archiveName, archiveInfo.key.split('/').at(-1)!]);
  if (!expected) throw new OciError('DIGEST_MISMATCH', `${gs(bucket, sumsKey)} has no line for ${archiveName}; refusing an unchecked release`);
  if (expected !== archive.sha256) {
    throw new OciError('DIGEST_MISMATCH', `${gs(bucket, archiveInfo.key)} has sha256 ${archive.sha256}, but SHA256SUMS says ${expected}; the download is corrupt or the release was replaced`);
  }

  const { chart } = recipe.release;
  const read = await readArchiveFiles(createReadStream(archive.path, { highWaterMark: 1 << 20 }), [chart.values]);
  const valuesText = read.files.get(chart.values);
  if (valuesText === undefined) throw new OciError('NOT_FOUND', `the release archive has no ${chart.values}; the recipe does not match this release`);
  let values: unknown;
  try {
    values = parse(valuesText);
  } catch (err) {
    throw new OciError('UNSUPPORTED', `${chart.values} in the release archive is not valid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  const str = (path: string) => {
    const v = valueAt(values, path);
    return typeof v === 'string' || typeof v === 'number' ? String(v) : undefined;
  };
  const tag = opts.releaseTag ?? str(chart.releaseTag);
  if (!tag) throw new OciError('NOT_FOUND', `${chart.values} has no ${chart.releaseTag}; give the tag with --release-tag`);
  const [nr, nrepo, ntag] = [str(chart.nats.registry), str(chart.nats.repository), str(chart.nats.tag)];
  if (!nrepo || !ntag) throw new OciError('NOT_FOUND', `${chart.values} has no NATS image at ${chart.nats.repository} / ${chart.nats.tag}`);
  return {
    version,
    archive,
    archiveName,
    sums,
    ...(versionFile && version === latest ? { versionFile } : {}),
    tag,
    nats: `${nr ? `${nr}/` : ''}${nrepo}:${ntag}`,
    date: read.newest,
  };
}
