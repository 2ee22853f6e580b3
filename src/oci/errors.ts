/**
 * Engine errors: one line, naming the thing that is wrong and what to do. `code` lets commands
 * and tests tell them apart without parsing text. Messages never contain credentials.
 */
export type OciErrorCode =
  | 'BAD_REFERENCE'
  | 'BAD_DIGEST'
  | 'DIGEST_MISMATCH'
  | 'SIZE_MISMATCH'
  | 'NOT_FOUND'
  | 'UNAUTHORIZED'
  | 'DENIED'
  | 'TLS'
  | 'NETWORK'
  | 'REGISTRY'
  | 'TOO_LARGE'
  | 'UNSUPPORTED'
  | 'LAYOUT'
  | 'BUSY';

export class OciError extends Error {
  readonly code: OciErrorCode;
  /** True when trying again (after a fresh token or a pause) may succeed. */
  readonly retryable: boolean;
  constructor(code: OciErrorCode, message: string, opts: { retryable?: boolean; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'OciError';
    this.code = code;
    this.retryable = opts.retryable ?? false;
  }
}

export const isOciError = (err: unknown, code?: OciErrorCode): err is OciError =>
  err instanceof OciError && (code === undefined || err.code === code);
