import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { extract } from 'tar-stream';
import { CodedError } from '../util/errors.ts';

const MAX_FILE = 4 << 20;

export interface ArchiveFiles {
  /** Path below the archive's top directory → text. */
  files: Map<string, string>;
  /** The newest entry time: the bundle's fixed mtime unless SOURCE_DATE_EPOCH is set. */
  newest: Date;
}

/**
 * Small text files out of the release archive (a .tar.gz streamed from the cache or from inside
 * a bundle, never extracted). `wanted` are paths below the archive's one top directory
 * (`cartesia-kube/`), e.g. `cartesia/values.yaml`.
 */
export async function readArchiveFiles(archive: Readable, wanted: string[]): Promise<ArchiveFiles> {
  const files = new Map<string, string>();
  let newest = 0;
  const ex = extract();
  const done = pipeline(archive, createGunzip(), ex);
  for await (const entry of ex) {
    const { name, size, type, mtime } = entry.header;
    if (mtime) newest = Math.max(newest, mtime.getTime());
    const inner = name.replace(/^\.\//, '').split('/').slice(1).join('/');
    if (type === 'file' && wanted.includes(inner)) {
      if ((size ?? 0) > MAX_FILE) throw new CodedError('TOO_LARGE', `${name} in the release archive is larger than ${MAX_FILE} bytes`);
      const chunks: Buffer[] = [];
      for await (const c of entry as AsyncIterable<Buffer>) chunks.push(c);
      files.set(inner, Buffer.concat(chunks).toString('utf8'));
    } else {
      entry.resume();
    }
  }
  await done;
  return { files, newest: new Date(newest) };
}
