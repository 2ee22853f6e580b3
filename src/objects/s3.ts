import { createHash, type Hash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Agent } from 'node:https';
import { pipeline, Transform, type Readable, type TransformCallback } from 'node:stream';
import { CreateBucketCommand, DeleteObjectCommand, HeadBucketCommand, HeadObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import type { BucketLocationConstraint, HeadObjectCommandOutput } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { DEFAULT_STALL_TIMEOUT_MS } from '../util/stall.ts';
import { ObjectError } from './cache.ts';

export interface S3SinkOptions {
  /** An S3-compatible server (MinIO, Ceph…), e.g. http://127.0.0.1:9000; without one: AWS. */
  endpoint?: string;
  region?: string;
  bucket: string;
  /** PEM file of the CA that signed the endpoint's certificate. */
  caFile?: string;
  insecureSkipVerify?: boolean;
  /** Without: the SDK's default chain (AWS_* environment, profile). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** Objects up to this size go in one PutObject, bigger ones in parts of this size (default 8 MiB). */
  partSize?: number;
  /** Parts in flight at once (default 4); memory is about (queueSize + 1) × partSize. */
  queueSize?: number;
  /** A request whose connection is silent this long fails and is retried (default 60 s). */
  stallTimeoutMs?: number;
  /** Attempts per request, the first included (default 6). */
  maxAttempts?: number;
}

export interface PutResult {
  key: string;
  how: 'uploaded' | 'skipped';
  size: number;
  sha256: string;
  /** The S3 ETag: the MD5 of one-part objects, md5-of-part-md5s-N of multipart ones. */
  etag?: string;
}

const MiB = 1024 * 1024;
const MAX_PARTS = 10_000;
const NET = /^(ECONNREFUSED|ECONNRESET|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|EPIPE|EHOSTUNREACH|ENETUNREACH|TimeoutError|RequestTimeout)$/;
const TLS = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS|ERR_SSL/;
const DENIED: Record<string, string> = {
  InvalidAccessKeyId: 'the server does not know this access key',
  SignatureDoesNotMatch: 'the secret key does not match the access key',
  ExpiredToken: 'the session token has expired',
  InvalidToken: 'the session token is not valid',
};

type SdkError = { name?: unknown; Code?: unknown; code?: unknown; $metadata?: { httpStatusCode?: unknown } };
const statusOf = (err: unknown) => ((s) => (typeof s === 'number' ? s : undefined))((err as SdkError | undefined)?.$metadata?.httpStatusCode);
/** The error's code (S3's `Code`, Node's `code`, or the SDK's `name`), only if it looks like one. */
const codeOf = (err: unknown) => {
  const e = (err ?? {}) as SdkError;
  return [e.Code, e.code, e.name].find((v): v is string => typeof v === 'string' && /^[\w.-]{1,64}$/.test(v) && v !== 'Error') ?? 'Error';
};

/**
 * SDK errors as one-line ObjectErrors, built only from the status and the error code: the SDK's own
 * messages and objects may carry request details or the server's echo of a session token, so
 * neither is copied nor attached as `cause`.
 */
export function s3Error(err: unknown, doing: string, url: string, endpoint: string): ObjectError {
  if (err instanceof ObjectError) return err;
  const status = statusOf(err);
  const code = codeOf(err);
  const http = status ? `HTTP ${status}${/^\d+$|^Unknown$/.test(code) ? '' : ` ${code}`}` : code;
  if (code === 'CredentialsProviderError') return new ObjectError('DENIED', `no S3 credentials for ${url}: pass an access key and secret, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)`);
  if (status === 401 || status === 403 || Object.hasOwn(DENIED, code) || code === 'AccessDenied') {
    const why = DENIED[code] ?? 'the credentials are wrong, or may not use this bucket, or it belongs to another account';
    return new ObjectError('DENIED', `${url} refused ${doing} (${http}): ${why}; check the access key, secret and bucket policy`);
  }
  if (status === 301 || code === 'PermanentRedirect' || code === 'AuthorizationHeaderMalformed') {
    return new ObjectError('STORE', `${url} lives in another region (${http}); pass the bucket's region`);
  }
  if (code === 'NoSuchBucket') return new ObjectError('NOT_FOUND', `${url}: no such bucket while ${doing}; create it first or check its name`);
  if (NET.test(code)) return new ObjectError('NETWORK', `cannot reach ${endpoint} for ${doing} on ${url} (${code}); check the network and the endpoint`, { retryable: true });
  if (TLS.test(code)) return new ObjectError('STORE', `TLS check of ${endpoint} failed (${code}); pass the CA file that signed its certificate`);
  if ((status ?? 0) >= 500 || code === 'SlowDown') return new ObjectError('STORE', `${url}: ${doing} failed (${http}); the server is struggling, try again`, { retryable: true });
  return new ObjectError('STORE', `${url}: ${doing} failed (${http})`);
}

/**
 * Passes bytes through while checking them against the declared size and sha256; errors (so the
 * upload fails) on the first byte too many or, at the end, on a short or different stream. Also
 * keeps the MD5 of every `partSize` slice, which is what S3 ETags are made of.
 */
type Want = { size: number; sha256: string; partSize: number; url: string };
class Verifier extends Transform {
  failure: ObjectError | undefined;
  readonly partMd5s: Buffer[] = [];
  private readonly sha = createHash('sha256');
  private md5: Hash = createHash('md5');
  private inPart = 0;
  private seen = 0;
  private readonly want: Want;

  constructor(want: Want) {
    super({ highWaterMark: MiB });
    this.want = want;
  }

  private fail(detail: string): ObjectError {
    this.failure = new ObjectError('MISMATCH', `${this.want.url}: the source's bytes are not the ones declared (${detail}); nothing was written under the key; the source is damaged or changed while being read`);
    return this.failure;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.seen += chunk.length;
    if (this.seen > this.want.size) return cb(this.fail(`more than the ${this.want.size} bytes declared`));
    this.sha.update(chunk);
    for (let off = 0; off < chunk.length; ) {
      const n = Math.min(chunk.length - off, this.want.partSize - this.inPart);
      this.md5.update(chunk.subarray(off, (off += n)));
      if ((this.inPart += n) < this.want.partSize) continue;
      this.partMd5s.push(this.md5.digest());
      this.md5 = createHash('md5');
      this.inPart = 0;
    }
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    if (this.inPart > 0 || this.partMd5s.length === 0) this.partMd5s.push(this.md5.digest());
    const sha = this.sha.digest('hex');
    if (this.seen !== this.want.size) return cb(this.fail(`${this.seen} bytes where ${this.want.size} were declared`));
    if (sha !== this.want.sha256) return cb(this.fail(`sha256 ${sha} where ${this.want.sha256} was declared`));
    cb();
  }
}

function readCa(file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new ObjectError('STORE', `cannot read the CA file ${file} (${codeOf(err)}); pass a readable PEM file`);
  }
}

