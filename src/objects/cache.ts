import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import type { BlockFile } from '../util/direct-io.ts';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ObjectDigests } from '../tar/hash-thread.ts';
import { openFileSlot, openWholeFile } from '../tar/slot.ts';
import { writeFileAtomic } from '../util/atomic.ts';
import { jitteredBackoff } from '../util/backoff.ts';
import { mapBySize } from '../util/bounded.ts';
import { hashFile, MultiHasher, type ObjectHashes } from './hashes.ts';
import { CodedError } from '../util/errors.ts';
import { isAlive } from '../util/process.ts';
import type { CachedObject, ObjectInfo, ObjectSource } from './types.ts';

export type ObjectErrorCode =
  | 'NOT_FOUND' // bucket or object missing
  | 'DENIED' // credentials refused
  | 'GONE' // the pinned generation is no longer served
  | 'MISMATCH' // bytes differ from what the store reports
  | 'CHANGED' // the object kept changing while we read it
  | 'NETWORK'
  | 'STORE';

/** Object-store errors: one line naming what is wrong and what to do; never credentials. */
export class ObjectError extends CodedError<ObjectErrorCode> {}

export const isObjectError = (err: unknown, code?: ObjectErrorCode): err is ObjectError =>
  err instanceof ObjectError && (code === undefined || err.code === code);

/** GCS's (and S3's) listing order: bytes of the UTF-8 key, not UTF-16 code units. */
export const byKey = (a: { key: string }, b: { key: string }) => Buffer.compare(Buffer.from(a.key), Buffer.from(b.key));

/** What the cache remembers about one bucket/key: enough to skip it when the store reports the same. */
interface Ledger {
  bucket: string;
  key: string;
  generation?: string;
  size: number;
  md5?: string;
  crc32c?: string;
  sha256: string;
}

export interface FetchOptions {
  /** Called with each chunk's length as it arrives from the store. */
  onBytes?(n: number): void;
  /** Re-hash a cached blob before reusing it (default: its size is checked, not its bytes). */
  rehash?: boolean;
}

export const gsUrl = (o: { bucket: string; key: string }) => `gs://${o.bucket}/${o.key}`;
const dirs = (cacheDir: string) => ({
  blobs: join(cacheDir, 'objects', 'sha256'),
  ledgers: join(cacheDir, 'objects', 'by-key'),
  tmp: join(cacheDir, 'objects', 'tmp'),
});
const ledgerPath = (cacheDir: string, o: { bucket: string; key: string }) =>
  join(dirs(cacheDir).ledgers, `${createHash('sha256').update(`${o.bucket}/${o.key}`).digest('hex')}.json`);

/**
 * GCS gives every object a CRC32C (and most an MD5 too); one store checksum is enough to catch a
 * damaged transfer, and sha256 is computed regardless. MD5 only when there is no CRC32C.
 */
export const needsMd5 = (info: ObjectInfo) => info.crc32c === undefined && info.md5 !== undefined;

/** The first way `h` differs from what the store says of `info`, or undefined. */
export function mismatch(info: ObjectInfo, h: ObjectHashes): string | undefined {
  if (h.size !== info.size) return `size is ${h.size} bytes where the store says ${info.size}`;
  if (info.md5 !== undefined && h.md5 !== undefined && h.md5 !== info.md5) return `md5 is ${h.md5} where the store says ${info.md5}`;
  if (info.crc32c !== undefined && h.crc32c !== info.crc32c) return `crc32c is ${h.crc32c} where the store says ${info.crc32c}`;
  return undefined;
}

/** Same bucket, key, size, and every generation/hash the store gives; size alone proves nothing. */
export function sameVersion(a: ObjectInfo, b: Omit<ObjectInfo, 'bucket' | 'key'> & { bucket: string; key: string }): boolean {
  if (a.bucket !== b.bucket || a.key !== b.key || a.size !== b.size) return false;
  if (a.generation !== undefined && a.generation !== b.generation) return false;
  if (a.md5 !== undefined && a.md5 !== b.md5) return false;
  if (a.crc32c !== undefined && a.crc32c !== b.crc32c) return false;
  return a.generation !== undefined || a.md5 !== undefined || a.crc32c !== undefined;
}

