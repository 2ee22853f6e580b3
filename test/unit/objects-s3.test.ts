import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { isObjectError, ObjectError } from '../../src/objects/cache.ts';
import { s3Error } from '../../src/objects/s3-errors.ts';
import { S3Sink, type S3SinkOptions } from '../../src/objects/s3.ts';
import { rejection } from './helpers.ts';

/** A stand-in S3 on loopback: each test says how to answer; every request is recorded. */
interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  body: Buffer;
}
type Handler = (req: Seen, res: ServerResponse) => void;
let server: Server;
let endpoint: string;
let handler: Handler;
let seen: Seen[] = [];
beforeAll(async () => {
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const r = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks) };
      seen.push(r);
      handler(r, res);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => {
  server.closeAllConnections(); // a test's silent answer must not hold the server open
  return new Promise<void>((r) => server.close(() => r()));
});
afterEach(() => {
  seen = [];
});

const SECRET = `secret-${randomBytes(8).toString('hex')}`;
const TOKEN = `token-${randomBytes(8).toString('hex')}`;
const sink = (o: Partial<S3SinkOptions> = {}) =>
  new S3Sink({ endpoint, bucket: 'bkt', credentials: { accessKeyId: 'AKIATEST', secretAccessKey: SECRET, sessionToken: TOKEN }, ...o });
const xmlError = (res: ServerResponse, status: number, code: string, extra = '') => {
  res.writeHead(status, { 'content-type': 'application/xml' });
  res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>refused ${SECRET.slice(0, 3)}</Message>${extra}<RequestId>r1</RequestId></Error>`);
};
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');
/** A put's source over `b`: the whole of it, or the range a part asks for. */
const from = (b: Buffer) => (range?: { start: number; length: number }) => Promise.resolve(Readable.from([range ? b.subarray(range.start, range.start + range.length) : b]));
/**
 * Answers like S3 for one object: HEAD 404 until a PUT, then what `stored` says; the PUT's answer
 * carries `stored`'s ETag and encryption headers too, as S3 names what it stored.
 */
function objectServer(stored: (body: Buffer, req: Seen) => Record<string, string>): void {
  let put: Seen | undefined;
  handler = (req, res) => {
    if (req.method === 'PUT') {
      put = req;
      const { 'content-length': _, 'x-amz-meta-sha256': __, ...answer } = stored(req.body, req);
      res.writeHead(200, { etag: `"${md5(req.body)}"`, ...answer }).end();
    } else if (req.method === 'HEAD') {
      if (put) res.writeHead(200, { 'content-length': String(put.body.length), 'x-amz-meta-sha256': String(put.headers['x-amz-meta-sha256']), ...stored(put.body, put) }).end();
      else res.writeHead(404).end();
    } else if (req.method === 'DELETE') {
      put = undefined;
      res.writeHead(204).end();
    } else res.writeHead(500).end();
  };
}
const noLeak = (err: Error) => {
  expect(err.message).not.toContain('\n');
  expect(`${err.message} ${String(err.stack)} ${JSON.stringify(err)}`).not.toMatch(new RegExp(`${SECRET}|${TOKEN}`));
  expect(err.cause).toBeUndefined();
};

describe('S3Sink options', () => {
  it('describes the bucket and endpoint without userinfo or query', () => {
    const s = new S3Sink({ endpoint: `http://user:${SECRET}@127.0.0.1:9000/?token=${TOKEN}`, bucket: 'b' });
    expect(s.description).toBe('s3://b at http://127.0.0.1:9000');
    expect(new S3Sink({ bucket: 'b', region: 'eu-west-1' }).description).toBe('s3://b at https://s3.eu-west-1.amazonaws.com');
  });

  it('refuses what cannot work, in one line', () => {
    const bad: [Partial<S3SinkOptions>, RegExp][] = [
      [{ partSize: 1024 * 1024 }, /below S3's minimum of 5 MiB/],
      [{ queueSize: 0 }, /at least 1/],
      [{ endpoint: `ftp://x:${SECRET}@host` }, /^the S3 endpoint is not a URL/],
      [{ caFile: '/nonexistent/ca.pem' }, /cannot read the CA file \/nonexistent\/ca\.pem \(ENOENT\)/],
      [{ bucket: '' }, /no S3 bucket given/],
    ];
    for (const [o, msg] of bad) {
      let err: unknown;
      try {
        sink(o);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ObjectError);
      expect((err as Error).message).toMatch(msg);
      noLeak(err as Error);
    }
  });
});

