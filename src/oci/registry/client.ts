import type { Readable } from 'node:stream';
import type { Authorizer } from '../auth/authorizer.ts';
import { OciError } from '../errors.ts';
import { retryAfterMs } from '../../util/retry-after.ts';
import { drain, readCapped, type Response, type SendRequest, type Transport } from '../http/transport.ts';
import { apiHost } from '../reference.ts';

export interface RegistryRequest {
  method: SendRequest['method'];
  /** `/v2/…` on this registry, or an absolute URL (upload locations). */
  path: string;
  scopes: readonly string[];
  headers?: Record<string, string>;
  /** A replayable body: the request is retried after a 401 with fresh authorization. */
  body?: Buffer | string;
  /** A one-shot body: after a 401 the caller restarts the whole operation. */
  stream?: Readable;
  idempotent?: boolean;
  followRedirects?: boolean;
}


/** One line from a registry's error answer (Distribution spec error codes), never its headers. */
export async function registryError(res: Response, what: string): Promise<OciError> {
  let detail = '';
  try {
    const body = await readCapped(res, 64 << 10, 'error body');
    const parsed = JSON.parse(body.toString('utf8')) as { errors?: { code?: string; message?: string }[] };
    const first = parsed.errors?.[0];
    if (first) detail = `: ${[first.code, first.message].filter(Boolean).join(' ')}`.slice(0, 300);
  } catch {
    await drain(res);
  }
  const status = res.statusCode;
  const code = status === 404 ? 'NOT_FOUND' : status === 401 ? 'UNAUTHORIZED' : status === 403 ? 'DENIED' : status === 413 ? 'TOO_LARGE' : 'REGISTRY';
  const err = new OciError(code, `${what}: registry answered ${status}${detail.replace(/\s+/g, ' ')}`, { retryable: status >= 500 || status === 429 });
  const wait = retryAfterMs(res.headers['retry-after']);
  if (wait !== undefined) err.retryAfterMs = wait;
  return err;
}

/** `repository:a/b:pull,push` → `pull,push on a/b`, for messages. */
const describeScopes = (scopes: readonly string[]): string =>
  scopes.map((s) => {
    const parts = s.split(':');
    return parts.length >= 3 ? `${parts.at(-1)} on ${parts.slice(1, -1).join(':')}` : s;
  }).join(' and ') || 'access';

/** Talks to one registry host for one side of a copy: its URLs, its authorization. */
export class RegistryClient {
  readonly registry: string;
  readonly transport: Transport;
  readonly authorizer: Authorizer;

  constructor(registry: string, transport: Transport, authorizer: Authorizer) {
    this.registry = registry;
    this.transport = transport;
    this.authorizer = authorizer;
  }

  url(path: string): string {
    return /^https?:\/\//.test(path) ? path : `${this.transport.origin(apiHost(this.registry))}${path}`;
  }

  /**
   * Sends an idempotent request and reads a 200 answer's small body whole (a manifest), asking
   * again when the connection drops in the middle of it. Other answers come back unread.
   */
  sendAndRead(req: RegistryRequest, cap: number, what: string): Promise<{ res: Response; bytes?: Buffer }> {
    return this.transport.whole(this.url(req.path), async () => {
      const res = await this.send(req);
      return res.statusCode === 200 ? { res, bytes: await readCapped(res, cap, what) } : { res };
    });
  }

  /** Sends with authorization; a 401 is answered by the challenge flow and one retry. */
  async send(req: RegistryRequest): Promise<Response> {
    const url = this.url(req.path);
    // An upload Location on another host (a storage front end) never gets the registry's token.
    const sameOrigin = new URL(url).origin === new URL(this.url('/')).origin;
    let auth = sameOrigin ? await this.authorizer.authorization(this.registry, req.scopes) : undefined;
    for (let attempt = 0; ; attempt++) {
      const res = await this.transport.send({
        url,
        method: req.method,
        headers: { ...req.headers, ...(auth ? { authorization: auth } : {}) },
        body: req.stream ?? req.body,
        idempotent: req.idempotent ?? false,
        followRedirects: req.followRedirects ?? false,
      });
      if (res.statusCode !== 401) return res;
      const challenge = res.headers['www-authenticate'];
      await drain(res);
      if (attempt > 0) {
        throw new OciError('UNAUTHORIZED', `registry ${this.registry} refused the credentials for ${describeScopes(req.scopes)}; check the login (user and password or key) and its permissions`);
      }
      auth = await this.authorizer.challenged(this.registry, challenge, req.scopes, auth);
      if (req.stream) {
        // The body is spent; a token expired mid-transfer. The caller starts over with `auth` cached.
        throw new OciError('UNAUTHORIZED', `registry ${this.registry} asked to authenticate again during an upload`, { retryable: true });
      }
    }
  }
}
