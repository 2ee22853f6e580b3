import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { GetObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { isObjectError } from '../../src/objects/cache.ts';
import { S3Sink, type S3SinkOptions } from '../../src/objects/s3.ts';
import { seededBytes, seededRange } from '../fixtures/bytes.ts';
import { startProcess, type ServerProcess } from '../testbed/process.ts';
import { startFaultProxy, type FaultProxy } from '../testbed/fault-proxy.ts';
import { MOTO_BIN } from '../testbed/servers.ts';
import { run } from '../testbed/run.ts';
import { rejection } from '../unit/helpers.ts';

const bed = inject('testbed');
const MiB = 1024 * 1024;
const BUCKET = `airgap-s3-sink-${randomBytes(4).toString('hex')}`;
const creds = { accessKeyId: bed.s3.accessKeyId, secretAccessKey: bed.s3.secretAccessKey };
const base: S3SinkOptions = { endpoint: bed.s3.endpoint, region: bed.s3.region, bucket: BUCKET, credentials: creds, partSize: 5 * MiB, queueSize: 2 };
// The test's own client: the oracle reads back what the sink wrote.
const s3 = new S3Client({
  endpoint: bed.s3.endpoint,
  region: bed.s3.region,
  forcePathStyle: true,
  credentials: creds,
  requestChecksumCalculation: 'WHEN_REQUIRED',
  responseChecksumValidation: 'WHEN_REQUIRED',
});

/** The sha256 (or another hash) of `seededBytes(seed, size)`, computed in memory (the declared values). */
async function digest(seed: string, size: number, algorithm = 'sha256'): Promise<string> {
  const h = createHash(algorithm);
  for await (const c of seededBytes(seed, size)) h.update(c as Buffer);
  return h.digest('hex');
}
/** A put's source: the whole object, or the range a part asks for. */
const source = (seed: string, size: number) => (range?: { start: number; length: number }) => Promise.resolve(range ? seededRange(seed, size, range.start, range.length) : seededBytes(seed, size));

let work: string;
/** The object's bytes fetched with GetObject into a file and hashed by `sha256sum`: an independent oracle. */
async function storedSha256(key: string, bucket = BUCKET): Promise<string> {
  const res = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  const file = join(work, randomBytes(6).toString('hex'));
  await pipeline(res.Body as Readable, createWriteStream(file));
  return (await run('sha256sum', [file])).slice(0, 64);
}
const headOrUndefined = (key: string) =>
  s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: key })).catch((err: { $metadata?: { httpStatusCode?: number } }) => {
    if (err.$metadata?.httpStatusCode === 404) return undefined;
    throw err;
  });

let sink: S3Sink;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'airgap-s3-test-'));
  sink = new S3Sink(base);
});
afterAll(async () => {
  sink.close();
  await rm(work, { recursive: true, force: true });
});