async function readLedger(file: string): Promise<Ledger | undefined> {
  try {
    const l = JSON.parse(await readFile(file, 'utf8')) as Ledger;
    // The hex becomes a path: a damaged or hand-edited ledger must not point anywhere else.
    return typeof l.sha256 === 'string' && /^[0-9a-f]{64}$/.test(l.sha256) && typeof l.size === 'number' ? l : undefined;
  } catch {
    return undefined; // missing or unreadable: download again
  }
}

/** The cached copy when the ledger says this exact version is here and the blob still looks right. */
async function reuse(info: ObjectInfo, cacheDir: string, rehash: boolean): Promise<CachedObject | undefined> {
  const ledger = await readLedger(ledgerPath(cacheDir, info));
  if (!ledger || !sameVersion(info, ledger)) return undefined;
  const path = join(dirs(cacheDir).blobs, ledger.sha256);
  const st = await stat(path).catch(() => undefined);
  let damaged = !st?.isFile() || st.size !== info.size;
  if (!damaged && rehash) {
    const h = await hashFile(path, { md5: needsMd5(info) });
    damaged = h.sha256 !== ledger.sha256 || mismatch(info, h) !== undefined;
  }
  if (damaged) {
    await rm(path, { force: true }); // another key's ledger may name it too: better refetched than wrong
    return undefined;
  }
  return { ...info, sha256: ledger.sha256, path, fetched: false };
}

const swept = new Set<string>();

/**
 * Removes the temp files of processes that died mid-download (kill -9, a crash): nobody will
 * finish them, and a LoRA checkpoint's half can be gigabytes. Temp names start with the pid.
 */
async function sweepTmp(tmpDir: string): Promise<void> {
  if (swept.has(tmpDir)) return;
  swept.add(tmpDir);
  for (const name of await readdir(tmpDir).catch(() => [])) {
    const pid = Number(/^(\d+)-[0-9a-f]+\.partial$/.exec(name)?.[1]);
    if (pid && pid !== process.pid && !isAlive(pid)) await rm(join(tmpDir, name), { force: true });
  }
}

type Download = { kind: 'gone' } | { kind: 'bytes'; tmp: string; hashes: ObjectHashes } | { kind: 'overflow'; tmp: string };
export type Streamed = { kind: 'gone' } | { kind: 'bytes'; hashes: ObjectHashes } | { kind: 'overflow' };

/** Further attempts after a reset or a stall, each resuming at the byte reached. */
const READ_RETRIES = 5;

/**
 * Streams one generation into `sink` while hashing; stops early if it outgrows `info.size`.
 * After a dropped connection or a stall (retryable errors) it reads on from the byte reached (the
 * hashes carry on), so a multi-gigabyte LoRA checkpoint never restarts from zero. `opts.digests`:
 * the sink hashes the bytes itself (a bundle slot, on a thread, with the CRC32C and the MD5 when
 * `needsMd5`); asked once the stream has ended, on every path.
 */
