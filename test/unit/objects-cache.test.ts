import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { fetchObject, isObjectError, ObjectError, SMALL_LANES, syncPrefix } from '../../src/objects/cache.ts';
import type { ObjectInfo, ObjectSource } from '../../src/objects/types.ts';
import { rejection } from './helpers.ts';

const BUCKET = 'b';
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const md5 = (b: Buffer) => createHash('md5').update(b).digest('base64');

/** An in-memory store with GCS's rules (generations, 404 on a stale pin) and hooks to misbehave. */
class MemorySource implements ObjectSource {
  readonly description = 'memory';
  private readonly objects = new Map<string, { data: Buffer; generation: string; md5?: string }>();
  private gen = 1000;
  reads = 0;
  inFlight = 0;
  maxInFlight = 0;
  /** Serve the current generation whatever the pin says (the firebase emulator). */
  ignorePins = false;
  /** Runs as a read starts, before the generation is checked. */
  beforeRead?: (info: ObjectInfo) => void;
  /** Changes the bytes served (not the metadata). */
  damage?: (b: Buffer) => Buffer;
  /** Ends the next reads with this error after `bytes` more bytes (a reset mid-body), once each. */
  breaks: { bytes: number; error: ObjectError }[] = [];
  /** The offset each read asked for. */
  offsets: number[] = [];

  put(key: string, data: Buffer, opts: { noMd5?: boolean } = {}): void {
    this.objects.set(key, { data, generation: String(++this.gen), ...(opts.noMd5 ? {} : { md5: md5(data) }) });
  }
  delete(key: string): void {
    this.objects.delete(key);
  }
  private info(key: string): ObjectInfo | undefined {
    const o = this.objects.get(key);
    if (!o) return undefined;
    // A fake crc32c is enough here: the cache compares it as a string; the hasher's own tests cover CRC32C.
    return { bucket: BUCKET, key, size: o.data.length, generation: o.generation, ...(o.md5 ? { md5: o.md5 } : {}) };
  }
  async *list(_bucket: string, prefix: string): AsyncIterable<ObjectInfo> {
    for (const key of [...this.objects.keys()].filter((k) => k.startsWith(prefix)).sort().reverse()) yield this.info(key)!;
  }
  async stat(_bucket: string, key: string) {
    return this.info(key);
  }
  async read(info: ObjectInfo, offset = 0): Promise<Readable> {
    this.reads++;
    this.offsets.push(offset);
    this.beforeRead?.(info);
    const o = this.objects.get(info.key);
    if (!o || (!this.ignorePins && o.generation !== info.generation)) throw new ObjectError('GONE', `gs://${BUCKET}/${info.key} generation gone`);
    const data = (this.damage ? this.damage(o.data) : o.data).subarray(offset);
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    await new Promise((r) => setTimeout(r, 5));
    this.inFlight--;
    const broken = this.breaks.shift();
    return Readable.from((function* () {
      const end = broken ? Math.min(broken.bytes, data.length) : data.length;
      for (let i = 0; i < end; i += 16 * 1024) yield data.subarray(i, Math.min(end, i + 16 * 1024));
      if (broken) throw broken.error;
    })());
  }
}

let dir: string;
let src: MemorySource;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'objects-cache-'));
  src = new MemorySource();
});
afterEach(() => rm(dir, { recursive: true, force: true }));

const blobs = () => readdir(join(dir, 'objects', 'sha256')).catch(() => []);
const temps = () => readdir(join(dir, 'objects', 'tmp')).catch(() => []);
const stat = async (key: string) => (await src.stat(BUCKET, key))!;

