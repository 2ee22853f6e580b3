/**
 * The S3 sink's errors: what the SDK throws, as one-line ObjectErrors that say what to do.
 */
import { ObjectError } from './cache.ts';
import { statusOf } from './s3-parts.ts';

const NET = /^(ECONNREFUSED|ECONNRESET|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|EPIPE|EHOSTUNREACH|ENETUNREACH|TimeoutError|RequestTimeout)$/;
const TLS = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS|ERR_SSL/;
const DENIED: Record<string, string> = {
  InvalidAccessKeyId: 'the server does not know this access key',
  SignatureDoesNotMatch: 'the secret key does not match the access key',
  ExpiredToken: 'the session token has expired',
  InvalidToken: 'the session token is not valid',
};

type SdkError = { name?: unknown; Code?: unknown; code?: unknown };
/** The error's code (S3's `Code`, Node's `code`, or the SDK's `name`), only if it looks like one. */
export const codeOf = (err: unknown) => {
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
  if (code === 'BadDigest' || code === 'InvalidDigest') return new ObjectError('MISMATCH', `${url}: the server found the bytes sent are not the ones whose MD5 was declared (${http}); nothing was written under the key; the source is damaged or changed while being read`);
  if (code === 'NoSuchBucket') return new ObjectError('NOT_FOUND', `${url}: no such bucket while ${doing}; create it first or check its name`);
  if (NET.test(code)) return new ObjectError('NETWORK', `cannot reach ${endpoint} for ${doing} on ${url} (${code}); check the network and the endpoint`, { retryable: true });
  if (TLS.test(code)) return new ObjectError('STORE', `TLS check of ${endpoint} failed (${code}); pass the CA file that signed its certificate`);
  if ((status ?? 0) >= 500 || code === 'SlowDown') return new ObjectError('STORE', `${url}: ${doing} failed (${http}); the server is struggling, try again`, { retryable: true });
  return new ObjectError('STORE', `${url}: ${doing} failed (${http})`);
}