export async function streamObject(source: ObjectSource, info: ObjectInfo, sink: Writable, opts: { onBytes?: (n: number) => void; digests?: () => Promise<ObjectDigests> } = {}): Promise<Streamed> {
  const { onBytes, digests } = opts;
  const hasher = digests ? undefined : await MultiHasher.create({ md5: needsMd5(info) });
  let seen = 0;
  const TOO_BIG = Symbol('too big');
  async function* bytes(): AsyncGenerator<Buffer> {
    for (let failures = 0; ; ) {
      try {
        for await (const c of (await source.read(info, seen)) as AsyncIterable<Buffer>) {
          seen += c.length;
          failures = 0;
          onBytes?.(c.length);
          if (seen > info.size) throw TOO_BIG; // don't fill the disk with something we will reject
          hasher?.update(c); // here, not as a stream stage of its own: each costs a few µs a chunk
          yield c;
        }
        // A body that ends short without an error is the store's answer, judged by the caller.
        return;
      } catch (err) {
        if (err === TOO_BIG || !(err instanceof ObjectError && err.retryable) || failures++ >= READ_RETRIES) throw err;
        await sleep(err.retryAfterMs ?? jitteredBackoff(failures, 250, 10_000));
      }
    }
  }
  try {
    await pipeline(bytes(), sink);
  } catch (err) {
    await digests?.().catch(() => {}); // ended either way
    if (err === TOO_BIG) return { kind: 'overflow' };
    if (isObjectError(err, 'GONE')) return { kind: 'gone' };
    throw err;
  }
  return { kind: 'bytes', hashes: digests ? { size: seen, ...(await digests()) } : hasher!.result() };
}

/** A new temp file of the cache for one object's bytes (pid first: sweepTmp removes a dead process's). */
const tempName = (tmpDir: string) => join(tmpDir, `${process.pid}-${randomBytes(8).toString('hex')}.partial`);

/** One generation into a new temp file of the cache (removed unless bytes came). */
async function download(source: ObjectSource, info: ObjectInfo, tmpDir: string, onBytes?: (n: number) => void): Promise<Download> {
  const tmp = tempName(tmpDir);
  const file = await openFileSlot(tmp, info.size, gsUrl(info), { flags: 'wx' });
  try {
    const got = await streamObject(source, info, file.sink, onBytes ? { onBytes } : {});
    if (got.kind === 'bytes') await file.finish();
    await file.close();
    if (got.kind === 'gone') await rm(tmp, { force: true });
    return got.kind === 'gone' ? got : { ...got, tmp };
  } catch (err) {
    await file.close();
    await rm(tmp, { force: true });
    throw err;
  }
}

/** The cached copy of exactly this version, if the cache has one (its size checked, not its bytes). */
export async function cachedObject(info: ObjectInfo, cacheDir: string): Promise<CachedObject | undefined> {
  return reuse(info, cacheDir, false);
}

/**
 * A cache file for an object whose bytes are verified elsewhere (a bundle fetch writing them to the
 * bundle and here at once): `commit` with the hashes the caller checked against the store records
 * it; `discard` removes it.
 */
export async function objectFile(cacheDir: string): Promise<{ file: BlockFile; commit(info: ObjectInfo, h: ObjectHashes): Promise<CachedObject>; discard(): Promise<void> }> {
  const d = dirs(cacheDir);
  await Promise.all([d.blobs, d.ledgers, d.tmp].map((p) => mkdir(p, { recursive: true })));
  await sweepTmp(d.tmp);
  const tmp = tempName(d.tmp);
  const whole = await openWholeFile(tmp, 'wx');
  const discard = async () => {
    await whole.close();
    await rm(tmp, { force: true });
  };
  return {
    file: whole.file,
    commit: async (info, h) => {
      try {
        await whole.finish();
        await whole.close();
        return await commit(info, tmp, h, cacheDir);
      } catch (err) {
        await discard();
        throw err;
      }
    },
    discard,
  };
}

/** Moves verified bytes to their content address and records this version in the ledger. */
async function commit(info: ObjectInfo, tmp: string, h: ObjectHashes, cacheDir: string): Promise<CachedObject> {
  const path = join(dirs(cacheDir).blobs, h.sha256);
  // Replacing an existing blob costs the same as dropping the temp, and heals a damaged copy.
  await rename(tmp, path);
  const ledger: Ledger = {
    bucket: info.bucket,
    key: info.key,
    ...(info.generation !== undefined ? { generation: info.generation } : {}),
    size: info.size,
    ...(info.md5 !== undefined ? { md5: info.md5 } : {}),
    ...(info.crc32c !== undefined ? { crc32c: info.crc32c } : {}),
    sha256: h.sha256,
  };
  await writeFileAtomic(ledgerPath(cacheDir, info), `${JSON.stringify(ledger)}\n`);
  return { ...info, sha256: h.sha256, path, fetched: true };
}