describe('S3Sink against moto', () => {
  it('creates a fresh bucket, then finds it', async () => {
    expect(sink.description).toBe(`s3://${BUCKET} at ${bed.s3.endpoint}`);
    expect(await sink.ensureBucket()).toBe('created');
    expect(await sink.ensureBucket()).toBe('existed');
    expect(await sink.head('nothing/here')).toBeUndefined();
  });

  it('puts a small object in one request, with its sha256 in metadata and an MD5 ETag', async () => {
    const size = 3000 + 17;
    const sha = await digest('small', size);
    const res = await sink.put('loras/small.bin', size, sha, source('small', size));
    expect(res).toMatchObject({ key: 'loras/small.bin', how: 'uploaded', size, sha256: sha });
    expect(await storedSha256('loras/small.bin')).toBe(sha);
    const h = await s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: 'loras/small.bin' }));
    expect(h.Metadata?.['sha256']).toBe(sha);
    const md5 = createHash('md5');
    for await (const c of seededBytes('small', size)) md5.update(c as Buffer);
    expect(h.ETag).toBe(`"${md5.digest('hex')}"`);
    expect(res.etag).toBe(h.ETag?.replaceAll('"', ''));
    expect(await sink.head('loras/small.bin')).toEqual({ size, sha256: sha, etag: res.etag });
  });

  it('puts an empty object', async () => {
    const sha = createHash('sha256').digest('hex');
    expect((await sink.put('empty', 0, sha, () => Promise.resolve(Readable.from([])))).how).toBe('uploaded');
    expect(await sink.head('empty')).toMatchObject({ size: 0, sha256: sha });
  });

  it('puts a large object in parts (S3-style ETag) and the bytes read back equal', async () => {
    const size = 20 * MiB + 12345;
    const sha = await digest('large', size);
    const res = await sink.put('loras/large.bin', size, sha, source('large', size));
    expect(res.how).toBe('uploaded');
    expect(res.etag).toMatch(/^[0-9a-f]{32}-5$/); // 4 full 5 MiB parts + a short one
    expect(await storedSha256('loras/large.bin')).toBe(sha);
    const h = await s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: 'loras/large.bin' }));
    expect(h.Metadata?.['sha256']).toBe(sha);
    expect(h.ETag).toBe(`"${res.etag}"`);
  });

  it('reads a verified source once, part by part, and an unverified one a second time whole', async () => {
    const size = 11 * MiB + 7;
    const sha = await digest('verified', size);
    for (const verified of [true, false]) {
      const opened: string[] = [];
      const counting = (range?: { start: number; length: number }) => (opened.push(range ? `${range.start}+${range.length}` : 'whole'), source('verified', size)(range));
      const res = await sink.put(`verified/${verified}.bin`, size, sha, counting, { listed: null, verified });
      expect(res.etag).toMatch(/^[0-9a-f]{32}-3$/);
      expect(await storedSha256(`verified/${verified}.bin`)).toBe(sha);
      const parts = [`0+${5 * MiB}`, `${5 * MiB}+${5 * MiB}`, `${10 * MiB}+${MiB + 7}`];
      expect(opened.sort()).toEqual((verified ? parts : [...parts, 'whole']).sort());
    }
  });

  it('sends a large object whose MD5 it is given in one streamed PUT, hashing nothing; the server refuses bytes without that MD5', async () => {
    const size = 12 * MiB + 3;
    const sha = await digest('md5-known', size);
    const md5Hex = await digest('md5-known', size, 'md5');
    const opened: string[] = [];
    const counting = (range?: { start: number; length: number }) => (opened.push(range ? `${range.start}+${range.length}` : 'whole'), source('md5-known', size)(range));
    const res = await sink.put('md5/known.bin', size, sha, counting, { listed: null, verified: true, md5: Buffer.from(md5Hex, 'hex').toString('base64') });
    expect(res).toMatchObject({ how: 'uploaded', etag: md5Hex }); // a single-request ETag: the MD5, no "-N"
    expect(opened).toEqual(['whole']);
    expect(await storedSha256('md5/known.bin')).toBe(sha);
    expect((await headOrUndefined('md5/known.bin'))?.Metadata?.['sha256']).toBe(sha);

    // The MD5 of other bytes: the server checks Content-MD5 and stores nothing.
    const wrong = createHash('md5').update('other bytes').digest('base64');
    const err = await rejection(sink.put('md5/wrong.bin', size, sha, source('md5-known', size), { listed: null, verified: true, md5: wrong }));
    expect(isObjectError(err, 'MISMATCH')).toBe(true);
    expect(err.message).toContain('s3://');
    expect(err.message).not.toContain('\n');
    expect(await headOrUndefined('md5/wrong.bin')).toBeUndefined();
  });

  it('skips an identical object without reading the source or writing', async () => {
    const size = 4096;
    const sha = await digest('again', size);
    await sink.put('again.bin', size, sha, source('again', size));
    const before = await s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: 'again.bin' }));
    await new Promise((r) => setTimeout(r, 1100)); // LastModified has one-second resolution
    let opened = 0;
    const res = await sink.put('again.bin', size, sha, () => (opened++, Promise.resolve(seededBytes('again', size))));
    expect(res).toMatchObject({ how: 'skipped', size, sha256: sha });
    expect(opened).toBe(0);
    const after = await s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: 'again.bin' }));
    expect(after.LastModified).toEqual(before.LastModified);

    // Same key, different content: uploaded, and the new bytes are what is stored.
    const sha2 = await digest('again-2', size);
    expect((await sink.put('again.bin', size, sha2, source('again-2', size))).how).toBe('uploaded');
    expect(await storedSha256('again.bin')).toBe(sha2);
    expect((await sink.put('again.bin', size, sha2, source('again-2', size))).how).toBe('skipped');

    // The same bytes put by another tool, without our sha256 metadata: size alone proves nothing.
    const bytes = Buffer.concat(await seededBytes('again', size).toArray());
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'foreign.bin', Body: bytes }));
    expect((await sink.put('foreign.bin', size, sha, source('again', size))).how).toBe('uploaded');
    expect(await sink.head('foreign.bin')).toMatchObject({ size, sha256: sha });
  });

  it('lists with ETags that let a second put skip without a request, and a missing bucket lists empty', async () => {
    expect((await new S3Sink({ ...base, bucket: `${BUCKET}-none` }).list('')).size).toBe(0);
    const small = { key: 'listed/a.json', size: 777, seed: 'listed-a' };
    const large = { key: 'listed/b/large.bin', size: 11 * MiB + 3, seed: 'listed-b' };
    const before = await sink.list('listed/');
    expect(before.size).toBe(0);
    const done = new Map<string, string>();
    for (const o of [small, large]) {
      const res = await sink.put(o.key, o.size, await digest(o.seed, o.size), source(o.seed, o.size), { listed: before.get(o.key) ?? null });
      expect(res.how).toBe('uploaded');
      expect(await storedSha256(o.key)).toBe(res.sha256);
      done.set(o.key, res.etag!);
    }
    const after = await sink.list('listed/');
    expect([...after.keys()]).toEqual([small.key, large.key]);
    for (const o of [small, large]) {
      expect(after.get(o.key)).toEqual({ size: o.size, etag: done.get(o.key) });
      let opened = false;
      const res = await sink.put(o.key, o.size, await digest(o.seed, o.size), () => ((opened = true), source(o.seed, o.size)()), { listed: after.get(o.key)!, etag: done.get(o.key)! });
      expect(res).toMatchObject({ how: 'skipped', etag: done.get(o.key) });
      expect(opened).toBe(false);
    }
    // The whole bucket: these and what the other tests put.
    expect([...(await sink.list()).keys()]).toEqual(expect.arrayContaining([small.key, large.key, 'loras/small.bin']));
  });

  describe.each([
    ['single-part', 200 * 1024],
    ['multipart', 12 * MiB + 1],
  ])('a source whose bytes are not the declared ones (%s)', (kind, size) => {
    const key = `bad/${kind}.bin`;
    const inflight = async () => (await s3.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: key }))).Uploads ?? [];

    it('fails naming the key and leaves nothing under a new key', async () => {
      const err = await rejection(sink.put(key, size, await digest('declared', size), source('actual', size)));
      expect(isObjectError(err, 'MISMATCH')).toBe(true);
      expect(err.message).toContain(`s3://${BUCKET}/${key}`);
      expect(err.message).not.toContain('\n');
      expect(await headOrUndefined(key)).toBeUndefined();
      expect(await inflight()).toEqual([]); // the multipart upload was aborted, its parts dropped
    });

    it('fails on a short source too', async () => {
      const err = await rejection(sink.put(key, size, await digest('declared', size), source('declared', size - 1)));
      expect(err.message).toMatch(/bytes where \d+ were declared/);
      expect(await headOrUndefined(key)).toBeUndefined();
      expect(await inflight()).toEqual([]);
    });

    it('leaves the old object in place under an existing key', async () => {
      const good = await digest('good', size);
      await sink.put(key, size, good, source('good', size));
      const err = await rejection(sink.put(key, size, await digest('declared', size), source('actual', size)));
      expect(isObjectError(err, 'MISMATCH')).toBe(true);
      expect(await storedSha256(key)).toBe(good);
      expect((await headOrUndefined(key))?.Metadata?.['sha256']).toBe(good);
      expect(await inflight()).toEqual([]);
    });
  });
});

