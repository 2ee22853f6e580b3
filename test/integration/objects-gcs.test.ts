import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Storage } from '@google-cloud/storage';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { byKey, fetchObject, isObjectError, syncPrefix } from '../../src/objects/cache.ts';
import { GcsSource } from '../../src/objects/gcs.ts';
import { isCodedError } from '../../src/util/errors.ts';
import type { CachedObject, ObjectInfo } from '../../src/objects/types.ts';
import { run } from '../testbed/run.ts';
import { sha256 } from './helpers.ts';

const bed = inject('testbed');
const fixture = inject('fixture');
const CUSTOMER = `cartesia-${fixture.customer}`;
const PREFIXES = ['migrations/v2/migrations/', 'loras/'];
const want = fixture.objects.filter((o) => o.bucket === CUSTOMER && PREFIXES.some((p) => o.key.startsWith(p))).sort(byKey);
const source = new GcsSource({ endpoint: bed.gcs.endpoint });
// The test's own client, for writes; the fixture's buckets are only ever read.
const storage = new Storage({ apiEndpoint: bed.gcs.endpoint, projectId: 'cartesia-airgap-testbed' });
const OWN = `airgap-objects-test-${randomBytes(4).toString('hex')}`;

const collect = async <T>(it: AsyncIterable<T>) => {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
};
const put = (key: string, data: Buffer | string) => storage.bucket(OWN).file(key).save(data, { resumable: false });
/** `sha256sum` over the cached files: an oracle independent of our hasher. */
async function sha256sum(objs: CachedObject[]): Promise<Map<string, string>> {
  const out = await run('sha256sum', objs.map((o) => o.path));
  const byPath = new Map(out.trim().split('\n').map((l) => [l.slice(66), l.slice(0, 64)] as const));
  return new Map(objs.map((o) => [o.key, byPath.get(o.path) ?? 'missing']));
}

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'objects-gcs-'));
});
afterAll(() => rm(work, { recursive: true, force: true }));

describe('GcsSource against the emulator', () => {
  it('lists the customer prefixes with the sizes and hashes the fixture uploaded, across pages', async () => {
    expect(want.length).toBeGreaterThan(10);
    const pick = (o: ObjectInfo) => ({ bucket: o.bucket, key: o.key, size: o.size, md5: o.md5, crc32c: o.crc32c });
    for (const src of [source, new GcsSource({ endpoint: bed.gcs.endpoint, pageSize: 2 })]) {
      const [migrations, loras] = [await collect(src.list(CUSTOMER, PREFIXES[0]!)), await collect(src.list(CUSTOMER, PREFIXES[1]!))];
      for (const part of [migrations, loras]) expect(part.map((o) => o.key)).toEqual([...part].sort(byKey).map((o) => o.key));
      const listed = [...loras, ...migrations];
      expect(listed.map(pick)).toEqual(want.map(pick));
      expect(listed.every((o) => /^\d+$/.test(o.generation ?? ''))).toBe(true);
    }
  });

  it('syncs into the cache verified (sha256sum agrees), then reuses it without downloading', async () => {
    const cache = join(work, 'sync');
    let bytes = 0;
    let reported = 0;
    const first = await syncPrefix(source, CUSTOMER, PREFIXES, cache, { concurrency: 4, onBytes: (n) => (bytes += n), onObject: () => reported++ });
    expect(first.map((o) => o.key)).toEqual(want.map((o) => o.key));
    expect(first.every((o) => o.fetched)).toBe(true);
    expect([bytes, reported]).toEqual([want.reduce((n, o) => n + o.size, 0), want.length]);
    const sums = await sha256sum(first);
    for (const o of want) expect({ key: o.key, sha256: sums.get(o.key) }).toEqual({ key: o.key, sha256: o.sha256 });
    expect(first.map((o) => o.sha256)).toEqual(want.map((o) => o.sha256));

    bytes = 0;
    const again = await syncPrefix(source, CUSTOMER, PREFIXES, cache, { onBytes: (n) => (bytes += n) });
    expect(again.every((o) => !o.fetched)).toBe(true);
    expect(again.map(({ fetched: _, ...o }) => o)).toEqual(first.map(({ fetched: _, ...o }) => o));
    expect(bytes).toBe(0);

    // A truncated blob is noticed on reuse (size check) and fetched again; the others are not.
    await truncate(first[0]!.path, 1);
    const healed = await syncPrefix(source, CUSTOMER, PREFIXES, cache, { onBytes: (n) => (bytes += n) });
    expect(healed.filter((o) => o.fetched).map((o) => o.key)).toEqual([first[0]!.key]);
    expect(bytes).toBe(first[0]!.size);
    expect((await sha256sum([healed[0]!])).get(healed[0]!.key)).toBe(first[0]!.sha256);
  });
});

