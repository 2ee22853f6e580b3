import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { MockAgent } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { Authorizer } from '../../src/oci/auth/authorizer.ts';
import { isOciError } from '../../src/oci/errors.ts';
import { Transport } from '../../src/oci/http/transport.ts';
import { RegistryClient } from '../../src/oci/registry/client.ts';
import { uploadBlob, type UploadOptions } from '../../src/oci/registry/upload.ts';
import type { Descriptor } from '../../src/oci/types.ts';
import { plainHeaders, rejection } from './helpers.ts';

const REG = 'reg.example';
const sha = (b: Uint8Array) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const BLOB = randomBytes(20_000);
const DESC: Descriptor = { mediaType: 'application/octet-stream', digest: sha(BLOB), size: BLOB.length };

interface Seen {
  method: string;
  path: string;
  query: URLSearchParams;
  headers: Record<string, string>;
  body: Buffer;
}
interface Reply {
  status: number;
  headers?: Record<string, string>;
}

async function bodyBytes(body: unknown): Promise<Buffer> {
  if (body == null) return Buffer.alloc(0);
  if (typeof body === 'string' || body instanceof Uint8Array) return Buffer.from(body);
  const chunks: Buffer[] = [];
  for await (const c of body as AsyncIterable<Uint8Array | string>) chunks.push(Buffer.from(c));
  return Buffer.concat(chunks);
}

let agents: MockAgent[] = [];
afterEach(async () => {
  for (const a of agents) await a.close();
  agents = [];
});

/** A registry whose every answer comes from `route`; all requests are recorded. */
async function registry(route: (req: Seen, all: Seen[]) => Reply) {
  const agent = new MockAgent();
  agent.disableNetConnect();
  agents.push(agent);
  const transport = await Transport.create({}, { dispatcher: agent, retry: { baseDelayMs: 1, maxDelayMs: 5 } });
  const client = new RegistryClient(REG, transport, new Authorizer(transport, async () => undefined));
  const seen: Seen[] = [];
  agent
    .get(`https://${REG}`)
    .intercept({ path: () => true, method: () => true })
    .reply(async (req) => {
      const url = new URL(req.path, `https://${REG}`);
      const s: Seen = { method: req.method, path: url.pathname, query: url.searchParams, headers: plainHeaders(req.headers), body: await bodyBytes(req.body) };
      seen.push(s);
      const r = route(s, seen);
      return { statusCode: r.status, data: '', responseOptions: { headers: r.headers ?? {} } };
    })
    .persist();
  return { agent, transport, client, seen };
}

/** The blob as a source, in chunks of `chunk` bytes (paced: one per macrotask); counts opens. */
function source(bytes: Buffer = BLOB, chunk = bytes.length, paced = false) {
  const opens: number[] = [];
  const open = async (offset: number) => {
    opens.push(offset);
    const parts: Buffer[] = [];
    for (let i = offset; i < bytes.length; i += chunk) parts.push(bytes.subarray(i, Math.min(i + chunk, bytes.length)));
    if (!paced) return Readable.from(parts, { objectMode: false });
    return Readable.from(
      (async function* () {
        for (const p of parts) {
          await sleep(1);
          yield p;
        }
      })(),
      { objectMode: false },
    );
  };
  return { open, opens };
}

async function upload(client: RegistryClient, open: (o: number) => Promise<Readable>, opts: UploadOptions = {}, desc = DESC) {
  // onBytes reports a position; keep the highest seen, which must never pass the blob's size.
  let progress = 0;
  const result = await uploadBlob(client, 'r', desc, open, { ...opts, onBytes: (n) => (progress = Math.max(progress, n)) });
  return { ...result, progress };
}

