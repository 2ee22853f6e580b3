import { createHash, type Hash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Agent } from 'node:https';
import { pipeline, Transform, type Readable, type TransformCallback } from 'node:stream';
import { CreateBucketCommand, DeleteObjectCommand, HeadBucketCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import type { BucketLocationConstraint, HeadObjectCommandOutput, ListObjectsV2CommandOutput } from '@aws-sdk/client-s3';
import { DEFAULT_STALL_TIMEOUT_MS } from '../util/stall.ts';
import { ObjectError } from './cache.ts';
import { md5Bytes, readFailed, sourceMismatch, STREAMED_PUT_MAX, statusOf, uploadParts, uploadWhole, type OpenSource, type PartsUpload, type Stored } from './s3-parts.ts';
import { codeOf, s3Error } from './s3-errors.ts';

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
  /** Parts of one multipart upload in flight at once (default 4); each reads its own range of the source, so this costs no memory. */
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
  /**
   * The object's ETag as the server gave it (what `list()` shows): the MD5 of one-part objects,
   * md5-of-part-md5s-N of multipart ones, something else under KMS or on servers with their own scheme.
   */
  etag?: string;
}

/** One object as `list()` shows it. */
export interface Listed {
  size: number;
  /** Without quotes. */
  etag: string;
}

export interface PutOptions {
  /**
   * What the caller's `list()` (with a prefix covering the key) showed under the key: `null` for
   * nothing, so no HEAD is made before uploading. Undefined: the sink looks for itself.
   */
  listed?: Listed | null;
  /**
   * The ETag the caller recorded when it last uploaded or verified these exact bytes here (e.g. in
   * an earlier install's receipt). With `listed` showing the same size and this ETag the object is
   * skipped without a request.
   */
  etag?: string;
  /**
   * The caller checked the source's bytes against `sha256` moments before (install's verify pass):
   * a multipart put then does not read the whole source a second time to hash it. Each part's MD5
   * (the ETag check) still proves the server stored exactly the bytes read.
   */
  verified?: boolean;
  /**
   * The object's MD5 (base64, as GCS and bundle.json give it), vouched for by the caller. An object
   * larger than a part and up to STREAMED_PUT_MAX then goes up in one streamed PUT with it as
   * Content-MD5: the server checks the bytes, we hash none (see uploadWhole).
   */
  md5?: string;
}