describe('S3Sink.ensureBucket', () => {
  it('creates with a location constraint only outside us-east-1', async () => {
    handler = (req, res) => res.writeHead(req.method === 'HEAD' ? 404 : 200).end();
    expect(await sink({ region: 'eu-west-1' }).ensureBucket()).toBe('created');
    expect(seen.map((r) => `${r.method} ${r.url}`)).toEqual(['HEAD /bkt/', 'PUT /bkt/']);
    expect(seen[1]!.body.toString()).toContain('<LocationConstraint>eu-west-1</LocationConstraint>');
    seen = [];
    expect(await sink().ensureBucket()).toBe('created');
    expect(seen[1]!.body.length).toBe(0);
  });

  it('reports an existing bucket, including one created meanwhile by us', async () => {
    handler = (_req, res) => res.writeHead(200).end();
    expect(await sink().ensureBucket()).toBe('existed');
    handler = (req, res) => (req.method === 'HEAD' ? res.writeHead(404).end() : xmlError(res, 409, 'BucketAlreadyOwnedByYou'));
    expect(await sink().ensureBucket()).toBe('existed');
  });

  it('says so when the name belongs to someone else, or access is refused', async () => {
    handler = (req, res) => (req.method === 'HEAD' ? res.writeHead(404).end() : xmlError(res, 409, 'BucketAlreadyExists'));
    let err = await rejection(sink().ensureBucket());
    expect(err.message).toBe('s3://bkt belongs to another account; choose another bucket name');
    handler = (_req, res) => res.writeHead(403).end();
    err = await rejection(sink().ensureBucket());
    expect(isObjectError(err, 'DENIED')).toBe(true);
    expect(err.message).toMatch(/^s3:\/\/bkt refused checking the bucket \(HTTP 403\): .*; check the access key/);
    noLeak(err);
  });
});

