import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingMessage, type Server } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fetchObject, isObjectError } from '../../src/objects/cache.ts';
import { gcsError, GcsSource, loadServiceAccountKey } from '../../src/objects/gcs.ts';
import { isCodedError } from '../../src/util/errors.ts';
import { rejection } from './helpers.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'objects-gcs-'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

const pem = () => generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
async function keyFile(content: unknown): Promise<string> {
  const file = join(dir, `key-${randomBytes(4).toString('hex')}.json`);
  await writeFile(file, typeof content === 'string' ? content : JSON.stringify(content));
  return file;
}

describe('loadServiceAccountKey', () => {
  it('accepts a service-account key', async () => {
    const key = { type: 'service_account', project_id: 'p', private_key_id: 'abc', private_key: pem(), client_email: 'sa@p.iam.gserviceaccount.com' };
    expect(await loadServiceAccountKey(await keyFile(key))).toMatchObject({ client_email: key.client_email, private_key: key.private_key, private_key_id: 'abc', project_id: 'p' });
  });

  it('says what is wrong without quoting the file', async () => {
    const secret = `s3cr3t-${randomBytes(6).toString('hex')}`;
    const cases: [unknown, string][] = [
      [`{"private_key": "${secret}"`, 'not JSON'],
      [[secret], 'not a JSON object'],
      [{ client_email: 'a@b', private_key: secret }, 'no "type": "service_account"'],
      [{ type: 'external_account', audience: secret }, 'its type is "external_account", not "service_account"'],
      [{ type: 'service_account', private_key: pem() }, 'no client_email'],
      [{ type: 'service_account', client_email: 'a@b' }, 'no private_key'],
      [{ type: 'service_account', client_email: 'a@b', private_key: `-----BEGIN PRIVATE KEY-----\n${secret}\n-----END PRIVATE KEY-----` }, 'its private_key is not a PEM private key'],
    ];
    for (const [content, why] of cases) {
      const file = await keyFile(content);
      const err = await rejection(loadServiceAccountKey(file));
      expect(isCodedError(err, 'BAD_KEY')).toBe(true);
      expect(err.message).toBe(`${file} is not a service-account JSON key (${why}); download one with: gcloud iam service-accounts keys create`);
      expect(err.message).not.toContain(secret);
    }
    const missing = join(dir, 'nope.json');
    expect((await rejection(loadServiceAccountKey(missing))).message).toBe(`cannot read the service-account key ${missing}: ENOENT`);
  });
});