const MiB = 1024 * 1024;
const MAX_PARTS = 10_000;
/** Bodies of single-request puts, held whole while checked, all of a sink's puts together. */
const SINGLE_BUDGET = 24 * MiB;
const SILENT = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };
const unquote = (etag: string | undefined) => etag?.replace(/"/g, '') ?? '';
/**
 * Passes a single-request object's bytes through while checking them against the declared size
 * and sha256; errors (so nothing is sent) on the first byte too many or, at the end, on a short or
 * different stream. Also keeps their MD5, for Content-MD5 and the ETag check.
 */
type Want = { size: number; sha256: string; url: string };
class Verifier extends Transform {
  failure: ObjectError | undefined;
  md5: Buffer | undefined;
  private readonly sha = createHash('sha256');
  private readonly md5Hash = createHash('md5');
  private seen = 0;
  private readonly want: Want;

  constructor(want: Want) {
    super({ highWaterMark: MiB });
    this.want = want;
  }

  private fail(detail: string): ObjectError {
    this.failure = sourceMismatch(this.want.url, detail);
    return this.failure;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.seen += chunk.length;
    if (this.seen > this.want.size) return cb(this.fail(`more than the ${this.want.size} bytes declared`));
    this.sha.update(chunk);
    this.md5Hash.update(chunk);
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    this.md5 = this.md5Hash.digest();
    const sha = this.sha.digest('hex');
    if (this.seen !== this.want.size) return cb(this.fail(`${this.seen} bytes where ${this.want.size} were declared`));
    if (sha !== this.want.sha256) return cb(this.fail(`sha256 ${sha} where ${this.want.sha256} was declared`));
    cb();
  }
}

/**
 * A FIFO semaphore over a number of units (bytes, lanes). FIFO so that a big request is not starved
 * by a stream of small ones; a request for more than the total gets the whole of it.
 */
class Budget {
  private free: number;
  private readonly waiting: { n: number; go: () => void }[] = [];
  private readonly total: number;

  constructor(total: number) {
    this.total = total;
    this.free = total;
  }

  async take(want: number): Promise<() => void> {
    const n = Math.min(want, this.total);
    if (this.waiting.length === 0 && n <= this.free) this.free -= n;
    else await new Promise<void>((go) => this.waiting.push({ n, go }));
    let given = true;
    return () => {
      if (!given) return;
      given = false;
      this.free += n;
      for (let w = this.waiting[0]; w && w.n <= this.free; w = this.waiting[0]) {
        this.waiting.shift();
        this.free -= w.n;
        w.go();
      }
    };
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
  /** Objects larger than this go up in parts, one multipart upload at a time. */
  readonly partSize: number;
  private readonly queueSize: number;
  private readonly maxAttempts: number;
  private readonly client: S3Client;
  /** The same, making one attempt per request: for part bodies that are streams (see s3-parts.ts). */
  private readonly partClient: S3Client;
  /**
   * Callers run several puts at once (install: 4). Multipart uploads take turns in one lane: a big
   * object is bandwidth-bound and already sends `queueSize` parts side by side. Single-PUT objects
   * are held whole, so they share SINGLE_BUDGET by bytes: many small ones run side by side, where
   * round trips set the pace. The two pools never wait on each other, so neither starves the other.
   */
  private readonly multipart: Budget = new Budget(1);
  private readonly singleBytes: Budget;

  constructor(opts: S3SinkOptions) {
    if (!opts.bucket) throw new ObjectError('STORE', 'no S3 bucket given; name the bucket to install into');
    this.bucket = opts.bucket;
    this.region = opts.region || 'us-east-1';
    this.partSize = opts.partSize ?? 8 * MiB;
    this.queueSize = opts.queueSize ?? 4;
    if (!Number.isSafeInteger(this.partSize) || this.partSize < 5 * MiB) throw new ObjectError('STORE', `S3 part size ${this.partSize} is below S3's minimum of 5 MiB`);
    if (!Number.isSafeInteger(this.queueSize) || this.queueSize < 1) throw new ObjectError('STORE', `S3 queue size ${this.queueSize} must be at least 1`);
    this.singleBytes = new Budget(Math.max(this.partSize, SINGLE_BUDGET));
    this.maxAttempts = opts.maxAttempts ?? 6;
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
    const config = {
      region: this.region,
      ...(endpoint ? { endpoint } : {}),
      ...(opts.credentials ? { credentials: opts.credentials } : {}),
      // Path style and no flexible checksums: what MinIO and other S3 servers take (research/libs.md §5).
      forcePathStyle: true,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      // The options form: the SDK builds its own NodeHttpHandler, so we need no import of its package.
      // Without socketTimeout the SDK waits forever on a server that stops answering mid-request.
      requestHandler: { ...tls, connectionTimeout: 30_000, socketTimeout: opts.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS },
    } as const;
    // As many attempts as the registry transport makes: a burst of three 5xx must not end an install.
    this.client = new S3Client({ ...config, maxAttempts: this.maxAttempts });
    // Its own logger: the SDK's default prints a warning to the console for every failed stream body, which we retry.
    this.partClient = new S3Client({ ...config, maxAttempts: 1, logger: SILENT });
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
    const etag = unquote(h.ETag);
    return { size: h.ContentLength ?? 0, ...(sha256 && /^[0-9a-f]{64}$/.test(sha256) ? { sha256 } : {}), ...(etag ? { etag } : {}) };
  }

  /** Every object under `prefix` ('' or none: the whole bucket), by key; a missing bucket holds none. */
  async list(prefix = ''): Promise<Map<string, Listed>> {
    const found = new Map<string, Listed>();
    let token: string | undefined;
    do {
      let page: ListObjectsV2CommandOutput;
      try {
        page = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, ...(prefix ? { Prefix: prefix } : {}), ...(token ? { ContinuationToken: token } : {}) }));
      } catch (err) {
        if (statusOf(err) === 404 && codeOf(err) === 'NoSuchBucket') return new Map();
        throw this.fail(err, 'listing the bucket');
      }
      for (const o of page.Contents ?? []) if (o.Key) found.set(o.Key, { size: o.Size ?? 0, etag: unquote(o.ETag) });
      // A server that says "truncated" without a token (or repeats it) would otherwise loop forever.
      const next = page.IsTruncated ? page.NextContinuationToken : undefined;
      token = next && next !== token ? next : undefined;
    } while (token);
    return found;
  }

  /**
   * Uploads `open()`'s bytes under `key` unless an object with this size and sha256 is there
   * already (by its sha256 metadata, or by `opts`: see PutOptions). The key never holds wrong or
   * partial bytes: the source is checked as it is read, and an upload whose ETag is not the one
   * of the bytes sent is removed.
   */
  async put(key: string, size: number, sha256: string, open: OpenSource, opts: PutOptions = {}): Promise<PutResult> {
    const url = `s3://${this.bucket}/${key}`;
    if (!key || !Number.isSafeInteger(size) || size < 0 || !/^[0-9a-f]{64}$/.test(sha256)) throw new ObjectError('STORE', `${url}: put needs a key, a byte size and a lowercase hex sha256`);
    const { listed } = opts;
    const known = unquote(opts.etag);
    if (listed && known && listed.size === size && unquote(listed.etag) === known) return { key, how: 'skipped', size, sha256, etag: known };
    // Listed absent, or listed with another size: nothing there can be skipped, so no HEAD either.
    if (listed === undefined || (listed !== null && listed.size === size)) {
      const have = await this.head(key);
      if (have && have.size === size && have.sha256 === sha256) return { key, how: 'skipped', size, sha256, ...(have.etag ? { etag: have.etag } : {}) };
    }
    // At most 10,000 parts: very large objects get larger parts.
    const partSize = Math.max(this.partSize, Math.ceil(size / MAX_PARTS / MiB) * MiB);
    const upload: PartsUpload = {
      client: this.client,
      partClient: this.partClient,
      bucket: this.bucket,
      key,
      url,
      size,
      sha256,
      partSize,
      parallel: this.queueSize,
      maxAttempts: this.maxAttempts,
      verified: opts.verified ?? false,
      open,
      fail: (err, doing) => this.fail(err, doing, key),
    };
    const md5 = md5Bytes(opts.md5);
    if (md5 && size > partSize && size <= STREAMED_PUT_MAX) {
      const stored = await uploadWhole(upload, md5);
      return { key, how: 'uploaded', size, sha256, etag: await this.check(key, url, md5.toString('hex'), stored) };
    }
    if (size > partSize) {
      const release = await this.multipart.take(1);
      try {
        const { stored, partMd5s } = await uploadParts(upload);
        const etag = `${createHash('md5').update(Buffer.concat(partMd5s)).digest('hex')}-${partMd5s.length}`;
        return { key, how: 'uploaded', size, sha256, etag: await this.check(key, url, etag, stored) };
      } finally {
        release();
      }
    }
    // Taken before the source is opened: a put that waits holds neither memory nor a file.
    const release = await this.singleBytes.take(size);
    let source: Readable;
    try {
      source = await open();
    } catch (err) {
      release();
      throw err;
    }
    const v = new Verifier({ size, sha256, url });
    let sourceError: unknown;
    let stored: Stored;
    try {
      source.once('error', (err) => (sourceError = err));
      pipeline(source, v, () => {}); // a source error reaches `v` and fails the upload
      // Small enough to hold: checked before a byte is sent, and the SDK can retry a buffer. One
      // buffer of the declared size: the Verifier fails before passing on a byte too many.
      const body = Buffer.allocUnsafe(size);
      let at = 0;
      for await (const c of v) at += (c as Buffer).copy(body, at);
      stored = await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Metadata: { sha256 }, Body: body, ContentLength: size, ContentMD5: v.md5!.toString('base64') }));
    } catch (err) {
      if (v.failure) throw v.failure;
      if (sourceError) throw readFailed(url, sourceError, codeOf(sourceError));
      throw this.fail(err, 'uploading', key);
    } finally {
      v.destroy();
      release();
    }
    return { key, how: 'uploaded', size, sha256, etag: await this.check(key, url, v.md5!.toString('hex'), stored) };
  }

  /**
   * The server's answer to the upload names the ETag of what it stored; if that is not the ETag of
   * the bytes sent, the object is deleted, never left. Size and sha256 metadata need no HEAD: we
   * sent them and the server accepted the request. Returns the server's ETag.
   */
  private async check(key: string, url: string, etag: string, stored: Stored): Promise<string> {
    const got = unquote(stored.ETag);
    // KMS and customer-key encryption make ETags that are not MD5s; so do servers that don't follow S3's scheme.
    const plainEtag = !stored.SSECustomerAlgorithm && !stored.ServerSideEncryption?.startsWith('aws:kms') && (etag.includes('-') ? /^[0-9a-f]{32}-\d+$/ : /^[0-9a-f]{32}$/).test(got);
    if (!plainEtag || got === etag) return got || etag;
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key })).catch(() => undefined);
    throw new ObjectError('MISMATCH', `${url} does not hold what was uploaded (its ETag is ${got} where the bytes sent give ${etag}); it was removed, run again`, { retryable: true });
  }

  close(): void {
    this.client.destroy();
    this.partClient.destroy();
  }
}
