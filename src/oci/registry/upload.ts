import { pipeline, Transform, type Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { VerifyingStream } from '../digest.ts';
import { OciError } from '../errors.ts';
import { drain, header } from '../http/transport.ts';
import type { BlobOrigin, Descriptor, OnBytes, OpenBlob, PushBlobResult } from '../types.ts';
import { registryError, type RegistryClient } from './client.ts';

export interface UploadOptions {
  origin?: BlobOrigin;
  onBytes?: OnBytes;
  /** Chunked (POST, PATCH…, PUT) instead of one monolithic PUT. */
  chunked?: boolean;
  chunkSize?: number;
  /**
   * The source's bytes were hashed against the digest just before: not hashed again here. The
   * registry still checks the digest before it commits the blob (Distribution spec).
   */
  verified?: boolean;
}

const DEFAULT_CHUNK = 16 << 20;
const ATTEMPTS = 3;

/** The source stream, verified and counted on its way to the registry. */
function verifiedSource(src: Readable, desc: Descriptor, onBytes: OnBytes | undefined, count: (n: number) => void, verified = false): Readable {
  let position = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _e, done) {
      count(chunk.length);
      position += chunk.length;
      onBytes?.(position);
      done(null, chunk);
    },
  });
  // Errors anywhere (a corrupt source, a reset) reach the request body, which aborts the upload.
  return verified ? pipeline(src, counter, () => {}) : pipeline(src, counter, new VerifyingStream(desc), () => {});
}

/** Resolves an upload Location (often relative) and adds query parameters to it. */
function withQuery(client: RegistryClient, location: string, params: Record<string, string>): string {
  const url = new URL(location, client.url('/'));
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  return url.toString();
}

/**
 * Pushes one blob (Distribution spec "Pushing blobs"): a cross-repository mount when the source
 * is another repository of this registry, else a monolithic PUT, falling back to chunked PATCHes
 * when the server refuses the size (413, as nginx in front of a registry does). A failed attempt
 * restarts with a fresh session; the registry commits nothing that did not verify.
 */
export async function uploadBlob(client: RegistryClient, repository: string, desc: Descriptor, open: OpenBlob, opts: UploadOptions = {}): Promise<PushBlobResult> {
  const push = [`repository:${repository}:pull,push`];
  let bytesTransferred = 0;
  let chunked = opts.chunked ?? false;
  const mountFrom = opts.origin && opts.origin.registry === client.registry && opts.origin.repository !== repository ? opts.origin.repository : undefined;
  for (let attempt = 1; ; attempt++) {
    let location: string | undefined;
    try {
      const scopes = mountFrom ? [...push, `repository:${mountFrom}:pull`] : push;
      const query = mountFrom ? `?mount=${encodeURIComponent(desc.digest)}&from=${encodeURIComponent(mountFrom)}` : '';
      // Safe to send again (idempotent in effect): a session a lost answer created is never used and expires.
      const started = await client.send({ method: 'POST', path: `/v2/${repository}/blobs/uploads/${query}`, scopes, headers: { 'content-length': '0' }, idempotent: true });
      if (started.statusCode === 201 && mountFrom) {
        await drain(started);
        return { how: 'mounted', bytesTransferred };
      }
      if (started.statusCode !== 202) throw await registryError(started, `cannot start an upload of ${desc.digest} to ${client.registry}/${repository}`);
      location = header(started, 'location');
      const minChunk = Number(header(started, 'oci-chunk-min-length') ?? 0);
      await drain(started);
      if (!location) throw new OciError('REGISTRY', `${client.registry} started an upload without a Location`);
      const count = (n: number) => void (bytesTransferred += n);
      if (!chunked) {
        const body = verifiedSource(await open(0), desc, opts.onBytes, count, opts.verified);
        const res = await client.send({
          method: 'PUT',
          path: withQuery(client, location, { digest: desc.digest }),
          scopes: push,
          headers: { 'content-type': 'application/octet-stream', 'content-length': String(desc.size) },
          stream: body,
        });
        if (res.statusCode === 201) {
          await drain(res);
          return { how: 'uploaded', bytesTransferred };
        }
        if (res.statusCode === 413) {
          await drain(res);
          chunked = true;
          attempt--; // the switch to chunked is not a failure
          continue;
        }
        throw await registryError(res, `upload of ${desc.digest} to ${client.registry}/${repository} failed`);
      }
      const size = Math.max(opts.chunkSize ?? DEFAULT_CHUNK, minChunk);
      await uploadChunks(client, push, location, desc, verifiedSource(await open(0), desc, opts.onBytes, count, opts.verified), size);
      return { how: 'uploaded', bytesTransferred };
    } catch (err) {
      if (location) void client.send({ method: 'DELETE', path: location, scopes: push }).then(drain, () => {});
      const retryable = err instanceof OciError ? err.retryable : true;
      if (attempt >= ATTEMPTS || !retryable) throw err;
      // Not at once: a registry that is restarting would take every attempt in a few milliseconds;
      // and not sooner than a 429 or 503 asked.
      await sleep((err instanceof OciError ? err.retryAfterMs : undefined) ?? client.transport.backoff(attempt));
    }
  }
}

/** PATCH the verified stream in chunks of `size` bytes, then PUT ?digest: commits only after the last byte verified. */
async function uploadChunks(client: RegistryClient, scopes: string[], first: string, desc: Descriptor, src: Readable, size: number): Promise<void> {
  let location = first;
  let sent = 0;
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  // Sends exactly `n` bytes (fewer only for the last chunk): a proxy body limit that `size` was
  // chosen for must hold for every PATCH.
  const flush = async (n: number) => {
    if (pendingBytes === 0) return;
    const all = Buffer.concat(pending, pendingBytes);
    const body = all.subarray(0, n);
    pending = all.length > n ? [all.subarray(n)] : [];
    pendingBytes = all.length - body.length;
    const res = await client.send({
      method: 'PATCH',
      path: location,
      scopes,
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(body.length), 'content-range': `${sent}-${sent + body.length - 1}` },
      body,
    });
    if (res.statusCode !== 202) throw await registryError(res, `chunk at byte ${sent} of ${desc.digest} refused`);
    location = header(res, 'location') ?? location;
    await drain(res);
    sent += body.length;
  };
  for await (const chunk of src as AsyncIterable<Buffer>) {
    pending.push(chunk);
    pendingBytes += chunk.length;
    while (pendingBytes >= size) await flush(size);
  }
  await flush(pendingBytes);
  const res = await client.send({ method: 'PUT', path: withQuery(client, location, { digest: desc.digest }), scopes, headers: { 'content-length': '0' } });
  if (res.statusCode !== 201) throw await registryError(res, `cannot complete the upload of ${desc.digest}`);
  await drain(res);
}