describe('objects that change (a bucket of the test’s own)', () => {
  it('fetches an overwritten object again, and only that one', async () => {
    const cache = join(work, 'overwrite');
    await Promise.all([put('data/a.bin', randomBytes(20_000)), put('data/b.bin', randomBytes(30_000)), put('data/', '')]);
    const first = await syncPrefix(source, OWN, ['data/'], cache);
    expect(first.map((o) => o.key)).toEqual(['data/a.bin', 'data/b.bin']); // the "folder" object is skipped
    const next = randomBytes(25_000);
    await put('data/b.bin', next);
    let bytes = 0;
    const second = await syncPrefix(source, OWN, ['data/'], cache, { onBytes: (n) => (bytes += n) });
    expect(second.map((o) => [o.key, o.fetched])).toEqual([['data/a.bin', false], ['data/b.bin', true]]);
    expect(second[1]).toMatchObject({ sha256: sha256(next), size: 25_000 });
    expect(second[1]!.generation).not.toBe(first[1]!.generation);
    expect(bytes).toBe(25_000);
    expect((await sha256sum(second)).get('data/b.bin')).toBe(sha256(next));
  });

  it('handles a stale generation pin: the emulator ignores it, read() says GONE, fetchObject reads the new one', async () => {
    await put('pin/obj', 'first version');
    const old = (await source.stat(OWN, 'pin/obj'))!;
    await put('pin/obj', 'second, longer version');
    // Emulator behaviour (firebase-tools 15.34.2): it keeps one generation per object and ignores the
    // `generation` query parameter on both metadata and media requests, serving the current one where
    // GCS would answer 404. Its x-goog-generation response header does name what it served, and
    // GcsSource.read() compares that with the pin.
    const [served] = await storage.bucket(OWN).file('pin/obj', { generation: Number(old.generation) }).download({ validation: false });
    expect(served.toString()).toBe('second, longer version');
    const [meta] = await storage.bucket(OWN).file('pin/obj', { generation: Number(old.generation) }).getMetadata();
    expect(String(meta.generation)).not.toBe(old.generation);

    const err = await source.read(old).then(() => undefined, (e: unknown) => e);
    expect(isObjectError(err, 'GONE')).toBe(true);
    expect((err as Error).message).toBe(`gs://${OWN}/pin/obj generation ${old.generation} is no longer available; it was overwritten or deleted`);
    const got = await fetchObject(source, old, join(work, 'pin'));
    expect(got).toMatchObject({ fetched: true, sha256: sha256('second, longer version'), size: 22 });
    expect(got.generation).toBe((await source.stat(OWN, 'pin/obj'))!.generation);
    expect(await source.stat(OWN, 'pin/missing')).toBeUndefined();
  });
});

describe('concurrent reads', () => {
  it('a read cut short does not break the others in flight', async () => {
    // Storage 8.4.0 on its own destroys its shared keep-alive agent when any download stream ends
    // early, and the other downloads die with ECONNRESET; GcsSource turns that agent off.
    const big = [randomBytes(24 << 20), randomBytes(24 << 20)];
    await Promise.all(big.map((b, i) => put(`big/${i}`, b)));
    const [quitter, keeper] = await Promise.all([0, 1].map(async (i) => source.read((await source.stat(OWN, `big/${i}`))!)));
    const kept = (async () => {
      const chunks: Buffer[] = [];
      for await (const c of keeper!) chunks.push(c as Buffer);
      return Buffer.concat(chunks);
    })();
    for await (const _ of quitter!) break; // one chunk, then give up: the stream is destroyed
    expect(sha256(await kept)).toBe(sha256(big[1]!));
  });
});