describe('S3Sink multipart through a faulty connection', () => {
  let proxy: FaultProxy;
  beforeAll(async () => {
    proxy = await startFaultProxy({ name: 's3', upstream: bed.s3.endpoint, seed: 7 });
  });
  afterAll(() => proxy?.close());

  it('sends a cut, throttled or refused part again from its own range, and completes once', async () => {
    const size = 22 * MiB + 5;
    const sha = await digest('faulty', size);
    const part = (n: number) => new RegExp(`/faulty\\.bin\\?.*partNumber=${n}&`);
    proxy.setRules([
      { name: 'part 2 cut', fault: { kind: 'cut-upload', at: { min: 100_000, max: 200_000 } }, method: 'PUT', path: part(2), limit: 1 },
      { name: 'part 3 throttled', fault: { kind: 'throttle', retryAfterSeconds: 1 }, method: 'PUT', path: part(3), limit: 1 },
      { name: 'part 4 refused', fault: { kind: 'status', statuses: [503, 500] }, method: 'PUT', path: part(4), limit: 2 },
    ]);
    const opened: string[] = [];
    const open = source('faulty', size);
    const sinkViaProxy = new S3Sink({ ...base, endpoint: proxy.origin, queueSize: 3 });
    try {
      const res = await sinkViaProxy.put('faulty.bin', size, sha, (range) => (opened.push(range ? `${range.start}+${range.length}` : 'whole'), open(range)));
      expect(res).toMatchObject({ how: 'uploaded', etag: expect.stringMatching(/^[0-9a-f]{32}-5$/) });
    } finally {
      sinkViaProxy.close();
    }
    expect(proxy.counts()).toEqual({ 'part 2 cut': 1, 'part 3 throttled': 1, 'part 4 refused': 2 });
    // Each faulted part was read again from its own range; the others once; the whole once, for its sha256.
    const times = (r: string) => opened.filter((o) => o === r).length;
    expect([times('whole'), times(`0+${5 * MiB}`), times(`${5 * MiB}+${5 * MiB}`), times(`${10 * MiB}+${5 * MiB}`), times(`${15 * MiB}+${5 * MiB}`), times(`${20 * MiB}+${2 * MiB + 5}`)]).toEqual([1, 1, 2, 2, 3, 1]);
    const throttled = proxy.injected.find((i) => i.rule === 'part 3 throttled')!;
    const again = proxy.seen.find((x) => x.at > throttled.at && x.method === 'PUT' && x.path === throttled.path);
    expect(again!.at - throttled.at).toBeGreaterThanOrEqual(1000 - 20);
    expect(proxy.seen.filter((x) => x.method === 'POST' && /faulty\.bin\?uploadId=/.test(x.path))).toHaveLength(1); // completed once
    expect(await storedSha256('faulty.bin')).toBe(sha);
    expect((await headOrUndefined('faulty.bin'))?.ETag).toBe(`"${(await sink.head('faulty.bin'))!.etag}"`);
  });

  it('sends a cut streamed PUT again from the start, and stores the object once', async () => {
    const size = 9 * MiB + 11;
    const sha = await digest('faulty-whole', size);
    const md5Hex = await digest('faulty-whole', size, 'md5');
    proxy.setRules([{ name: 'put cut', fault: { kind: 'cut-upload', at: { min: 1_000_000, max: 2_000_000 } }, method: 'PUT', path: /\/faulty-whole\.bin/, limit: 1 }]);
    const opened: string[] = [];
    const open = source('faulty-whole', size);
    const sinkViaProxy = new S3Sink({ ...base, endpoint: proxy.origin });
    try {
      const res = await sinkViaProxy.put('faulty-whole.bin', size, sha, (range) => (opened.push(range ? 'range' : 'whole'), open(range)), { listed: null, verified: true, md5: Buffer.from(md5Hex, 'hex').toString('base64') });
      expect(res).toMatchObject({ how: 'uploaded', etag: md5Hex });
    } finally {
      sinkViaProxy.close();
    }
    expect(proxy.counts()).toEqual({ 'put cut': 1 });
    expect(opened).toEqual(['whole', 'whole']);
    expect(await storedSha256('faulty-whole.bin')).toBe(sha);
  });
});