describe('gcsError', () => {
  const apiError = (code: number, message: string) => Object.assign(new Error(message), { code });
  it('maps refusals to one line, with or without a key, and cuts tokens out', () => {
    const jwt = `eyJhbGciOiJSUzI1NiJ9.${randomBytes(30).toString('base64url')}.${randomBytes(30).toString('base64url')}`;
    const withKey = gcsError(apiError(403, `sa@p.iam.gserviceaccount.com does not have storage.objects.list access.\nBearer ya29.${randomBytes(20).toString('hex')} ${jwt}`), 'listing', 'bkt', true);
    expect(withKey.code).toBe('DENIED');
    expect(withKey.message).toBe('the service-account key was refused for gs://bkt: sa@p.iam.gserviceaccount.com does not have storage.objects.list access. Bearer [token] [jwt]');
    expect(gcsError(apiError(401, 'Invalid Credentials'), 'listing', 'bkt', false).message).toBe('gs://bkt refused access without a key: Invalid Credentials; pass a service-account key that can read it');
    expect(withKey.cause).toBeUndefined(); // library errors carry the request's headers
    const revoked = Object.assign(new Error('invalid_grant: Invalid JWT Signature.'), { code: '400', response: { status: 400 } });
    expect(gcsError(revoked, 'listing', 'bkt', true).message).toBe('the service-account key was refused for gs://bkt: invalid_grant: Invalid JWT Signature.');
  });
  it('tells network failures and server errors apart', () => {
    const net = gcsError(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:9'), { code: 'ECONNREFUSED' }), 'listing gs://b/p', 'b', false);
    expect([net.code, net.retryable, net.message]).toEqual(['NETWORK', true, 'cannot reach GCS for listing gs://b/p: ECONNREFUSED; check the network or --endpoint']);
    const token = Object.assign(new Error('request to https://oauth2.googleapis.com/token failed, reason: getaddrinfo ENOTFOUND oauth2.googleapis.com'), { code: 'ENOTFOUND' });
    expect(gcsError(token, 'listing gs://b/p', 'b', true).message).toBe('cannot reach https://oauth2.googleapis.com for listing gs://b/p: ENOTFOUND; check the network or --endpoint');
    expect(gcsError(apiError(503, 'Backend Error'), 'reading gs://b/k', 'b', true)).toMatchObject({ code: 'STORE', retryable: true, message: 'GCS failed on reading gs://b/k (HTTP 503): Backend Error; try again' });
  });
});

describe('GcsSource.read against a stand-in server', () => {
  const plain = randomBytes(50_000);
  const seen: IncomingMessage[] = [];
  let server: Server;
  let source: GcsSource;
  beforeAll(async () => {
    server = createServer((req, res) => {
      seen.push(req);
      const url = new URL(req.url ?? '/', 'http://x');
      const key = decodeURIComponent(url.pathname.split('/o/')[1] ?? '');
      const gen = url.searchParams.get('generation');
      if (gen !== '7') return void res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 404, message: `No such object: b/${key}` } }));
      // "in-transit": stored identity, compressed for the wire; "stored-gzip": the object itself is gzip.
      const stored = key === 'stored-gzip' ? 'gzip' : 'identity';
      res.writeHead(200, { 'content-encoding': 'gzip', 'x-goog-stored-content-encoding': stored, 'x-goog-generation': '7', 'content-type': 'application/octet-stream' });
      res.end(gzipSync(plain));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    source = new GcsSource({ endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}/` });
  });
  afterAll(() => new Promise((r) => server.close(r)));

  const readAll = async (key: string, generation = '7') => {
    const chunks: Buffer[] = [];
    for await (const c of await source.read({ bucket: 'b', key, size: 0, generation })) chunks.push(c as Buffer);
    return Buffer.concat(chunks);
  };

  it('pins the generation, sends no credentials, and keeps stored bytes as stored', async () => {
    expect((await readAll('in-transit')).equals(plain)).toBe(true); // compressed only on the wire: undone
    expect((await readAll('stored-gzip')).equals(gzipSync(plain))).toBe(true); // the object is gzip: kept
    const req = seen.at(-1)!;
    expect(new URL(req.url!, 'http://x').searchParams.get('generation')).toBe('7');
    expect(req.headers.authorization).toBeUndefined();
  });

  it('reads through HTTP_PROXY when one is set, as the library\'s own requests do', async () => {
    const tunnels: string[] = [];
    // A forward proxy: plain requests by absolute URL, CONNECT tunnels; it notes where each went.
    const proxy = createServer((req, res) => {
      const to = new URL(req.url ?? '');
      tunnels.push(to.host);
      const up = httpRequest(to, { method: req.method, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
    proxy.on('connect', (req: IncomingMessage, client: Socket) => {
      tunnels.push(req.url ?? '');
      const [host, port] = (req.url ?? '').split(':');
      const upstream = connect(Number(port), host!, () => {
        client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        upstream.pipe(client).pipe(upstream);
      });
      upstream.on('error', () => client.destroy());
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    const saved = { http: process.env.HTTP_PROXY, no: process.env.NO_PROXY };
    process.env.HTTP_PROXY = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
    delete process.env.NO_PROXY;
    try {
      const viaProxy = new GcsSource({ endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}/` });
      const chunks: Buffer[] = [];
      for await (const c of await viaProxy.read({ bucket: 'b', key: 'in-transit', size: 0, generation: '7' })) chunks.push(c as Buffer);
      expect(Buffer.concat(chunks).equals(plain)).toBe(true);
      expect(tunnels).toEqual([`127.0.0.1:${(server.address() as AddressInfo).port}`]);
    } finally {
      if (saved.http === undefined) delete process.env.HTTP_PROXY;
      else process.env.HTTP_PROXY = saved.http;
      if (saved.no !== undefined) process.env.NO_PROXY = saved.no;
      proxy.closeAllConnections();
      await new Promise((r) => proxy.close(r));
    }
  });

  it('reports a generation that is gone as GONE', async () => {
    const err = await rejection(readAll('k', '6'));
    expect(isObjectError(err, 'GONE')).toBe(true);
    expect(err.message).toBe('gs://b/k generation 6 is no longer available; it was overwritten or deleted');
  });
});

