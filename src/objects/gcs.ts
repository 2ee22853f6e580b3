import { EventEmitter } from 'node:events';
import type { IncomingHttpHeaders } from 'node:http';
import { Transform, type Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { Storage, type File, type StorageOptions } from '@google-cloud/storage';
import { JWT } from 'google-auth-library';
import { EnvHttpProxyAgent, request, type Dispatcher } from 'undici';
import { readCapped } from '../oci/http/transport.ts';
import { loadServiceAccountKey } from '../util/service-account.ts';
import { retryAfterMs } from '../util/retry-after.ts';
import { DEFAULT_STALL_TIMEOUT_MS } from '../util/stall.ts';
import { byKey, ObjectError } from './cache.ts';
import type { ObjectInfo, ObjectSource } from './types.ts';
import { QUEUE_BYTES } from '../util/queue-bytes.ts';

export interface GcsSourceOptions {
  /** An emulator or mirror, e.g. http://127.0.0.1:PORT (Storage's `apiEndpoint`). */
  endpoint?: string;
  /** Service-account JSON key; without one: no auth with an endpoint, else application-default credentials. */
  keyFile?: string;
  /**
   * Send the key's token to `endpoint` too (a mirror that checks Google logins). Off by default,
   * as in Storage itself: emulators and plain mirrors need none, and a token exchange needs Google.
   */
  authWithEndpoint?: boolean;
  projectId?: string;
  /** Objects per listing request (GCS's maximum and default: 1000); small values exercise paging. */
  pageSize?: number;
  /** A read that receives nothing this long fails (retryable), so the caller resumes it (default 60 s). */
  stallTimeoutMs?: number;
}

// A source only reads; the key gets no more than that even if the account could do more.
const READ_SCOPE = 'https://www.googleapis.com/auth/devstorage.read_only';

/** Anything that can carry a bearer token or a JWT, cut out of server text before we echo it. */
const redact = (s: string) =>
  s
    .replace(/ya29\.[\w.-]+/g, '[token]')
    .replace(/eyJ[\w-]+\.[\w-]+\.[\w-]*/g, '[jwt]')
    .replace(/-----BEGIN[\s\S]*?-----END[^-]*-----/g, '[key]');

/** The server's reason, one line, short, with secrets cut out. */
function reason(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  const line = redact(msg).replace(/\s+/g, ' ').trim();
  return line.length > 200 ? `${line.slice(0, 200)}…` : line || 'no reason given';
}

const statusOf = (err: unknown): number | undefined => {
  const code = (err as { code?: unknown; response?: { status?: unknown } }).code;
  if (typeof code === 'number') return code;
  const s = (err as { response?: { status?: unknown } }).response?.status;
  return typeof s === 'number' ? s : undefined;
};

/**
 * Storage's errors as one-line ObjectErrors. The library's error objects carry the request config
 * (Authorization header included), so they are never attached as `cause`.
 */
export function gcsError(err: unknown, where: string, bucket: string, hasKey: boolean): ObjectError {
  if (err instanceof ObjectError) return err;
  const status = statusOf(err);
  // Google's token endpoint refusing the key (revoked, deleted, clock skew) says so in OAuth terms.
  const tokenRefused = /\b(invalid_grant|invalid_client|unauthorized_client)\b/.test(err instanceof Error ? err.message : '');
  if (status === 401 || status === 403 || (hasKey && tokenRefused)) {
    return hasKey
      ? new ObjectError('DENIED', `the service-account key was refused for gs://${bucket}: ${reason(err)}`)
      : new ObjectError('DENIED', `gs://${bucket} refused access without a key: ${reason(err)}; pass a service-account key that can read it`);
  }
  const netCode = (err as { code?: unknown }).code;
  if (typeof netCode === 'string' && /^(ECONNREFUSED|ECONNRESET|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|EPIPE|UND_ERR)/.test(netCode)) {
    // The host it failed on: with a key, that may be Google's token endpoint rather than GCS.
    const host = /request to (https?:\/\/[^/\s?]+)/.exec(err instanceof Error ? err.message : '')?.[1] ?? 'GCS';
    return new ObjectError('NETWORK', `cannot reach ${host} for ${where}: ${netCode}; check the network or --endpoint`, { retryable: true });
  }
  if (status !== undefined && (status >= 500 || status === 429)) return new ObjectError('STORE', `GCS failed on ${where} (HTTP ${status}): ${reason(err)}; try again`, { retryable: true });
  return new ObjectError('STORE', `GCS failed on ${where}${status ? ` (HTTP ${status})` : ''}: ${reason(err)}`);
}

type Interceptor = Storage['interceptors'][number];
type GcsMetadata = { name?: string; size?: string | number; generation?: string | number; md5Hash?: string; crc32c?: string };

function toInfo(bucket: string, m: GcsMetadata): ObjectInfo {
  return {
    bucket,
    key: m.name ?? '',
    size: Number(m.size ?? 0),
    ...(m.generation !== undefined && m.generation !== null ? { generation: String(m.generation) } : {}),
    ...(m.md5Hash ? { md5: m.md5Hash } : {}),
    ...(m.crc32c ? { crc32c: m.crc32c } : {}),
  };
}

// Storage 8.4.0 adds a listener per request to shared PassThroughs and trips Node's leak warning
// on ordinary parallel downloads; the warning is noise on the user's terminal, not a leak of ours.
EventEmitter.defaultMaxListeners = Math.max(EventEmitter.defaultMaxListeners, 64);

export class GcsSource implements ObjectSource {
  readonly description: string;
  private readonly opts: GcsSourceOptions;
  private storage: Promise<Storage> | undefined;
  /** Media reads: one connection per read in flight, kept for the next; through HTTPS_PROXY (NO_PROXY) as the library's own requests go. */
  readonly #agent = new EnvHttpProxyAgent({ keepAliveTimeout: 10_000 });

  constructor(opts: GcsSourceOptions = {}) {
    this.opts = opts;
    this.description = opts.endpoint ? `GCS at ${opts.endpoint}` : 'GCS';
  }

  /** Built on first use: the key file is read and checked then. */
  private client(): Promise<Storage> {
    this.storage ??= (async () => {
      const { endpoint, keyFile, projectId } = this.opts;
      const o: StorageOptions = { ...(endpoint ? { apiEndpoint: endpoint.replace(/\/+$/, '') } : {}) };
      if (keyFile) {
        // Checked even when it will not be sent, so a wrong file fails the same way everywhere.
        const key = await loadServiceAccountKey(keyFile);
        o.authClient = new JWT({ email: key.client_email, key: key.private_key, keyId: key.private_key_id, scopes: [READ_SCOPE] });
        if (endpoint && this.opts.authWithEndpoint) o.useAuthWithCustomEndpoint = true;
        o.projectId = projectId ?? key.project_id;
      } else if (projectId) {
        o.projectId = projectId;
      }
      const storage = new Storage(o);
      // Storage 8.4.0 destroys its shared keep-alive agent whenever one request stream errors or is
      // cut short, failing every other request in flight (ECONNRESET). Without `forever` each
      // request uses Node's own agent, which the library then leaves alone. (Media reads are ours.)
      storage.interceptors.push({ request: (reqOpts) => Object.assign(reqOpts, { forever: false }) as ReturnType<Interceptor['request']> });
      return storage;
    })();
    // A failed build (bad key) fails every call the same way; don't retry it silently.
    return this.storage;
  }

  private fail(err: unknown, where: string, bucket: string): ObjectError {
    return gcsError(err, where, bucket, this.opts.keyFile !== undefined);
  }

  async *list(bucket: string, prefix: string): AsyncIterable<ObjectInfo> {
    const storage = await this.client();
    const out: ObjectInfo[] = [];
    let pageToken: string | undefined;
    do {
      let files: File[];
      let next: { pageToken?: string } | null | undefined;
      try {
        [files, next] = await storage.bucket(bucket).getFiles({ prefix, autoPaginate: false, maxResults: this.opts.pageSize ?? 1000, ...(pageToken ? { pageToken } : {}) });
      } catch (err) {
        // Listing a bucket that is missing is GCS's only 404 on this call.
        if (statusOf(err) === 404) throw new ObjectError('NOT_FOUND', `bucket gs://${bucket} does not exist or the key cannot see it`);
        throw this.fail(err, `listing gs://${bucket}/${prefix}`, bucket);
      }
      for (const f of files) {
        const info = toInfo(bucket, { ...(f.metadata as GcsMetadata), name: f.name });
        // Console-made "folders": zero-byte objects named like a directory, not content.
        if (info.key.endsWith('/') && info.size === 0) continue;
        out.push(info);
      }
      pageToken = next?.pageToken;
    } while (pageToken);
    out.sort(byKey);
    yield* out;
  }

  async stat(bucket: string, key: string): Promise<ObjectInfo | undefined> {
    const storage = await this.client();
    try {
      const [m] = await storage.bucket(bucket).file(key).getMetadata();
      return toInfo(bucket, { ...(m as GcsMetadata), name: key });
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw this.fail(err, `reading gs://${bucket}/${key}'s metadata`, bucket);
    }
  }

  /**
   * The bytes of exactly `info.generation`, as stored, from byte `offset` (a resumed read). Fails
   * with GONE when that generation is no longer served: GCS answers 404; the firebase emulator
   * ignores `generation` and serves the current one, which its x-goog-generation header gives away.
   * A read that receives nothing for the stall timeout fails with a retryable NETWORK error.
   *
   * The request is ours (undici), not the library's stream: the library's layers of streams cost
   * as much CPU as hashing the bytes (measured: 4 LoRA files, 1.7 GB, from the emulator into
   * nothing: 1.8 CPU s and 634 MB/s through the library, 0.9 s and 813 MB/s with undici), and its
   * retry of a streamed read crashes the process. It asks what the library asks (alt=media, the
   * generation, `Accept-Encoding: gzip` so an object stored gzip comes as stored) with the
   * library's own credentials, sent where the library would send them.
   */
  async read(info: ObjectInfo, offset = 0): Promise<Readable> {
    const storage = await this.client();
    const url = `gs://${info.bucket}/${info.key}`;
    const gone = () => new ObjectError('GONE', `${url} generation ${info.generation} is no longer available; it was overwritten or deleted`);
    const stallMs = this.opts.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS;
    const stalled = () => new ObjectError('NETWORK', `${url}: nothing received from GCS for ${stallMs / 1000} s; the connection stalled`, { retryable: true });
    const target = new URL(`${storage.baseUrl}/b/${encodeURIComponent(info.bucket)}/o/${encodeURIComponent(info.key)}`);
    target.searchParams.set('alt', 'media');
    if (info.generation) target.searchParams.set('generation', info.generation);
    const headers: Record<string, string> = { 'accept-encoding': 'gzip', 'cache-control': 'no-store', ...(offset > 0 ? { range: `bytes=${offset}-` } : {}) };
    try {
      if (!this.opts.endpoint || this.opts.authWithEndpoint) for (const [k, v] of await storage.authClient.getRequestHeaders(target.href)) headers[k] = v;
    } catch (err) {
      throw this.fail(err, `reading ${url}`, info.bucket);
    }
    let skip = 0;
    let timer: NodeJS.Timeout | undefined;
    const out = new Transform({
      highWaterMark: QUEUE_BYTES,
      transform(chunk: Buffer, _enc, done) {
        watch();
        // A server that ignored Range sent the object from its first byte: drop what we have.
        const n = Math.min(skip, chunk.length);
        skip -= n;
        done(null, n < chunk.length ? chunk.subarray(n) : undefined);
      },
    });
    const abort = new AbortController();
    let body: Readable | undefined;
    const watch = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        // A full buffer means our reader is the slow one, not the network.
        if (out.writableNeedDrain || out.readableLength >= out.readableHighWaterMark) return watch();
        if (body) body.destroy(stalled());
        else abort.abort(stalled());
      }, stallMs).unref();
    };
    out.on('close', () => clearTimeout(timer));
    watch();
    let res: Dispatcher.ResponseData;
    try {
      res = await request(target, { method: 'GET', headers, dispatcher: this.#agent, signal: abort.signal });
    } catch (err) {
      clearTimeout(timer);
      throw abort.signal.aborted ? abort.signal.reason : this.fail(err, `reading ${url}`, info.bucket);
    }
    body = res.body;
    const { statusCode: status, headers: h } = res;
    if (status >= 300) {
      const message = await errorMessage(res); // the stall timer still runs: a silent error body fails too
      clearTimeout(timer);
      if (status === 404 && info.generation) throw gone();
      const e = this.fail(Object.assign(new Error(message), { code: status }), `reading ${url}`, info.bucket);
      const wait = retryAfterMs(h['retry-after']);
      if (wait !== undefined) e.retryAfterMs = wait;
      throw e;
    }
    const served = h['x-goog-generation'];
    const storedEnc = h['x-goog-stored-content-encoding'];
    // Compressed in transit only (stored identity, served gzip): undo that, the stored bytes are wanted.
    const transcoded = h['content-encoding'] === 'gzip' && typeof storedEnc === 'string' && storedEnc !== 'gzip';
    const range = h['content-range'];
    let refused: ObjectError | undefined;
    if (info.generation && typeof served === 'string' && served !== info.generation) refused = gone();
    else if (offset > 0 && status === 200) skip = offset;
    else if (offset > 0 && (transcoded || typeof range !== 'string' || !range.startsWith(`bytes ${offset}-`))) {
      refused = new ObjectError('STORE', `${url}: GCS answered a read from byte ${offset} with ${status} ${typeof range === 'string' ? range : 'and no Content-Range'}${transcoded ? ' of compressed bytes' : ''}; run again`);
    }
    if (refused) {
      clearTimeout(timer);
      body.on('error', () => {}); // undici reports its own abort as an error
      body.destroy();
      throw refused;
    }
    body.on('error', (err) => out.destroy(err instanceof ObjectError ? err : this.fail(err, `reading ${url}`, info.bucket)));
    // A consumer that gives up (say, on a hash mismatch) must not leave the request hanging.
    out.on('close', () => body.destroy());
    if (transcoded) {
      const gunzip = createGunzip();
      gunzip.on('error', (err) => out.destroy(new ObjectError('STORE', `${url} arrived gzip-compressed and could not be decompressed: ${err.message}`)));
      body.pipe(gunzip).pipe(out);
    } else {
      body.pipe(out);
    }
    return out;
  }
}

/**
 * What GCS says about a refused read: its JSON error's message, or the text. Read as registry
 * errors are (at most 64 KiB, else none), under the read's stall timer.
 */
async function errorMessage(res: Dispatcher.ResponseData): Promise<string> {
  res.body.on('error', () => {}); // undici reports its own abort as an error
  const text = await readCapped(res, 64 << 10, 'error body').then((b) => b.toString('utf8'), () => '');
  try {
    return String((JSON.parse(text) as { error?: { message?: unknown } }).error?.message ?? text);
  } catch {
    return text;
  }
}

export { loadServiceAccountKey };