describe('S3Sink against moto with authentication on', () => {
  let moto: ServerProcess;
  beforeAll(async () => {
    // The bed's moto takes any key; this one checks every request against its (empty) IAM.
    moto = await startProcess('s3 (moto, auth)', MOTO_BIN, ['-H', '127.0.0.1', '-p', '0'], { cwd: bed.root, env: { INITIAL_NO_AUTH_ACTION_COUNT: '0' }, ready: /Running on http:\/\/127\.0\.0\.1:(\d+)/ });
  });
  afterAll(() => moto?.stop());

  it('refuses wrong credentials with one line that holds no secret', async () => {
    const secret = `wrong-secret-${randomBytes(8).toString('hex')}`;
    const token = `session-${randomBytes(8).toString('hex')}`;
    const bad = new S3Sink({ ...base, endpoint: `http://127.0.0.1:${moto.port}`, credentials: { accessKeyId: 'AKIAWRONGKEY0000', secretAccessKey: secret, sessionToken: token } });
    try {
      const calls = [() => bad.ensureBucket(), () => bad.put('k', 3, createHash('sha256').update('abc').digest('hex'), () => Promise.resolve(Readable.from([Buffer.from('abc')])))];
      for (const call of calls) {
        const err = await rejection(call());
        expect(isObjectError(err, 'DENIED')).toBe(true);
        expect(err.message).toContain(`s3://${BUCKET}`);
        expect(err.message).toMatch(/HTTP 403/);
        expect(err.message).not.toContain('\n');
        expect(`${err.message}${String(err.stack)}${JSON.stringify(err)}`).not.toMatch(new RegExp(`${secret}|${token}`));
        expect(err.cause).toBeUndefined();
      }
    } finally {
      bad.close();
    }
  });
});

