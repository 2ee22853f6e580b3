import { CodedError } from '../util/errors.ts';

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

export class OciError extends CodedError<OciErrorCode> {}

export const isOciError = (err: unknown, code?: OciErrorCode): err is OciError =>
  err instanceof OciError && (code === undefined || err.code === code);