describe('S3Sink.put', () => {
  const body = randomBytes(3000);

  it('skips an object with the same size and sha256 without opening the source', async () => {
    handler = (_req, res) => res.writeHead(200, { 'content-length': String(body.length), 'x-amz-meta-sha256': sha(body), etag: '"abc"' }).end();
    let opened = false;
    const res = await sink().put('k', body.length, sha(body), () => ((opened = true), from(body)()));
    expect(res).toEqual({ key: 'k', how: 'skipped', size: body.length, sha256: sha(body), etag: 'abc' });
    expect(opened).toBe(false);
    expect(seen.map((r) => r.method)).toEqual(['HEAD']);
  });

  it('uploads when only the size matches, and sends sha256 metadata and Content-MD5', async () => {
    let first = true;
    objectServer(() => ({ etag: `"${md5(body)}"` }));
    const inner = handler;
    handler = (req, res) => {
      // An object of the same size put by another tool, without our metadata.
      if (first && req.method === 'HEAD') return void ((first = false), res.writeHead(200, { 'content-length': String(body.length) }).end());
      inner(req, res);
    };
    const res = await sink().put('dir/k', body.length, sha(body), from(body));
    expect(res).toEqual({ key: 'dir/k', how: 'uploaded', size: body.length, sha256: sha(body), etag: md5(body) });
    const put = seen.find((r) => r.method === 'PUT')!;
    expect(put.url).toMatch(/^\/bkt\/dir\/k\b/);
    expect(put.body.equals(body)).toBe(true);
    expect(put.headers['x-amz-meta-sha256']).toBe(sha(body));
    expect(put.headers['content-md5']).toBe(createHash('md5').update(body).digest('base64'));
    expect(put.headers['x-amz-checksum-crc32']).toBeUndefined(); // WHEN_REQUIRED: no flexible checksums
  });

  it('gives up on a PUT the server never answers after the stall timeout, and succeeds on a retry', async () => {
    objectServer(() => ({ etag: `"${md5(body)}"` }));
    const inner = handler;
    let silent = 1;
    handler = (req, res) => (req.method === 'PUT' && silent-- > 0 ? undefined : inner(req, res));
    const started = Date.now();
    const res = await sink({ stallTimeoutMs: 1000 }).put('k', body.length, sha(body), from(body));
    expect(res.how).toBe('uploaded');
    expect(Date.now() - started).toBeGreaterThanOrEqual(1000);
    expect(seen.filter((r) => r.method === 'PUT')).toHaveLength(2);
  });

  it('survives a burst of three 5xx on one request (six attempts, as the registry transport makes)', async () => {
    objectServer(() => ({ etag: `"${md5(body)}"` }));
    const inner = handler;
    const burst = [500, 502, 503];
    handler = (req, res) => (req.method === 'PUT' && burst.length > 0 ? xmlError(res, burst.shift()!, 'InternalError') : inner(req, res));
    expect((await sink().put('k', body.length, sha(body), from(body))).how).toBe('uploaded');
    expect(seen.filter((r) => r.method === 'PUT')).toHaveLength(4);
  });

  it('sends nothing when the source is not what was declared', async () => {
    objectServer(() => ({}));
    const cases: [Buffer, RegExp][] = [
      [Buffer.concat([body, Buffer.from('x')]), /more than the 3000 bytes declared/],
      [body.subarray(1), /2999 bytes where 3000 were declared/],
      [Buffer.from(body).fill(1, 0, 1), /sha256 [0-9a-f]{64} where [0-9a-f]{64} was declared/],
    ];
    for (const [bytes, msg] of cases) {
      const err = await rejection(sink().put('k', body.length, sha(body), from(bytes)));
      expect(isObjectError(err, 'MISMATCH')).toBe(true);
      expect(err.message).toMatch(/^s3:\/\/bkt\/k: the source's bytes are not the ones declared/);
      expect(err.message).toMatch(msg);
    }
    expect(seen.map((r) => r.method)).toEqual(['HEAD', 'HEAD', 'HEAD']);
  });

  it('reports a failing source by its own error, and nothing is sent', async () => {
    objectServer(() => ({}));
    const failing = (err: Error) => () => Promise.resolve(Readable.from((async function* () {
      yield body.subarray(0, 10);
      throw err;
    })()));
    let err = await rejection(sink().put('k', body.length, sha(body), failing(Object.assign(new Error('x'), { code: 'EIO' }))));
    expect(err.message).toBe('s3://bkt/k: reading the source failed (EIO); nothing was written under the key');
    const own = new ObjectError('MISMATCH', 'bundle volume 2 is damaged');
    err = await rejection(sink().put('k', body.length, sha(body), failing(own)));
    expect(err).toBe(own);
    expect(seen.map((r) => r.method)).toEqual(['HEAD', 'HEAD']);
  });

  it('removes an upload whose stored object does not match what was sent, judged by the PUT answer alone', async () => {
    const cases: [(stored: Buffer) => Record<string, string>, RegExp][] = [
      [() => ({ etag: '"0123456789abcdef0123456789abcdef"' }), /its ETag is 0123456789abcdef0123456789abcdef where the bytes sent give [0-9a-f]{32}/],
      // A server that keeps a byte less names the MD5 of what it kept.
      [(b) => ({ etag: `"${md5(b.subarray(1))}"` }), new RegExp(`its ETag is ${md5(body.subarray(1))} where the bytes sent give ${md5(body)}\\)`)],
    ];
    for (const [headers, msg] of cases) {
      seen = [];
      objectServer(headers);
      const err = await rejection(sink().put('k', body.length, sha(body), from(body)));
      expect(isObjectError(err, 'MISMATCH')).toBe(true);
      expect(err.message).toMatch(/^s3:\/\/bkt\/k does not hold what was uploaded \(/);
      expect(err.message).toMatch(msg);
      expect(err.message).not.toContain('\n');
      expect(seen.map((r) => r.method)).toEqual(['HEAD', 'PUT', 'DELETE']);
    }
  });

  it('does not take a KMS or customer-key ETag or a server-specific one for a mismatch, and returns the ETag the server gave', async () => {
    const kms = { etag: `"${'9'.repeat(32)}"`, 'x-amz-server-side-encryption': 'aws:kms' };
    const ssec = { etag: `"${'8'.repeat(32)}"`, 'x-amz-server-side-encryption-customer-algorithm': 'AES256' };
    for (const headers of [kms, ssec, { etag: '"not-an-md5"' }] as Record<string, string>[]) {
      seen = [];
      objectServer(() => headers);
      const res = await sink().put('k', body.length, sha(body), from(body));
      expect(res).toMatchObject({ how: 'uploaded', etag: headers['etag']!.replaceAll('"', '') });
      expect(seen.map((r) => r.method)).toEqual(['HEAD', 'PUT']);
    }
  });

  it('makes one request for an object its caller listed as absent, none for one listed with the recorded ETag', async () => {
    objectServer(() => ({}));
    let res = await sink().put('k', body.length, sha(body), from(body), { listed: null });
    expect(res).toEqual({ key: 'k', how: 'uploaded', size: body.length, sha256: sha(body), etag: md5(body) });
    expect(seen.map((r) => r.method)).toEqual(['PUT']);

    seen = [];
    let opened = false;
    const listed = { size: body.length, etag: md5(body) };
    res = await sink().put('k', body.length, sha(body), () => ((opened = true), from(body)()), { listed, etag: `"${md5(body)}"` });
    expect(res).toEqual({ key: 'k', how: 'skipped', size: body.length, sha256: sha(body), etag: md5(body) });
    expect(opened).toBe(false);
    expect(seen).toEqual([]);
  });

  it('looks with a HEAD when the listing does not settle it, and not when its size differs', async () => {
    objectServer(() => ({}));
    const s = sink();
    await s.put('k', body.length, sha(body), from(body), { listed: null });
    // Listed, but no recorded ETag, or another one: the sha256 metadata decides.
    for (const opts of [{ listed: { size: body.length, etag: md5(body) } }, { listed: { size: body.length, etag: md5(body) }, etag: 'f'.repeat(32) }]) {
      seen = [];
      expect((await s.put('k', body.length, sha(body), from(body), opts)).how).toBe('skipped');
      expect(seen.map((r) => r.method)).toEqual(['HEAD']);
    }
    // Another size under the key: nothing there is ours, so straight to the upload.
    seen = [];
    expect((await s.put('k', body.length, sha(body), from(body), { listed: { size: 7, etag: md5(body) }, etag: md5(body) })).how).toBe('uploaded');
    expect(seen.map((r) => r.method)).toEqual(['PUT']);
  });
});

/**
 * Answers like S3 to multipart uploads, recording how many were open at once; `complete` gives the
 * ETag CompleteMultipartUpload answers (by default S3's md5-of-part-md5s-N).
 */
function multipartServer(opts: { complete?: (parts: Buffer[]) => string; delayMs?: number } = {}): { most: number; deleted: number } {
  const stats = { most: 0, deleted: 0 };
  const uploads = new Map<string, Buffer[]>();
  let next = 0;
  handler = (req, res) => {
    const u = new URL(req.url, 'http://x');
    const id = u.searchParams.get('uploadId');
    const later = (f: () => void) => setTimeout(f, opts.delayMs ?? 0);
    if (req.method === 'POST' && u.searchParams.has('uploads')) {
      const upload = `u${++next}`;
      uploads.set(upload, []);
      stats.most = Math.max(stats.most, uploads.size);
      res.writeHead(200, { 'content-type': 'application/xml' }).end(`<InitiateMultipartUploadResult><Bucket>bkt</Bucket><Key>k</Key><UploadId>${upload}</UploadId></InitiateMultipartUploadResult>`);
    } else if (req.method === 'PUT' && id) {
      uploads.get(id)![Number(u.searchParams.get('partNumber')) - 1] = req.body;
      later(() => res.writeHead(200, { etag: `"${md5(req.body)}"` }).end());
    } else if (req.method === 'POST' && id) {
      const parts = uploads.get(id)!;
      uploads.delete(id);
      const etag = opts.complete?.(parts) ?? `${createHash('md5').update(Buffer.concat(parts.map((p) => createHash('md5').update(p).digest()))).digest('hex')}-${parts.length}`;
      res.writeHead(200, { 'content-type': 'application/xml' }).end(`<CompleteMultipartUploadResult><Bucket>bkt</Bucket><Key>k</Key><ETag>"${etag}"</ETag></CompleteMultipartUploadResult>`);
    } else if (req.method === 'DELETE') {
      if (id) uploads.delete(id);
      else stats.deleted++;
      res.writeHead(204).end();
    } else if (req.method === 'PUT') {
      later(() => res.writeHead(200, { etag: `"${md5(req.body)}"` }).end());
    } else res.writeHead(404).end();
  };
  return stats;
}

describe('S3Sink.put in parts', () => {
  const MiB = 1024 * 1024;
  const big = randomBytes(11 * MiB);

  it('checks the ETag CompleteMultipartUpload answers, without a HEAD, and removes a wrong one', async () => {
    multipartServer();
    const res = await sink({ partSize: 5 * MiB }).put('k', big.length, sha(big), from(big), { listed: null });
    expect(res.etag).toMatch(/^[0-9a-f]{32}-3$/);
    expect(seen.map((r) => r.method)).toEqual(['POST', 'PUT', 'PUT', 'PUT', 'POST']);

    seen = [];
    // A server that dropped the last part's tail names the ETag of what it kept.
    const stats = multipartServer({ complete: (parts) => `${'a'.repeat(32)}-${parts.length}` });
    const err = await rejection(sink({ partSize: 5 * MiB }).put('k', big.length, sha(big), from(big), { listed: null }));
    expect(isObjectError(err, 'MISMATCH')).toBe(true);
    expect(err.message).toMatch(new RegExp(`^s3://bkt/k does not hold what was uploaded \\(its ETag is ${'a'.repeat(32)}-3 where the bytes sent give ${res.etag}\\); it was removed`));
    expect(stats.deleted).toBe(1);
    expect(seen.at(-1)!.method).toBe('DELETE');
  });

  it('bounds memory across puts: multipart uploads take turns, single PUTs share a byte budget', async () => {
    const stats = multipartServer({ delayMs: 50 });
    const s = sink({ partSize: 5 * MiB });
    await Promise.all([0, 1, 2].map((i) => s.put(`big/${i}`, big.length, sha(big), from(big), { listed: null })));
    expect(stats.most).toBe(1);

    // Single PUTs share 24 MiB of bodies: three 8 MiB bodies at once (multipart parts hold none).
    const full = Buffer.alloc(8 * MiB, 7);
    multipartServer({ delayMs: 400 }); // long enough for every body the budget lets go to arrive
    let inFlight = 0;
    let most = 0;
    const inner = handler;
    handler = (req, res) => {
      most = Math.max(most, ++inFlight);
      res.once('finish', () => inFlight--);
      inner(req, res);
    };
    const t = sink();
    await Promise.all([0, 1, 2, 3, 4, 5].map((i) => t.put(`full/${i}`, full.length, sha(full), from(full), { listed: null })));
    expect(most).toBe(3);
    // Small ones are not held back by each other.
    const small = randomBytes(3000);
    inFlight = most = 0;
    await Promise.all([0, 1, 2, 3, 4, 5].map((i) => t.put(`small/${i}`, small.length, sha(small), from(small), { listed: null })));
    expect(most).toBe(6);
  });
});

describe('S3Sink.list', () => {
  it('pages through the listing under a prefix', async () => {
    handler = (req, res) => {
      const u = new URL(req.url, 'http://x');
      const token = u.searchParams.get('continuation-token');
      const item = (k: string, n: number) => `<Contents><Key>${k}</Key><Size>${n}</Size><ETag>&quot;${md5(Buffer.from(k))}&quot;</ETag></Contents>`;
      res.writeHead(200, { 'content-type': 'application/xml' });
      if (!token) res.end(`<ListBucketResult><IsTruncated>true</IsTruncated><NextContinuationToken>t1</NextContinuationToken>${item('loras/a', 1)}${item('loras/b', 2)}</ListBucketResult>`);
      else res.end(`<ListBucketResult><IsTruncated>false</IsTruncated>${item('loras/c', 3)}</ListBucketResult>`);
    };
    const got = await sink().list('loras/');
    expect([...got]).toEqual([
      ['loras/a', { size: 1, etag: md5(Buffer.from('loras/a')) }],
      ['loras/b', { size: 2, etag: md5(Buffer.from('loras/b')) }],
      ['loras/c', { size: 3, etag: md5(Buffer.from('loras/c')) }],
    ]);
    const urls = seen.map((r) => new URL(r.url, 'http://x'));
    expect(urls.map((u) => [u.pathname, u.searchParams.get('list-type'), u.searchParams.get('prefix'), u.searchParams.get('continuation-token')])).toEqual([
      ['/bkt/', '2', 'loras/', null],
      ['/bkt/', '2', 'loras/', 't1'],
    ]);
    seen = [];
    await sink().list('');
    expect(new URL(seen[0]!.url, 'http://x').searchParams.has('prefix')).toBe(false);
  });

  it('finds nothing in a missing bucket, and says so in one line when refused', async () => {
    handler = (_req, res) => xmlError(res, 404, 'NoSuchBucket');
    expect((await sink().list()).size).toBe(0);
    handler = (_req, res) => xmlError(res, 403, 'AccessDenied');
    const err = await rejection(sink().list('x/'));
    expect(isObjectError(err, 'DENIED')).toBe(true);
    expect(err.message).toMatch(/^s3:\/\/bkt refused listing the bucket \(HTTP 403 AccessDenied\)/);
    noLeak(err);
  });
});

describe('S3 errors', () => {
  it('map to one line from status and code, never echoing the server or the secret', async () => {
    const cases: [(res: ServerResponse) => void, string, RegExp][] = [
      [(res) => xmlError(res, 400, 'ExpiredToken', `<Token-0>${TOKEN}</Token-0>`), 'DENIED', /^s3:\/\/bkt\/k refused uploading \(HTTP 400 ExpiredToken\): the session token has expired;/],
      [(res) => xmlError(res, 403, 'SignatureDoesNotMatch', `<StringToSign>AWS4-HMAC-SHA256 ${TOKEN}</StringToSign><SignatureProvided>abc</SignatureProvided>`), 'DENIED', /\(HTTP 403 SignatureDoesNotMatch\): the secret key does not match the access key/],
      [(res) => xmlError(res, 403, 'AccessDenied'), 'DENIED', /\(HTTP 403 AccessDenied\): the credentials are wrong, or may not use this bucket/],
      [(res) => xmlError(res, 404, 'NoSuchBucket'), 'NOT_FOUND', /^s3:\/\/bkt\/k: no such bucket while uploading; create it first/],
      [(res) => xmlError(res, 301, 'PermanentRedirect', '<Endpoint>bkt.s3.eu-west-1.amazonaws.com</Endpoint>'), 'STORE', /^s3:\/\/bkt\/k lives in another region \(HTTP 301 PermanentRedirect\); pass the bucket's region$/],
      [(res) => xmlError(res, 503, 'SlowDown'), 'STORE', /\(HTTP 503 SlowDown\); the server is struggling, try again$/],
      [(res) => xmlError(res, 400, 'InvalidArgument'), 'STORE', /^s3:\/\/bkt\/k: uploading failed \(HTTP 400 InvalidArgument\)$/],
    ];
    const body = Buffer.from('abc');
    for (const [reply, code, msg] of cases) {
      handler = (req, res) => (req.method === 'HEAD' ? res.writeHead(404).end() : reply(res));
      // One attempt: how a 503 maps is the question here, not the retries (tested above).
      const err = await rejection(sink({ maxAttempts: 1 }).put('k', 3, sha(body), from(body)));
      expect(isObjectError(err, code as 'DENIED')).toBe(true);
      expect(err.message).toMatch(msg);
      expect(err.message).not.toContain('refused abc'); // the server's <Message> is not copied
      noLeak(err);
    }
  });

  it('name the endpoint when it cannot be reached', async () => {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const err = await rejection(sink({ endpoint: `http://127.0.0.1:${port}` }).ensureBucket());
    expect(isObjectError(err, 'NETWORK')).toBe(true);
    expect((err as ObjectError).retryable).toBe(true);
    expect(err.message).toBe(`cannot reach http://127.0.0.1:${port} for checking the bucket on s3://bkt (ECONNREFUSED); check the network and the endpoint`);
  });

  it('say how to give credentials when the default chain finds none', async () => {
    const saved = { ...process.env };
    for (const k of Object.keys(process.env)) if (k.startsWith('AWS_')) delete process.env[k];
    Object.assign(process.env, { AWS_EC2_METADATA_DISABLED: 'true', AWS_CONFIG_FILE: '/nonexistent', AWS_SHARED_CREDENTIALS_FILE: '/nonexistent' });
    try {
      const err = await rejection(new S3Sink({ endpoint, bucket: 'bkt' }).ensureBucket());
      expect(isObjectError(err, 'DENIED')).toBe(true);
      expect(err.message).toMatch(/^no S3 credentials for s3:\/\/bkt: pass an access key and secret, or set AWS_ACCESS_KEY_ID/);
      expect(seen).toEqual([]);
    } finally {
      process.env = saved;
    }
  });

  it('keep what is already an ObjectError and never carry a cause', () => {
    const own = new ObjectError('GONE', 'x');
    expect(s3Error(own, 'a', 's3://b', 'e')).toBe(own);
    const sdk = Object.assign(new Error(`The request signature ... ${SECRET}`), { name: 'SignatureDoesNotMatch', $metadata: { httpStatusCode: 403 } });
    noLeak(s3Error(sdk, 'writing', 's3://b/k', 'e'));
  });
});