describe('uploadBlob: monolithic', () => {
  it('POSTs, then PUTs the bytes to the relative Location with ?digest= added to its query', async () => {
    const { client, seen } = await registry((req) =>
      req.method === 'POST' ? { status: 202, headers: { location: '/v2/r/blobs/uploads/uuid?_state=abc' } } : { status: 201 },
    );
    const src = source();
    const res = await upload(client, src.open);
    expect(res).toEqual({ how: 'uploaded', bytesTransferred: BLOB.length, progress: BLOB.length });
    expect(seen.map((s) => `${s.method} ${s.path}`)).toEqual(['POST /v2/r/blobs/uploads/', 'PUT /v2/r/blobs/uploads/uuid']);
    expect(seen[0]!.headers['content-length']).toBe('0');
    const put = seen[1]!;
    expect(put.query.get('_state')).toBe('abc');
    expect(put.query.get('digest')).toBe(DESC.digest);
    expect(put.headers['content-length']).toBe(String(BLOB.length));
    expect(put.headers['content-type']).toBe('application/octet-stream');
    expect(put.body.equals(BLOB)).toBe(true);
    expect(src.opens).toEqual([0]);
  });

  it('falls back to chunked PATCHes after a 413, honouring OCI-Chunk-Min-Length and the moving Location', async () => {
    let session = 0;
    let state = 0;
    const { client, seen } = await registry((req): Reply => {
      if (req.method === 'POST') return { status: 202, headers: { location: `/v2/r/blobs/uploads/u${++session}?_state=s0`, 'oci-chunk-min-length': '6000' } };
      if (req.method === 'PATCH') return { status: 202, headers: { location: `/v2/r/blobs/uploads/u${session}?_state=s${++state}`, range: '0-1' } };
      if (req.method === 'PUT' && session === 1) return { status: 413 };
      return { status: 201 };
    });
    const res = await upload(client, source(BLOB, 1000, true).open, { chunkSize: 1000 });
    expect(res.how).toBe('uploaded');
    const patches = seen.filter((s) => s.method === 'PATCH');
    expect(patches.map((p) => p.body.length)).toEqual([6000, 6000, 6000, 2000]);
    expect(patches.map((p) => p.headers['content-range'])).toEqual(['0-5999', '6000-11999', '12000-17999', '18000-19999']);
    expect(patches.map((p) => p.query.get('_state'))).toEqual(['s0', 's1', 's2', 's3']);
    expect(patches.every((p) => p.path === '/v2/r/blobs/uploads/u2' && p.headers['content-length'] === String(p.body.length))).toBe(true);
    expect(Buffer.concat(patches.map((p) => p.body)).equals(BLOB)).toBe(true);
    const last = seen.at(-1)!;
    expect(last.method).toBe('PUT');
    expect(last.path).toBe('/v2/r/blobs/uploads/u2');
    expect(last.query.get('_state')).toBe('s4');
    expect(last.query.get('digest')).toBe(DESC.digest);
    expect(last.body.length).toBe(0);
    expect(last.headers['content-length']).toBe('0');
  });

  // Progress is a position, so a restarted attempt moves it back instead of past 100 %;
  // bytesTransferred is honest about the network: the abandoned attempt's bytes count too.
  it('keeps progress within the blob after a 413 fallback, and counts every byte read', async () => {
    const { client } = await registry((req) => {
      if (req.method === 'POST') return { status: 202, headers: { location: '/v2/r/blobs/uploads/u' } };
      if (req.method === 'PATCH') return { status: 202 };
      return req.query.has('digest') && req.body.length > 0 ? { status: 413 } : { status: 201 };
    });
    const res = await upload(client, source().open);
    expect(res.progress).toBe(BLOB.length);
    expect(res.bytesTransferred).toBe(2 * BLOB.length);
  });

  // A proxy's body limit that chunkSize was chosen for must hold for every PATCH.
  it('never sends a PATCH larger than the chunk size', async () => {
    const { client, seen } = await registry((req) => (req.method === 'POST' ? { status: 202, headers: { location: '/u' } } : { status: req.method === 'PUT' ? 201 : 202 }));
    await upload(client, source(BLOB, 1000).open, { chunked: true, chunkSize: 4000 });
    const patches = seen.filter((s) => s.method === 'PATCH');
    expect(Buffer.concat(patches.map((p) => p.body)).equals(BLOB)).toBe(true);
    expect(Math.max(...patches.map((p) => p.body.length))).toBeLessThanOrEqual(4000);
  });

  it('starts a fresh session after a retryable 500 on PUT, deleting the failed one', async () => {
    let session = 0;
    const { client, seen } = await registry((req) => {
      if (req.method === 'POST') return { status: 202, headers: { location: `/v2/r/blobs/uploads/u${++session}` } };
      if (req.method === 'PUT') return { status: session === 1 ? 500 : 201 };
      return { status: 204 };
    });
    const src = source();
    expect((await upload(client, src.open)).how).toBe('uploaded');
    await sleep(20);
    expect(src.opens).toEqual([0, 0]);
    expect(seen.filter((s) => s.method === 'DELETE').map((s) => s.path)).toEqual(['/v2/r/blobs/uploads/u1']);
  });
});

