/**
 * The base of every error the tool reports: one line naming what is wrong and what to do, a
 * machine-readable `code`, and whether another attempt may succeed. Never carries credentials.
 */
export class CodedError<C extends string = string> extends Error {
  readonly code: C;
  readonly retryable: boolean;
  /** How long the server asked us to wait before another attempt (its Retry-After), when it said. */
  retryAfterMs?: number;
  constructor(code: C, message: string, opts: { retryable?: boolean; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = opts.retryable ?? false;
  }
}

export const isCodedError = (err: unknown, code?: string): err is CodedError =>
  err instanceof CodedError && (code === undefined || err.code === code);

/** ENOSPC or EDQUOT found anywhere in an error's cause chain (the disk filled up under us), else undefined. */
export function noSpaceCode(err: unknown): 'ENOSPC' | 'EDQUOT' | undefined {
  for (let e = err, depth = 0; e && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOSPC' || code === 'EDQUOT') return code;
  }
  return undefined;
}

export const isNoSpace = (err: unknown): boolean => noSpaceCode(err) !== undefined;