describe('fetchObject', () => {
  it('stores verified bytes by sha256 with a ledger, and skips the download next time', async () => {
    const data = randomBytes(5000);
    src.put('a/one.bin', data);
    let bytes = 0;
    const first = await fetchObject(src, await stat('a/one.bin'), dir, { onBytes: (n) => (bytes += n) });
    expect(first).toMatchObject({ key: 'a/one.bin', sha256: sha256(data), fetched: true, path: join(dir, 'objects', 'sha256', sha256(data)) });
    expect(bytes).toBe(5000);
    expect((await readFile(first.path)).equals(data)).toBe(true);
    const [ledgerName] = await readdir(join(dir, 'objects', 'by-key'));
    expect(ledgerName).toBe(`${sha256(Buffer.from(`${BUCKET}/a/one.bin`))}.json`);
    const ledger = JSON.parse(await readFile(join(dir, 'objects', 'by-key', ledgerName!), 'utf8'));
    expect(ledger).toEqual({ bucket: BUCKET, key: 'a/one.bin', generation: first.generation, size: 5000, md5: md5(data), sha256: sha256(data) });

    bytes = 0;
    const again = await fetchObject(src, await stat('a/one.bin'), dir, { onBytes: (n) => (bytes += n) });
    expect(again).toEqual({ ...first, fetched: false });
    expect([src.reads, bytes]).toEqual([1, 0]);
  });

  it('names the object and the hash that differs, and leaves nothing behind', async () => {
    src.put('k', randomBytes(4000));
    src.damage = (b) => Buffer.concat([b.subarray(0, 10), Buffer.from([b[10]! ^ 1]), b.subarray(11)]);
    const err = await rejection(fetchObject(src, await stat('k'), dir));
    expect(isObjectError(err, 'MISMATCH')).toBe(true);
    expect(err.message).toMatch(/^gs:\/\/b\/k arrived damaged: its md5 is \S+ where the store says \S+; run again/);
    expect([await blobs(), await temps()]).toEqual([[], []]);
  });

  it('checks size when the store gives no md5, and stops reading a body that outgrows it', async () => {
    src.put('short', randomBytes(3000), { noMd5: true });
    src.damage = (b) => b.subarray(0, 2999);
    expect((await rejection(fetchObject(src, await stat('short'), dir))).message).toMatch(/^gs:\/\/b\/short arrived damaged: its size is 2999 bytes where the store says 3000/);
    src.put('long', randomBytes(3000));
    src.damage = (b) => Buffer.concat([b, Buffer.alloc(4 << 20)]);
    let bytes = 0;
    const err = await rejection(fetchObject(src, await stat('long'), dir, { onBytes: (n) => (bytes += n) }));
    expect(err.message).toMatch(/size exceeds the 3000 bytes/);
    expect(bytes).toBeLessThan(2 * 16 * 1024); // one chunk past the size, not 4 MiB
    expect([await blobs(), await temps()]).toEqual([[], []]);
  });

  it('re-reads the new generation once when the pinned one is overwritten mid-run', async () => {
    src.put('k', Buffer.from('old'));
    const old = await stat('k');
    const next = randomBytes(2000);
    src.beforeRead = () => {
      src.beforeRead = undefined;
      src.put('k', next);
    };
    const got = await fetchObject(src, old, dir);
    expect(got).toMatchObject({ sha256: sha256(next), size: 2000, fetched: true });
    expect(got.generation).not.toBe(old.generation);
    expect(src.reads).toBe(2);
  });

  it('keeps bytes that match the new metadata when the store ignored the pin (no second read)', async () => {
    src.ignorePins = true;
    src.put('k', randomBytes(2000));
    const old = await stat('k');
    const next = randomBytes(1500); // smaller: a larger body is cut off at the old size and read again
    src.put('k', next);
    const got = await fetchObject(src, old, dir);
    expect(got).toMatchObject({ sha256: sha256(next), generation: (await stat('k')).generation });
    expect(src.reads).toBe(1);
  });

  it('reads on from the byte it reached after a reset or a stall, and gives up on an error no retry can cure', async () => {
    const data = randomBytes(100_000);
    src.put('k', data);
    const reset = () => new ObjectError('NETWORK', 'cannot reach GCS: ECONNRESET', { retryable: true });
    src.breaks = [{ bytes: 40_000, error: reset() }, { bytes: 25_000, error: reset() }];
    let bytes = 0;
    const got = await fetchObject(src, await stat('k'), dir, { onBytes: (n) => (bytes += n) });
    expect(got).toMatchObject({ sha256: sha256(data), size: data.length, fetched: true });
    expect(src.offsets).toEqual([0, 40_000, 65_000]);
    expect(bytes).toBe(data.length); // no byte fetched twice
    expect(await temps()).toEqual([]);

    src.put('denied', data);
    src.breaks = [{ bytes: 1000, error: new ObjectError('DENIED', 'the key was refused') }];
    src.offsets = [];
    expect((await rejection(fetchObject(src, await stat('denied'), dir))).message).toBe('the key was refused');
    expect(src.offsets).toEqual([0]);
    expect(await temps()).toEqual([]);
  });

  it('gives up when the object changes again, or is deleted, while being read', async () => {
    src.put('k', Buffer.from('v0'));
    const first = await stat('k');
    src.beforeRead = () => src.put('k', randomBytes(100));
    const err = await rejection(fetchObject(src, first, dir));
    expect(isObjectError(err, 'CHANGED')).toBe(true);
    expect(err.message).toBe('gs://b/k changed while being read; run again when uploads to the bucket have finished');
    src.beforeRead = () => src.delete('k');
    expect((await rejection(fetchObject(src, await stat('k'), dir))).message).toMatch(/^gs:\/\/b\/k was deleted while being read/);
    expect(await blobs()).toEqual([]);
  });

  it('refetches a cached blob whose size is wrong; a same-size change needs rehash', async () => {
    const data = randomBytes(3000);
    src.put('k', data);
    const { path } = await fetchObject(src, await stat('k'), dir);
    await truncate(path, 100);
    expect(await fetchObject(src, await stat('k'), dir)).toMatchObject({ fetched: true, sha256: sha256(data) });
    // Same size, different bytes: size-only reuse does not see it (the bundle writer hashes again).
    const evil = Buffer.from(data);
    evil[0]! ^= 0xff;
    await writeFile(path, evil);
    expect((await fetchObject(src, await stat('k'), dir)).fetched).toBe(false);
    expect(await fetchObject(src, await stat('k'), dir, { rehash: true })).toMatchObject({ fetched: true, sha256: sha256(data) });
    expect((await readFile(path)).equals(data)).toBe(true);
  });

  it('sweeps the temp files left by dead processes (kill -9 mid-download), never those of a live one', async () => {
    const tmp = join(dir, 'objects', 'tmp');
    await mkdir(tmp, { recursive: true });
    const dead = `${2 ** 22 + 1}-0123456789abcdef.partial`; // above any pid_max: no such process
    const live = `${process.ppid}-fedcba9876543210.partial`;
    for (const n of [dead, live, 'notes.txt']) await writeFile(join(tmp, n), 'half a download');
    src.put('k', randomBytes(100));
    await fetchObject(src, await stat('k'), dir);
    expect((await temps()).sort()).toEqual(['notes.txt', live].sort());
  });

  it('ignores a ledger that points outside the cache', async () => {
    src.put('k', Buffer.from('x'));
    await fetchObject(src, await stat('k'), dir);
    const ledgers = join(dir, 'objects', 'by-key');
    const [name] = await readdir(ledgers);
    const l = JSON.parse(await readFile(join(ledgers, name!), 'utf8'));
    await writeFile(join(ledgers, name!), JSON.stringify({ ...l, sha256: '../../../etc/passwd' }));
    expect((await fetchObject(src, await stat('k'), dir)).fetched).toBe(true);
  });
});