describe('GcsSource.read: resumed and stalled reads', () => {
  const data = randomBytes(60_000);
  const ranges: (string | undefined)[] = [];
  /** 'range' honours Range, 'ignore' answers 200 with everything, 'stall' sends 1000 bytes then nothing, 'silent' nothing at all, 'flood' a 503 whose body never ends. */
  let mode: 'range' | 'ignore' | 'stall' | 'silent' | 'flood' = 'range';
  /** Statuses to answer first, one per request (a busy GCS). */
  let busy: number[] = [];
  let server: Server;
  let endpoint: string;
  beforeAll(async () => {
    server = createServer((req, res) => {
      ranges.push(req.headers.range);
      const from = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1] ?? 0);
      const head = { 'x-goog-generation': '7', 'content-type': 'application/octet-stream', 'x-goog-stored-content-encoding': 'identity' };
      const refuse = busy.shift();
      if (refuse) return void res.writeHead(refuse, { 'content-type': 'application/json', ...(refuse === 429 ? { 'retry-after': '1' } : {}) }).end(JSON.stringify({ error: { code: refuse, message: 'busy' } }));
      if (mode === 'silent') return;
      if (mode === 'flood') {
        res.writeHead(503, { 'content-type': 'text/plain' });
        const more = () => {
          while (res.write(Buffer.alloc(16 * 1024, 'x')));
          res.once('drain', more);
        };
        res.on('close', () => res.removeAllListeners('drain'));
        return more();
      }
      if (mode === 'stall') return void res.writeHead(200, { ...head, 'content-length': data.length }).write(data.subarray(0, 1000));
      if (mode === 'ignore' || from === 0) return void res.writeHead(200, { ...head, 'content-length': data.length }).end(data);
      res.writeHead(206, { ...head, 'content-length': data.length - from, 'content-range': `bytes ${from}-${data.length - 1}/${data.length}` }).end(data.subarray(from));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => {
    server.closeAllConnections();
    return new Promise((r) => server.close(r));
  });

  const readAll = async (source: GcsSource, offset: number) => {
    const chunks: Buffer[] = [];
    for await (const c of await source.read({ bucket: 'b', key: 'k', size: data.length, generation: '7' }, offset)) chunks.push(c as Buffer);
    return Buffer.concat(chunks);
  };

  it('asks for the rest with Range, and drops the prefix when the server sends everything', async () => {
    const source = new GcsSource({ endpoint });
    mode = 'range';
    expect((await readAll(source, 25_000)).equals(data.subarray(25_000))).toBe(true);
    expect(ranges.at(-1)).toBe('bytes=25000-');
    mode = 'ignore';
    expect((await readAll(source, 25_000)).equals(data.subarray(25_000))).toBe(true);
  });

  it('reports a 5xx or 429 on a read as retryable, without the library retrying it (its retry of a stream crashes the process); the cache honours Retry-After', async () => {
    mode = 'range';
    for (const status of [500, 503, 429]) {
      busy = [status];
      const before = ranges.length;
      const err = await rejection(readAll(new GcsSource({ endpoint }), 0));
      expect(isObjectError(err, 'STORE') && err.retryable, `${status}: ${err.message}`).toBe(true);
      expect(err.message).toContain(`(HTTP ${status})`);
      expect(ranges.length - before).toBe(1);
    }
    // fetchObject's own loop asks again, not sooner than a Retry-After says.
    busy = [503, 429];
    const started = Date.now();
    const got = await fetchObject(new GcsSource({ endpoint }), { bucket: 'b', key: 'k', size: data.length, generation: '7' }, join(dir, 'cache-busy'));
    expect(got.sha256).toBe(createHash('sha256').update(data).digest('hex'));
    expect(Date.now() - started).toBeGreaterThanOrEqual(1000);
  });

  it('reads no more than a little of an error body, however long the server makes it', async () => {
    mode = 'flood';
    const before = process.memoryUsage().rss;
    const err = await rejection(readAll(new GcsSource({ endpoint }), 0));
    expect(isObjectError(err, 'STORE') && err.retryable, err.message).toBe(true);
    expect(err.message).toContain('(HTTP 503)');
    expect(err.message.length).toBeLessThan(400); // one line, the server's text cut short
    expect(process.memoryUsage().rss - before).toBeLessThan(64 << 20);
    mode = 'range';
  });

  it('fails a read that stalls (mid-body or before any header) with a retryable NETWORK error after the stall timeout, instead of waiting forever', async () => {
    mode = 'stall';
    const started = Date.now();
    const err = await rejection(readAll(new GcsSource({ endpoint, stallTimeoutMs: 300 }), 0));
    expect(Date.now() - started).toBeGreaterThanOrEqual(300);
    expect(isObjectError(err, 'NETWORK') && err.retryable).toBe(true);
    expect(err.message).toBe('gs://b/k: nothing received from GCS for 0.3 s; the connection stalled');
    mode = 'silent';
    expect((await rejection(readAll(new GcsSource({ endpoint, stallTimeoutMs: 300 }), 0))).message).toMatch(/nothing received from GCS for 0\.3 s/);
  });
});