/**
 * One object into the content-addressed cache under `cacheDir`, verified against the store's size,
 * md5 and crc32c. A version already cached is not downloaded again. If the object is overwritten
 * while being read, the new version is read once; if it changes again, this fails.
 */
export async function fetchObject(source: ObjectSource, info: ObjectInfo, cacheDir: string, opts: FetchOptions = {}): Promise<CachedObject> {
  await sweepTmp(dirs(cacheDir).tmp);
  const cached = await reuse(info, cacheDir, opts.rehash ?? false);
  if (cached) return cached;
  const d = dirs(cacheDir);
  await Promise.all([d.blobs, d.ledgers, d.tmp].map((p) => mkdir(p, { recursive: true })));
  const url = gsUrl(info);
  let current = info;
  for (let attempt = 0; ; attempt++) {
    const got = await download(source, current, d.tmp, opts.onBytes);
    try {
      const wrong = got.kind === 'bytes' ? mismatch(current, got.hashes) : got.kind === 'overflow' ? `size exceeds the ${current.size} bytes the store reports` : undefined;
      if (got.kind === 'bytes' && !wrong) return await commit(current, got.tmp, got.hashes, cacheDir);
      // Either the generation went away or the bytes disagree: ask the store what is there now.
      const fresh = await source.stat(current.bucket, current.key);
      if (!fresh) throw new ObjectError('CHANGED', `${url} was deleted while being read; run again when uploads to the bucket have finished`);
      if (got.kind !== 'gone' && sameVersion(fresh, current)) {
        throw new ObjectError('MISMATCH', `${url} arrived damaged: its ${wrong}; run again, and if it persists the stored object is corrupt`);
      }
      // A store that ignores generation pins (the emulator) may already have given us the new version.
      if (got.kind === 'bytes' && !mismatch(fresh, got.hashes)) return await commit(fresh, got.tmp, got.hashes, cacheDir);
      if (attempt >= 1) throw new ObjectError('CHANGED', `${url} changed while being read; run again when uploads to the bucket have finished`);
      current = fresh;
      const now = await reuse(current, cacheDir, opts.rehash ?? false);
      if (now) return now;
    } finally {
      if (got.kind !== 'gone') await rm(got.tmp, { force: true }); // no-op after a commit's rename
    }
  }
}

/**
 * Objects up to this size are paced by round trips and fsyncs, not bytes: they get SMALL_LANES
 * times the lanes (4 GiB bench, 400 small migrations beside four LoRA files: the artifacts were in
 * after 12.4-13.6 s instead of 17-21).
 */
export const SMALL_OBJECT = 8 << 20;
export const SMALL_LANES = 4;

export interface SyncOptions extends FetchOptions {
  /** Objects fetched at once (default 8). */
  concurrency?: number;
  /** Called as each object is cached or found cached. */
  onObject?(o: CachedObject): void;
  /** What a listing of the prefixes just gave (the plan's): not listed again. */
  listed?: readonly ObjectInfo[];
}

/** Every object under `prefixes` (overlaps counted once) into the cache; sorted by key. */
export async function syncPrefix(source: ObjectSource, bucket: string, prefixes: string[], cacheDir: string, opts: SyncOptions = {}): Promise<CachedObject[]> {
  const found = new Map<string, ObjectInfo>();
  if (opts.listed) for (const o of opts.listed) found.set(o.key, o);
  else for (const prefix of prefixes) for await (const o of source.list(bucket, prefix)) found.set(o.key, o);
  const lanes = opts.concurrency ?? 8;
  const cached = await mapBySize([...found.values()], (info) => info.size, { small: SMALL_OBJECT, lanes, smallLanes: SMALL_LANES * lanes }, async (info) => {
    const o = await fetchObject(source, info, cacheDir, opts);
    opts.onObject?.(o);
    return o;
  });
  return cached.sort(byKey);
}