describe('uploadBlob: a registry that is briefly down', () => {
  it('retries the upload-start POST through a burst of 500, 502, 503 with backoff (it creates nothing that matters)', async () => {
    const burst = [500, 502, 503];
    const { client, seen } = await registry((req) => {
      if (req.method === 'POST') return burst.length > 0 ? { status: burst.shift()! } : { status: 202, headers: { location: '/v2/r/blobs/uploads/u1' } };
      return { status: 201 };
    });
    expect((await upload(client, source().open)).how).toBe('uploaded');
    expect(seen.map((s) => s.method)).toEqual(['POST', 'POST', 'POST', 'POST', 'PUT']);
  });

  it('waits between whole-upload attempts, so a registry restarting does not use them all up at once', async () => {
    let session = 0;
    const { client, seen, transport } = await registry((req) => {
      if (req.method === 'POST') return { status: 202, headers: { location: `/v2/r/blobs/uploads/u${++session}` } };
      if (req.method === 'PUT') return { status: session < 3 ? 503 : 201 };
      return { status: 204 };
    });
    const waits: number[] = [];
    const backoff = transport.backoff.bind(transport);
    transport.backoff = (attempt: number) => (waits.push(attempt), backoff(attempt));
    expect((await upload(client, source().open)).how).toBe('uploaded');
    expect(seen.filter((s) => s.method === 'PUT')).toHaveLength(3);
    expect(waits).toEqual([1, 2]);
  });

  it('waits as long as a 429 on the upload asks (Retry-After) before the next attempt', async () => {
    let session = 0;
    const { client, seen } = await registry((req): Reply => {
      if (req.method === 'POST') return { status: 202, headers: { location: `/v2/r/blobs/uploads/u${++session}` } };
      if (req.method === 'PUT') return session === 1 ? { status: 429, headers: { 'retry-after': '1' } } : { status: 201 };
      return { status: 204 };
    });
    const started = Date.now();
    expect((await upload(client, source().open)).how).toBe('uploaded');
    expect(Date.now() - started).toBeGreaterThanOrEqual(1000);
    expect(seen.filter((s) => s.method === 'PUT')).toHaveLength(2);
  });
});

describe('uploadBlob: authorization', () => {
  it('restarts with a fresh session when the token is refused during a streamed PUT', async () => {
    const valid = new Set<string>();
    const challenge = { 'www-authenticate': `Bearer realm="https://auth.example/token",service="${REG}"` };
    let session = 0;
    let tokens = 0;
    const { agent, client, seen } = await registry((req) => {
      if (!valid.has(req.headers.authorization ?? '')) return { status: 401, headers: challenge };
      if (req.method === 'POST') return { status: 202, headers: { location: `/v2/r/blobs/uploads/u${++session}` } };
      if (req.method === 'PUT' && session === 1) {
        valid.clear(); // the token lapsed while the bytes were on their way
        return { status: 401, headers: challenge };
      }
      return { status: 201 };
    });
    agent
      .get('https://auth.example')
      .intercept({ path: (p) => p.startsWith('/token') })
      .reply(() => {
        valid.add(`Bearer tok-${++tokens}`);
        return { statusCode: 200, data: JSON.stringify({ token: `tok-${tokens}` }) };
      })
      .persist();
    const src = source();
    expect((await upload(client, src.open)).how).toBe('uploaded');
    expect(src.opens).toEqual([0, 0]);
    expect(tokens).toBe(2);
    const puts = seen.filter((s) => s.method === 'PUT');
    expect(puts.map((p) => `${p.path} ${p.headers.authorization}`)).toEqual(['/v2/r/blobs/uploads/u1 Bearer tok-1', '/v2/r/blobs/uploads/u2 Bearer tok-2']);
    expect(puts[1]!.body.equals(BLOB)).toBe(true);
  });
});

