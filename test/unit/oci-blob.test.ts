import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Authorizer } from '../../src/oci/auth/authorizer.ts';
import { VerifyingStream } from '../../src/oci/digest.ts';
import { isOciError } from '../../src/oci/errors.ts';
import { Transport } from '../../src/oci/http/transport.ts';
import { OCI_MANIFEST } from '../../src/oci/media-types.ts';
import { RegistryClient } from '../../src/oci/registry/client.ts';
import { RemoteRepository } from '../../src/oci/registry/repository.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import { rejection } from './helpers.ts';

const sha = (b: Uint8Array) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const BLOB = randomBytes(200_000);
const DESC: Descriptor = { mediaType: 'application/octet-stream', digest: sha(BLOB), size: BLOB.length };
const CUT = 70_000;

type Handler = (req: IncomingMessage, res: ServerResponse, n: number) => void;

let server: Server;
let host: string;
let transport: Transport;
let repo: RemoteRepository;
let handler: Handler;
let requests: { method: string; url: string; range?: string }[];

beforeAll(async () => {
  server = createServer((req, res) => {
    requests.push({ method: req.method ?? '', url: req.url ?? '', ...(req.headers.range ? { range: req.headers.range } : {}) });
    handler(req, res, requests.length);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  transport = await Transport.create({}, { retry: { retries: 3, baseDelayMs: 1, maxDelayMs: 5 } });
  await transport.configure(host, { plainHttp: true });
  repo = new RemoteRepository(new RegistryClient(host, transport, new Authorizer(transport, async () => undefined)), 'a/r');
});

afterAll(async () => {
  await transport.close();
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

beforeEach(() => {
  requests = [];
});

/** Answers with Range when asked (206), else the whole blob. */
function serveBlob(req: IncomingMessage, res: ServerResponse, bytes: Buffer = BLOB): void {
  const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  if (m) {
    const from = Number(m[1]);
    res.writeHead(206, { 'content-length': bytes.length - from, 'content-range': `bytes ${from}-${bytes.length - 1}/${bytes.length}` });
    res.end(bytes.subarray(from));
  } else {
    res.writeHead(200, { 'content-length': bytes.length });
    res.end(bytes);
  }
}

/** Sends the first `cut` bytes of a full-length answer, then kills the connection. */
function resetAfter(res: ServerResponse, cut: number): void {
  res.writeHead(200, { 'content-length': BLOB.length });
  res.write(BLOB.subarray(0, cut), () => setTimeout(() => res.socket?.destroy(), 30));
}

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe('RemoteRepository.openBlob', () => {
  it('resumes with Range from the byte it reached after a reset mid-body', async () => {
    handler = (req, res, n) => (n === 1 ? resetAfter(res, CUT) : serveBlob(req, res));
    const got = await collect(await repo.openBlob(DESC, 0));
    expect(got.equals(BLOB)).toBe(true);
    expect(requests).toHaveLength(2);
    expect(requests[0]!.range).toBeUndefined();
    expect(requests[1]!.range).toBe(`bytes=${CUT}-`);
    expect(requests[1]!.url).toBe(`/v2/a/r/blobs/${DESC.digest}`);
  });

  it('holds the body while its reader is slow (backpressure), and gives every byte in order', async () => {
    const big = randomBytes(4 << 20);
    handler = (req, res) => serveBlob(req, res, big);
    const stream = await repo.openBlob({ ...DESC, digest: sha(big), size: big.length }, 0);
    const chunks: Buffer[] = [];
    let most = 0;
    for await (const c of stream) {
      chunks.push(c as Buffer);
      most = Math.max(most, (c as Buffer).length); // an iterator's read() takes all that is buffered
      await new Promise((r) => setTimeout(r, 2)); // a reader much slower than loopback
    }
    expect(Buffer.concat(chunks).equals(big)).toBe(true);
    expect(most).toBeLessThanOrEqual(stream.readableHighWaterMark + 64 * 1024); // paused, not buffered whole
    expect(requests).toHaveLength(1);
  });

  it('a reader that stops early closes the response: no further request, no error left unhandled', async () => {
    const big = randomBytes(8 << 20);
    let closed!: (finished: boolean) => void;
    const connectionClosed = new Promise<boolean>((r) => (closed = r));
    handler = (req, res) => {
      res.on('close', () => closed(res.writableFinished));
      serveBlob(req, res, big);
    };
    const stream = await repo.openBlob({ ...DESC, digest: sha(big), size: big.length }, 0);
    await new Promise<void>((resolve) => stream.once('data', () => resolve()));
    stream.destroy();
    expect(await connectionClosed).toBe(false); // cut off, not sent to its end
    await new Promise((r) => setTimeout(r, 50));
    expect(requests).toHaveLength(1);
    expect(stream.destroyed).toBe(true);
  });

  it('still gives the right bytes when the server ignores Range and answers 200 with everything', async () => {
    handler = (_req, res, n) => (n === 1 ? resetAfter(res, CUT) : (res.writeHead(200, { 'content-length': BLOB.length }), res.end(BLOB)));
    const got = await collect(await repo.openBlob(DESC, 0));
    expect(got.length).toBe(BLOB.length);
    expect(got.equals(BLOB)).toBe(true);
    expect(requests[1]!.range).toBe(`bytes=${CUT}-`);
  });

  it('starts at an offset with Range, and skips the prefix when the server ignores it', async () => {
    handler = (req, res) => serveBlob(req, res);
    expect((await collect(await repo.openBlob(DESC, 1234))).equals(BLOB.subarray(1234))).toBe(true);
    expect(requests[0]!.range).toBe('bytes=1234-');
    handler = (_req, res) => (res.writeHead(200), res.end(BLOB));
    expect((await collect(await repo.openBlob(DESC, 1234))).equals(BLOB.subarray(1234))).toBe(true);
  });

  it('survives several resets in a row, each resuming where the last ended', async () => {
    handler = (req, res, n) => {
      if (n > 3) return serveBlob(req, res);
      const from = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1] ?? 0);
      res.writeHead(206, { 'content-length': BLOB.length - from, 'content-range': `bytes ${from}-${BLOB.length - 1}/${BLOB.length}` });
      res.write(BLOB.subarray(from, from + 10_000), () => setTimeout(() => res.socket?.destroy(), 30));
    };
    const got = await collect(await repo.openBlob(DESC, 0));
    expect(got.equals(BLOB)).toBe(true);
    expect(requests.map((r) => r.range)).toEqual([undefined, 'bytes=10000-', 'bytes=20000-', 'bytes=30000-']);
  });

  it('abandons a body that stalls for the stall timeout and resumes it with Range', async () => {
    const stalling = await Transport.create({}, { retry: { retries: 3, baseDelayMs: 1, maxDelayMs: 5 }, stallTimeoutMs: 300 });
    await stalling.configure(host, { plainHttp: true });
    const r = new RemoteRepository(new RegistryClient(host, stalling, new Authorizer(stalling, async () => undefined)), 'a/r');
    // The first answer sends CUT bytes and then nothing, holding the connection open.
    handler = (req, res, n) => (n === 1 ? (res.writeHead(200, { 'content-length': BLOB.length }), res.write(BLOB.subarray(0, CUT))) : serveBlob(req, res));
    const started = Date.now();
    try {
      expect((await collect(await r.openBlob(DESC, 0))).equals(BLOB)).toBe(true);
    } finally {
      await stalling.close();
    }
    expect(Date.now() - started).toBeGreaterThanOrEqual(300);
    expect(requests.map((q) => q.range)).toEqual([undefined, `bytes=${CUT}-`]);
  });

  it('refuses a 206 for a different range', async () => {
    handler = (_req, res) => {
      res.writeHead(206, { 'content-length': 10, 'content-range': `bytes 0-9/${BLOB.length}` });
      res.end(BLOB.subarray(0, 10));
    };
    const err = await rejection(collect(await repo.openBlob(DESC, 500)));
    expect(isOciError(err, 'REGISTRY'), String(err)).toBe(true);
    expect(err.message).toContain('byte 500');
  });

  it('gives up with a retryable NETWORK error when every answer ends short', async () => {
    handler = (_req, res) => (res.writeHead(200, { 'content-length': 1000 }), res.end(BLOB.subarray(0, 1000)));
    const err = await rejection(collect(await repo.openBlob(DESC, 0)));
    expect(isOciError(err, 'NETWORK'), String(err)).toBe(true);
    expect(err.message).toContain(DESC.digest);
    expect(requests).toHaveLength(transport.retry.retries + 1);
  });

  it('reports a 404 as NOT_FOUND', async () => {
    handler = (_req, res) => (res.writeHead(404, { 'content-type': 'application/json' }), res.end('{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}'));
    const err = await rejection(collect(await repo.openBlob(DESC, 0)));
    expect(isOciError(err, 'NOT_FOUND'), String(err)).toBe(true);
    expect(err.message).toContain('BLOB_UNKNOWN');
  });

  it('fails DIGEST_MISMATCH naming the digest when piped through a VerifyingStream of another digest', async () => {
    handler = (req, res) => serveBlob(req, res);
    const wrong = sha(Buffer.from('something else'));
    const err = await rejection(pipeline(await repo.openBlob(DESC, 0), new VerifyingStream({ digest: wrong, size: BLOB.length }), async (src: AsyncIterable<Buffer>) => {
      for await (const _ of src);
    }));
    expect(isOciError(err, 'DIGEST_MISMATCH'), String(err)).toBe(true);
    expect(err.message).toContain(wrong);
    expect(err.message).toContain(DESC.digest);
  });

  it('fails SIZE_MISMATCH when the verifier expects more bytes than arrive', async () => {
    handler = (req, res) => serveBlob(req, res);
    const err = await rejection(pipeline(await repo.openBlob(DESC, 0), new VerifyingStream({ digest: DESC.digest, size: BLOB.length + 1 }), async (src: AsyncIterable<Buffer>) => {
      for await (const _ of src);
    }));
    expect(isOciError(err, 'SIZE_MISMATCH'), String(err)).toBe(true);
  });
});

describe('RemoteRepository.resolve / fetchManifest', () => {
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: {}, layers: [] }));
  const serveManifest = (bytes: Buffer, headers: Record<string, string>): Handler => (_req, res) => {
    res.writeHead(200, { 'content-length': bytes.length, ...headers });
    res.end(bytes);
  };

  it('resolves a tag to the digest of the bytes, taking the media type from Content-Type', async () => {
    handler = serveManifest(manifest, { 'content-type': OCI_MANIFEST, 'docker-content-digest': sha(manifest) });
    expect(await repo.resolve('t')).toEqual({ mediaType: OCI_MANIFEST, digest: sha(manifest), size: manifest.length });
    expect(requests[0]!.url).toBe('/v2/a/r/manifests/t');
    // The bytes are cached: fetching them asks nothing more.
    expect((await repo.fetchManifest({ mediaType: OCI_MANIFEST, digest: sha(manifest), size: manifest.length })).equals(manifest)).toBe(true);
    expect(requests).toHaveLength(1);
  });

  it('asks again for a manifest, and for the token it needs, when the connection drops in the middle of either body', async () => {
    const token = JSON.stringify({ token: 'tok-1', expires_in: 300 });
    const cut = (res: ServerResponse, body: Buffer | string, at: number) => {
      res.writeHead(200, { 'content-length': Buffer.byteLength(body), 'content-type': OCI_MANIFEST });
      res.write(Buffer.from(body).subarray(0, at), () => setTimeout(() => res.socket?.destroy(), 30));
    };
    let tokens = 0;
    let manifests = 0;
    handler = (req, res) => {
      if (req.url?.startsWith('/token')) return ++tokens === 1 ? cut(res, token, 10) : void res.writeHead(200, { 'content-type': 'application/json' }).end(token);
      if (req.headers.authorization !== 'Bearer tok-1') return void res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${host}/token",service="s"` }).end();
      return ++manifests === 1 ? cut(res, manifest, 20) : serveManifest(manifest, { 'content-type': OCI_MANIFEST })(req, res, 0);
    };
    const fresh = new RemoteRepository(new RegistryClient(host, transport, new Authorizer(transport, async () => undefined)), 'a/r');
    expect((await fresh.resolve('t')).digest).toBe(sha(manifest));
    expect([tokens, manifests]).toEqual([2, 2]);
  });

  it('sniffs the media type when the registry sends a generic Content-Type', async () => {
    handler = serveManifest(manifest, { 'content-type': 'application/octet-stream' });
    expect((await repo.resolve('t')).mediaType).toBe(OCI_MANIFEST);
  });

  it('refuses a manifest whose Docker-Content-Digest disagrees with its bytes', async () => {
    const claimed = sha(Buffer.from('other'));
    handler = serveManifest(manifest, { 'content-type': OCI_MANIFEST, 'docker-content-digest': claimed });
    const err = await rejection(repo.resolve('t'));
    expect(isOciError(err, 'DIGEST_MISMATCH'), String(err)).toBe(true);
    expect(err.message).toContain(claimed);
    expect(err.message).toContain(sha(manifest));
  });

  it('refuses bytes that do not match the digest asked for', async () => {
    const asked = sha(Buffer.from('asked'));
    handler = serveManifest(manifest, { 'content-type': OCI_MANIFEST });
    const err = await rejection(repo.resolve(asked));
    expect(isOciError(err, 'DIGEST_MISMATCH'), String(err)).toBe(true);
    expect(err.message).toContain(asked);
  });

  it('refuses a manifest over 4 MiB with TOO_LARGE', async () => {
    const huge = Buffer.alloc((4 << 20) + 1, 0x20);
    handler = serveManifest(huge, { 'content-type': OCI_MANIFEST });
    const err = await rejection(repo.resolve('t'));
    expect(isOciError(err, 'TOO_LARGE'), String(err)).toBe(true);
  });

  it('refuses a manifest declaring over 4 MiB without asking the registry', async () => {
    const err = await rejection(repo.fetchManifest({ mediaType: OCI_MANIFEST, digest: sha(Buffer.from('x')), size: (4 << 20) + 1 }));
    expect(isOciError(err, 'TOO_LARGE'), String(err)).toBe(true);
    expect(requests).toHaveLength(0);
  });

  it('reports an unknown tag as NOT_FOUND and a non-manifest as UNSUPPORTED', async () => {
    handler = (_req, res) => (res.writeHead(404), res.end());
    expect(isOciError(await rejection(repo.resolve('nope')), 'NOT_FOUND')).toBe(true);
    handler = serveManifest(Buffer.from('{"hello":1}'), { 'content-type': 'application/json' });
    expect(isOciError(await rejection(repo.resolve('t')), 'UNSUPPORTED')).toBe(true);
  });

  it('answers hasBlob from HEAD: 200 true, 404 false, 403 DENIED', async () => {
    handler = (_req, res, n) => (res.writeHead([200, 404, 403][n - 1] ?? 500), res.end());
    expect(await repo.hasBlob(DESC)).toBe(true);
    expect(await repo.hasBlob(DESC)).toBe(false);
    expect(isOciError(await rejection(repo.hasBlob(DESC)), 'DENIED')).toBe(true);
    expect(requests.map((r) => r.method)).toEqual(['HEAD', 'HEAD', 'HEAD']);
  });
});