describe('one-line errors', () => {
  it('names a bucket that does not exist (as GCS answers it; the emulator cannot)', async () => {
    // Emulator behaviour: any request naming /b/<bucket>/ creates that bucket, and bucket metadata
    // (GET /b/<bucket>) is not implemented, so a missing bucket just lists empty.
    expect(await collect(source.list(`airgap-no-such-${randomBytes(4).toString('hex')}`, ''))).toEqual([]);

    // So a stand-in answers as GCS does: 404 "The specified bucket does not exist." on objects.list,
    // 403 with the caller's name for a bucket it may not read.
    const gcs = createServer((req, res) => {
      const bucket = /\/b\/([^/]+)\/o/.exec(req.url ?? '')?.[1];
      const [code, message] = bucket === 'locked' ? [403, "anonymous caller does not have storage.objects.list access to the Google Cloud Storage bucket. Permission 'storage.objects.list' denied on resource (or it may not exist)."] : [404, 'The specified bucket does not exist.'];
      res.writeHead(code, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code, message, errors: [{ message, domain: 'global', reason: code === 404 ? 'notFound' : 'forbidden' }] } }));
    });
    await new Promise<void>((r) => gcs.listen(0, '127.0.0.1', r));
    try {
      const fake = new GcsSource({ endpoint: `http://127.0.0.1:${(gcs.address() as AddressInfo).port}` });
      const missing = await collect(fake.list('cartesia-nope', 'loras/')).then(() => undefined, (e: unknown) => e as Error);
      expect(isObjectError(missing, 'NOT_FOUND')).toBe(true);
      expect(missing!.message).toBe('bucket gs://cartesia-nope does not exist or the key cannot see it');
      const locked = await collect(fake.list('locked', '')).then(() => undefined, (e: unknown) => e as Error);
      expect(isObjectError(locked, 'DENIED')).toBe(true);
      expect(locked!.message).toMatch(/^gs:\/\/locked refused access without a key: anonymous caller does not have storage\.objects\.list access .*; pass a service-account key that can read it$/);
      expect(locked!.message).not.toMatch(/\n/);
    } finally {
      await new Promise((r) => gcs.close(r));
    }
  });

  it('refuses a malformed key file before any request, without quoting it', async () => {
    const secret = `SECRET-${randomBytes(8).toString('hex')}`;
    const cases: [string, RegExp][] = [
      [`-----BEGIN PRIVATE KEY-----\n${secret}\n-----END PRIVATE KEY-----\n`, /\(not JSON\)/],
      [JSON.stringify({ type: 'authorized_user', client_id: 'x', client_secret: secret, refresh_token: secret }), /its type is "authorized_user", not "service_account"/],
      [JSON.stringify({ type: 'service_account', client_email: 'a@b.iam.gserviceaccount.com', private_key: `-----BEGIN PRIVATE KEY-----\n${secret}\n-----END PRIVATE KEY-----\n` }), /its private_key is not a PEM private key/],
    ];
    for (const [i, [content, why]] of cases.entries()) {
      const keyFile = join(work, `bad-key-${i}.json`);
      await writeFile(keyFile, content, { mode: 0o600 });
      const src = new GcsSource({ endpoint: bed.gcs.endpoint, keyFile });
      const err = await collect(src.list(CUSTOMER, 'loras/')).then(() => undefined, (e: unknown) => e as Error);
      expect(isCodedError(err, 'BAD_KEY')).toBe(true);
      expect(err!.message).toMatch(new RegExp(`^${keyFile.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is not a service-account JSON key `));
      expect(err!.message).toMatch(why);
      expect(`${err!.message}${String(err!.cause ?? '')}`).not.toContain(secret);
      // Every call fails the same way: the key is not half-accepted later.
      expect((await src.stat(CUSTOMER, 'x').then(() => undefined, (e: unknown) => e as Error))?.message).toBe(err!.message);
    }
    // The bed's real key passes the same checks (its use needs Google's token endpoint, not tested here).
    expect((await readFile(bed.saKeyFile, 'utf8')).includes('service_account')).toBe(true);
    await expect(import('../../src/objects/gcs.ts').then((m) => m.loadServiceAccountKey(bed.saKeyFile))).resolves.toMatchObject({ client_email: expect.stringContaining('@') });
  });
});