describe('uploadBlob: mount', () => {
  const origin = { registry: REG, repository: 'src/repo' };

  it('returns how: mounted on 201, with no PUT and without opening the source', async () => {
    const { client, seen } = await registry(() => ({ status: 201 }));
    const src = source();
    const res = await upload(client, src.open, { origin });
    expect(res).toEqual({ how: 'mounted', bytesTransferred: 0, progress: 0 });
    expect(seen).toHaveLength(1);
    expect(seen[0]!.method).toBe('POST');
    expect(seen[0]!.query.get('mount')).toBe(DESC.digest);
    expect(seen[0]!.query.get('from')).toBe('src/repo');
    expect(src.opens).toEqual([]);
  });

  it('uploads into the Location of a 202 answer to the mount', async () => {
    const { client, seen } = await registry((req) => (req.method === 'POST' ? { status: 202, headers: { location: `https://${REG}/v2/r/blobs/uploads/m1?_state=x` } } : { status: 201 }));
    const res = await upload(client, source().open, { origin });
    expect(res.how).toBe('uploaded');
    expect(seen.map((s) => s.method)).toEqual(['POST', 'PUT']);
    expect(seen[1]!.path).toBe('/v2/r/blobs/uploads/m1');
    expect(seen[1]!.query.get('_state')).toBe('x');
    expect(seen[1]!.body.equals(BLOB)).toBe(true);
  });

  it('does not try to mount from the same repository or from another registry', async () => {
    for (const o of [{ registry: REG, repository: 'r' }, { registry: 'other.example', repository: 'src/repo' }]) {
      const { client, seen } = await registry((req) => (req.method === 'POST' ? { status: 202, headers: { location: '/u' } } : { status: 201 }));
      expect((await upload(client, source().open, { origin: o })).how).toBe('uploaded');
      expect(seen[0]!.query.has('mount')).toBe(false);
    }
  });
});

describe('uploadBlob: verification', () => {
  const corrupt = Buffer.from(BLOB);
  corrupt[12_345] = (corrupt[12_345]! + 1) % 256;

  it('chunked: rejects DIGEST_MISMATCH with no final PUT, and drops the session', async () => {
    const { client, seen } = await registry((req) =>
      req.method === 'POST' ? { status: 202, headers: { location: '/v2/r/blobs/uploads/c1' } } : { status: req.method === 'PUT' ? 201 : 202 },
    );
    const src = source(corrupt, 1000);
    const err = await rejection(upload(client, src.open, { chunked: true, chunkSize: 4000 }));
    expect(isOciError(err, 'DIGEST_MISMATCH'), String(err)).toBe(true);
    expect(err.message).toContain(DESC.digest);
    await sleep(20);
    expect(seen.filter((s) => s.method === 'PUT')).toEqual([]);
    expect(seen.filter((s) => s.method === 'POST')).toHaveLength(1); // not retried
    expect(seen.filter((s) => s.method === 'DELETE').map((s) => s.path)).toEqual(['/v2/r/blobs/uploads/c1']);
    expect(src.opens).toEqual([0]);
  });

  it('monolithic: rejects DIGEST_MISMATCH and the PUT is never answered', async () => {
    const { client, seen } = await registry((req) => (req.method === 'POST' ? { status: 202, headers: { location: '/v2/r/blobs/uploads/m' } } : { status: 201 }));
    const err = await rejection(upload(client, source(corrupt).open));
    expect(isOciError(err, 'DIGEST_MISMATCH'), String(err)).toBe(true);
    await sleep(20);
    expect(seen.filter((s) => s.method === 'PUT')).toEqual([]);
  });

  it('rejects a source longer than the descriptor with SIZE_MISMATCH', async () => {
    const { client } = await registry((req) => (req.method === 'POST' ? { status: 202, headers: { location: '/u' } } : { status: 201 }));
    const err = await rejection(upload(client, source(Buffer.concat([BLOB, Buffer.from('x')])).open));
    expect(isOciError(err, 'SIZE_MISMATCH'), String(err)).toBe(true);
  });

  it('refuses an upload started without a Location', async () => {
    const { client } = await registry(() => ({ status: 202 }));
    const err = await rejection(upload(client, source().open));
    expect(isOciError(err, 'REGISTRY'), String(err)).toBe(true);
    expect(err.message).toMatch(/Location/);
  });
});