/** An S3 bucket as the install side's destination for plain objects. */
export class S3Sink {
  readonly description: string;
  readonly bucket: string;
  private readonly endpoint: string;
  private readonly region: string;
  private readonly partSize: number;
  private readonly queueSize: number;
  private readonly client: S3Client;

  constructor(opts: S3SinkOptions) {
    if (!opts.bucket) throw new ObjectError('STORE', 'no S3 bucket given; name the bucket to install into');
    this.bucket = opts.bucket;
    this.region = opts.region || 'us-east-1';
    // Small parts keep memory low: (queueSize + 1) × 8 MiB, well under the RSS budget.
    this.partSize = opts.partSize ?? 8 * MiB;
    this.queueSize = opts.queueSize ?? 4;
    if (!Number.isSafeInteger(this.partSize) || this.partSize < 5 * MiB) throw new ObjectError('STORE', `S3 part size ${this.partSize} is below S3's minimum of 5 MiB`);
    if (!Number.isSafeInteger(this.queueSize) || this.queueSize < 1) throw new ObjectError('STORE', `S3 queue size ${this.queueSize} must be at least 1`);
    let endpoint: string | undefined;
    if (opts.endpoint) {
      // Whatever userinfo or query the URL carries is not ours to show or to send.
      const u = URL.canParse(opts.endpoint) ? new URL(opts.endpoint) : undefined;
      if (!u || !/^https?:$/.test(u.protocol)) throw new ObjectError('STORE', 'the S3 endpoint is not a URL like https://host:port');
      endpoint = `${u.protocol}//${u.host}${u.pathname.replace(/\/+$/, '')}`;
    }
    this.endpoint = endpoint ?? `https://s3.${this.region}.amazonaws.com`;
    this.description = `s3://${this.bucket} at ${this.endpoint}`;
    const ca = opts.caFile ? readCa(opts.caFile) : undefined;
    const tls = ca || opts.insecureSkipVerify ? { httpsAgent: new Agent({ keepAlive: true, maxSockets: 50, ...(ca ? { ca } : {}), ...(opts.insecureSkipVerify ? { rejectUnauthorized: false } : {}) }) } : {};
    this.client = new S3Client({
      region: this.region,
      ...(endpoint ? { endpoint } : {}),
      ...(opts.credentials ? { credentials: opts.credentials } : {}),
      // Path style and no flexible checksums: what MinIO and other S3 servers take (research/libs.md §5).
      forcePathStyle: true,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      // As many attempts as the registry transport makes: a burst of three 5xx must not end an install.
      maxAttempts: opts.maxAttempts ?? 6,
      // The options form: the SDK builds its own NodeHttpHandler, so we need no import of its package.
      // Without socketTimeout the SDK waits forever on a server that stops answering mid-request.
      requestHandler: { ...tls, connectionTimeout: 30_000, socketTimeout: opts.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS },
    });
  }