describe('syncPrefix', () => {
  it('fetches everything under overlapping prefixes once, sorted by key, with bounded concurrency (small objects get SMALL_LANES times the lanes)', async () => {
    for (let i = 0; i < 20; i++) src.put(`p/${String(i).padStart(2, '0')}.bin`, randomBytes(1500 + i));
    src.put('other/x', Buffer.from('not wanted'));
    const seen: string[] = [];
    const got = await syncPrefix(src, BUCKET, ['p/', 'p/1'], dir, { concurrency: 3, onObject: (o) => seen.push(o.key) });
    expect(got.map((o) => o.key)).toEqual(Array.from({ length: 20 }, (_, i) => `p/${String(i).padStart(2, '0')}.bin`));
    expect(seen.sort()).toEqual(got.map((o) => o.key));
    expect(src.maxInFlight).toBeLessThanOrEqual(3 * SMALL_LANES);
    expect(src.maxInFlight).toBeGreaterThan(3);
    expect(src.reads).toBe(20);
    const again = await syncPrefix(src, BUCKET, ['p/'], dir);
    expect(again.every((o) => !o.fetched)).toBe(true);
    expect(src.reads).toBe(20);
  });

  it('with `listed` fetches exactly what the caller listed, without listing again', async () => {
    for (let i = 0; i < 5; i++) src.put(`p/${i}.bin`, randomBytes(100 + i));
    const planned: ObjectInfo[] = [];
    for await (const o of src.list(BUCKET, 'p/')) planned.push(o);
    src.put('p/late.bin', Buffer.from('arrived after the plan'));
    const got = await syncPrefix(src, BUCKET, ['p/'], dir, { listed: planned });
    expect(got.map((o) => o.key)).toEqual(['p/0.bin', 'p/1.bin', 'p/2.bin', 'p/3.bin', 'p/4.bin']);
    expect(src.reads).toBe(5);
  });

  it('stops starting downloads after the first failure and reports it', async () => {
    for (let i = 0; i < 10; i++) src.put(`p/${i}`, randomBytes(2000));
    src.damage = (b) => Buffer.alloc(b.length);
    const err = await rejection(syncPrefix(src, BUCKET, ['p/'], dir, { concurrency: 2 }));
    expect(isObjectError(err, 'MISMATCH')).toBe(true);
    expect(src.reads).toBeLessThan(10);
  });
});
