import { readFile } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, Pool, request, fetch as undiciFetch, type Dispatcher } from 'undici';
import { jitteredBackoff } from '../../util/backoff.ts';
import { retryAfterMs } from '../../util/retry-after.ts';
import { DEFAULT_STALL_TIMEOUT_MS } from '../../util/stall.ts';
import { OciError } from '../errors.ts';

/** How to reach one registry host. TLS is verified unless this host says otherwise. */
export interface EndpointOptions {
  /** PEM file of the CA that signed this host's certificate (replaces the system roots for it). */
  caFile?: string;
  insecureSkipVerify?: boolean;
  plainHttp?: boolean;
}

export interface RetryPolicy {
  /** Extra attempts after the first. */
  retries: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

export interface SendRequest {
  url: string;
  method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  headers?: Record<string, string>;
  body?: Buffer | string | Readable;
  /** GET/HEAD (and body-less requests the caller declares safe) are retried on 5xx/429/resets. */
  idempotent?: boolean;
  /** Follow redirects (GET/HEAD only); Authorization is dropped when the origin changes. */
  followRedirects?: boolean;
}

export type Response = Dispatcher.ResponseData;

const RETRY_STATUS = new Set([429, 500, 502, 503, 504]);
const RETRY_CODES = new Set([
  'ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'ENOTFOUND',
  'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CLOSED',
]);
const TLS_CODES = /CERT|SELF_SIGNED|UNABLE_TO_(VERIFY|GET)|ERR_TLS|ERR_SSL|EPROTO/;

const errorCode = (err: unknown): string => {
  const e = err as { code?: unknown; cause?: { code?: unknown } };
  return String(e?.code ?? e?.cause?.code ?? '');
};

/** Network errors worth another attempt (a reset, a timeout), as opposed to a TLS refusal. */
export const isTransientNetworkError = (err: unknown): boolean => RETRY_CODES.has(errorCode(err)) || (err instanceof OciError && err.retryable);

/** One line for a failed connection, naming the endpoint and the likely fix. */
export function describeNetworkError(err: unknown, url: string): OciError {
  if (err instanceof OciError) return err;
  const code = errorCode(err);
  const origin = new URL(url).origin;
  // Node suggests --use-system-ca for unknown CAs; our flags are the fix, so drop that advice.
  const reason = ((err as Error)?.message?.split('\n')[0] ?? String(err)).replace(/; if the root CA is installed locally.*$/, '');
  if (TLS_CODES.test(code)) {
    const hint = /WRONG_VERSION|EPROTO/.test(code)
      ? 'the server may speak plain HTTP: allow plain HTTP for this registry if that is intended'
      : "give this registry's CA certificate (a --*-ca-file flag), or turn TLS verification off for it";
    return new OciError('TLS', `TLS connection to ${origin} failed (${code}: ${reason}); ${hint}`, { cause: err });
  }
  return new OciError('NETWORK', `cannot reach ${origin} (${code || 'error'}: ${reason})`, { retryable: RETRY_CODES.has(code), cause: err });
}

export const header = (res: Response, name: string): string | undefined => {
  const v = res.headers[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
};

/** Reads a small body (manifests, errors) with a cap, so a hostile server cannot fill memory. */
export async function readCapped(res: Response, cap: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of res.body as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > cap) {
      res.body.destroy();
      throw new OciError('TOO_LARGE', `${what} is larger than ${cap} bytes; refusing it`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

/** Reads and discards a body so the connection goes back to the pool. */
export async function drain(res: Response): Promise<void> {
  try {
    await res.body.dump({ limit: 1 << 20 });
  } catch {
    // A broken body on a response we are discarding changes nothing.
  }
}

export const DEFAULT_RETRY: RetryPolicy = { retries: 5, baseDelayMs: 250, maxDelayMs: 10_000 };

/**
 * The one HTTP client of the engine: one pooled undici agent whose per-origin pools get that
 * host's TLS settings; retries with backoff for idempotent requests; redirects followed without
 * forwarding a registry's Authorization to another origin (Artifact Registry → storage URLs).
 */
export class Transport {
  readonly #endpoints = new Map<string, EndpointOptions & { ca?: Buffer }>();
  readonly #dispatcher: Dispatcher;
  readonly retry: RetryPolicy;

  private constructor(dispatcher: Dispatcher | undefined, retry: RetryPolicy, stallTimeoutMs: number) {
    this.retry = retry;
    this.#dispatcher =
      dispatcher ??
      new Agent({
        connections: 16,
        // HTTP/1.1, one connection per transfer, as skopeo and containerd do: undici 8 would
        // otherwise multiplex every blob of a host over one HTTP/2 connection, one congestion
        // window for all of them, and the bed's registry (distribution 2.8) spent 3x the CPU
        // serving the same pull that way (3.7 vs 1.2 CPU s for 615 MiB; pushes 5.5 vs 4.5).
        allowH2: false,
        keepAliveTimeout: 30_000,
        // A registry may think a while before answering a PUT that completes a large blob.
        headersTimeout: Math.max(120_000, stallTimeoutMs),
        // A stalled body fails after this long and the blob stream resumes with Range.
        bodyTimeout: stallTimeoutMs,
        factory: (origin, opts) => new Pool(origin, { ...opts, connect: this.#tlsFor(origin) }),
      });
  }

  static async create(
    endpoints: Record<string, EndpointOptions> = {},
    opts: { dispatcher?: Dispatcher; retry?: Partial<RetryPolicy>; stallTimeoutMs?: number } = {},
  ): Promise<Transport> {
    const t = new Transport(opts.dispatcher, { ...DEFAULT_RETRY, ...opts.retry }, opts.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS);
    for (const [host, e] of Object.entries(endpoints)) await t.configure(host, e);
    return t;
  }

  async configure(host: string, e: EndpointOptions): Promise<void> {
    let ca: Buffer | undefined;
    if (e.caFile) {
      try {
        ca = await readFile(e.caFile);
      } catch (err) {
        throw new OciError('TLS', `cannot read the CA file ${e.caFile} for ${host}: ${(err as Error).message}`);
      }
    }
    this.#endpoints.set(host, { ...e, ...(ca ? { ca } : {}) });
  }

  endpoint(host: string): EndpointOptions | undefined {
    return this.#endpoints.get(host);
  }

  /** `https://host` unless plain HTTP was asked for this host. */
  origin(host: string): string {
    return `${this.#endpoints.get(host)?.plainHttp ? 'http' : 'https'}://${host}`;
  }

  #tlsFor(origin: string | URL): object {
    const e = this.#endpoints.get(new URL(origin).host);
    return { ...(e?.ca ? { ca: e.ca } : {}), ...(e?.insecureSkipVerify ? { rejectUnauthorized: false } : {}) };
  }

  /** Sends one request; idempotent ones are retried. The caller consumes or drains the body. */
  async send(req: SendRequest): Promise<Response> {
    const attempts = req.idempotent ? this.retry.retries + 1 : 1;
    for (let attempt = 1; ; attempt++) {
      let res: Response;
      try {
        res = await this.#sendFollowing(req);
      } catch (err) {
        if (attempt < attempts && isTransientNetworkError(err)) {
          await sleep(this.backoff(attempt));
          continue;
        }
        throw describeNetworkError(err, req.url);
      }
      if (attempt < attempts && RETRY_STATUS.has(res.statusCode)) {
        const wait = retryAfterMs(res.headers['retry-after'], 60_000) ?? this.backoff(attempt);
        await drain(res);
        await sleep(wait);
        continue;
      }
      return res;
    }
  }

  /**
   * Runs `attempt` (a request and the reading of its small body: a manifest, a token) again while
   * it fails with a dropped connection: `send` retries one lost before the headers, this one lost
   * in the middle of a body read whole. Status answers are the caller's to judge, after.
   */
  async whole<T>(url: string, attempt: () => Promise<T>): Promise<T> {
    for (let failures = 1; ; failures++) {
      try {
        return await attempt();
      } catch (err) {
        if (!RETRY_CODES.has(errorCode(err))) throw err;
        if (failures > this.retry.retries) throw describeNetworkError(err, url);
        await sleep(this.backoff(failures));
      }
    }
  }

  /** The wait before retry number `attempt` under this transport's policy (see jitteredBackoff). */
  backoff(attempt: number): number {
    return jitteredBackoff(attempt, this.retry.baseDelayMs, this.retry.maxDelayMs);
  }

  async #sendFollowing(req: SendRequest): Promise<Response> {
    let url = req.url;
    let headers = { ...req.headers };
    for (let hops = 0; ; hops++) {
      const res = await request(url, { dispatcher: this.#dispatcher, method: req.method, headers, body: req.body });
      const location = header(res, 'location');
      const redirect = req.followRedirects && [301, 302, 303, 307, 308].includes(res.statusCode) && location;
      if (!redirect) return res;
      await drain(res);
      if (hops >= 5) throw new OciError('REGISTRY', `too many redirects from ${new URL(req.url).origin}`);
      const next = new URL(location, url);
      if (next.origin !== new URL(url).origin) {
        // The registry's token means nothing to a storage host and must not leak there.
        const { authorization: _dropped, ...rest } = headers;
        headers = rest;
      }
      url = next.toString();
    }
  }

  /** WHATWG fetch through this agent, for libraries that take one (the Google token exchange). */
  readonly fetch = ((input: string | URL, init?: RequestInit) =>
    undiciFetch(input as string, { ...(init as object), dispatcher: this.#dispatcher })) as unknown as typeof globalThis.fetch;

  async close(): Promise<void> {
    await this.#dispatcher.close();
  }
}