  private fail(err: unknown, doing: string, key?: string): ObjectError {
    return s3Error(err, doing, `s3://${this.bucket}${key === undefined ? '' : `/${key}`}`, this.endpoint);
  }

  async ensureBucket(): Promise<'created' | 'existed'> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
      return 'existed';
    } catch (err) {
      if (statusOf(err) !== 404) throw this.fail(err, 'checking the bucket');
    }
    // us-east-1 is the default location and S3 rejects it spelled out.
    const where = this.region === 'us-east-1' ? {} : { CreateBucketConfiguration: { LocationConstraint: this.region as BucketLocationConstraint } };
    try {
      await this.client.send(new CreateBucketCommand({ Bucket: this.bucket, ...where }));
      return 'created';
    } catch (err) {
      if (codeOf(err) === 'BucketAlreadyOwnedByYou') return 'existed'; // created meanwhile by another run
      if (codeOf(err) === 'BucketAlreadyExists') throw new ObjectError('DENIED', `s3://${this.bucket} belongs to another account; choose another bucket name`);
      throw this.fail(err, 'creating the bucket');
    }
  }

  private async stat(key: string): Promise<HeadObjectCommandOutput | undefined> {
    try {
      return await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw this.fail(err, "reading the object's metadata", key);
    }
  }

  async head(key: string): Promise<{ size: number; sha256?: string; etag?: string } | undefined> {
    const h = await this.stat(key);
    if (!h) return undefined;
    const sha256 = h.Metadata?.['sha256']?.toLowerCase();
    const etag = h.ETag?.replace(/"/g, '');
    return { size: h.ContentLength ?? 0, ...(sha256 && /^[0-9a-f]{64}$/.test(sha256) ? { sha256 } : {}), ...(etag ? { etag } : {}) };
  }

  /** Uploads `open()`'s bytes under `key` unless an object with this size and sha256 is there already. */
  async put(key: string, size: number, sha256: string, open: () => Promise<Readable>): Promise<PutResult> {
    const url = `s3://${this.bucket}/${key}`;
    if (!key || !Number.isSafeInteger(size) || size < 0 || !/^[0-9a-f]{64}$/.test(sha256)) throw new ObjectError('STORE', `${url}: put needs a key, a byte size and a lowercase hex sha256`);
    const have = await this.head(key);
    if (have && have.size === size && have.sha256 === sha256) return { key, how: 'skipped', size, sha256, ...(have.etag ? { etag: have.etag } : {}) };
    // At most 10,000 parts: very large objects get larger parts.
    const partSize = Math.max(this.partSize, Math.ceil(size / MAX_PARTS / MiB) * MiB);
    const v = new Verifier({ size, sha256, partSize, url });
    const source = await open();
    let sourceError: unknown;
    source.once('error', (err) => (sourceError = err));
    pipeline(source, v, () => {}); // a source error reaches `v` and fails the upload
    const params = { Bucket: this.bucket, Key: key, Metadata: { sha256 } };
    try {
      if (size <= partSize) {
        // Small enough to hold: checked before a byte is sent, and the SDK can retry a buffer.
        const chunks: Buffer[] = [];
        for await (const c of v) chunks.push(c as Buffer);
        const md5 = v.partMd5s[0]!.toString('base64');
        await this.client.send(new PutObjectCommand({ ...params, Body: Buffer.concat(chunks, size), ContentLength: size, ContentMD5: md5 }));
      } else {
        // A bad stream fails the part reader; Upload then aborts the multipart upload before done()
        // settles, and S3 shows nothing under the key until CompleteMultipartUpload.
        await new Upload({ client: this.client, params: { ...params, Body: v }, partSize, queueSize: this.queueSize, leavePartsOnError: false }).done();
      }
    } catch (err) {
      if (v.failure) throw v.failure;
      if (sourceError instanceof ObjectError) throw sourceError;
      if (sourceError) throw new ObjectError('STORE', `${url}: reading the source failed (${codeOf(sourceError)}); nothing was written under the key`);
      throw this.fail(err, 'uploading', key);
    } finally {
      v.destroy();
    }
    const parts = v.partMd5s;
    const etag = parts.length === 1 ? parts[0]!.toString('hex') : `${createHash('md5').update(Buffer.concat(parts)).digest('hex')}-${parts.length}`;
    await this.check(key, url, size, sha256, etag);
    return { key, how: 'uploaded', size, sha256, etag };
  }

  /** What S3 now holds under `key` is what was sent; anything else is deleted, never left. */
  private async check(key: string, url: string, size: number, sha256: string, etag: string): Promise<void> {
    const h = await this.stat(key);
    if (!h) throw new ObjectError('STORE', `${url} is missing right after its upload; another writer may have deleted it, run again`, { retryable: true });
    const got = h.ETag?.replace(/"/g, '') ?? '';
    // KMS and customer-key encryption make ETags that are not MD5s; so do servers that don't follow S3's scheme.
    const plainEtag = !h.SSECustomerAlgorithm && !h.ServerSideEncryption?.startsWith('aws:kms') && (etag.includes('-') ? /^[0-9a-f]{32}-\d+$/ : /^[0-9a-f]{32}$/).test(got);
    const problem =
      h.ContentLength !== size ? `it holds ${h.ContentLength} bytes where ${size} were sent`
      : h.Metadata?.['sha256'] !== sha256 ? 'its sha256 metadata is not the one sent'
      : plainEtag && got !== etag ? `its ETag is ${got} where the bytes sent give ${etag}`
      : undefined;
    if (!problem) return;
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key })).catch(() => undefined);
    throw new ObjectError('MISMATCH', `${url} does not hold what was uploaded (${problem}); it was removed, run again`, { retryable: true });
  }

  close(): void {
    this.client.destroy();
  }
}