describe('S3Sink over TLS with a private CA', () => {
  let moto: ServerProcess;
  let endpoint: string;
  beforeAll(async () => {
    const pki = join(bed.root, 'pki');
    moto = await startProcess('s3 (moto, tls)', MOTO_BIN, ['-H', '127.0.0.1', '-p', '0', '-s', '-c', join(pki, 'server.crt'), '-k', join(pki, 'server.key')], {
      cwd: bed.root,
      ready: /Running on https:\/\/127\.0\.0\.1:(\d+)/,
    });
    endpoint = `https://127.0.0.1:${moto.port}`;
  });
  afterAll(() => moto?.stop());

  it('fails the TLS check without the CA, and works with it or with verification off', async () => {
    const bucket = `airgap-tls-${randomBytes(4).toString('hex')}`;
    const plain = new S3Sink({ ...base, endpoint, bucket });
    const err = await rejection(plain.ensureBucket());
    plain.close();
    expect(err.message).toMatch(/^TLS check of https:\/\/127\.0\.0\.1:\d+ failed \(\w+\); pass the CA file/);

    const withCa = new S3Sink({ ...base, endpoint, bucket, caFile: bed.caFile });
    const skip = new S3Sink({ ...base, endpoint, bucket, insecureSkipVerify: true });
    try {
      expect(await withCa.ensureBucket()).toBe('created');
      const sha = await digest('tls', 6 * MiB);
      expect((await withCa.put('tls.bin', 6 * MiB, sha, source('tls', 6 * MiB))).how).toBe('uploaded');
      expect(await skip.head('tls.bin')).toMatchObject({ size: 6 * MiB, sha256: sha });
    } finally {
      withCa.close();
      skip.close();
    }
  });
});
