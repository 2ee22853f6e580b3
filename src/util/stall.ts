import { CodedError } from './errors.ts';

/** A transfer that receives nothing for this long is abandoned and retried (resumed where it can be). */
export const DEFAULT_STALL_TIMEOUT_MS = 60_000;

export const STALL_TIMEOUT_ENV = 'CARTESIA_AIRGAP_STALL_TIMEOUT';

/**
 * The stall timeout from CARTESIA_AIRGAP_STALL_TIMEOUT (seconds), as git's GIT_HTTP_LOW_SPEED_TIME or
 * wget's --read-timeout: a link whose pauses are longer (satellite, an inspecting proxy) needs more,
 * and a flaky one recovers sooner with less. Applies to registry, GCS and S3 traffic alike.
 */
export function stallTimeoutMs(env: NodeJS.ProcessEnv = process.env): number {
  const text = env[STALL_TIMEOUT_ENV]?.trim();
  if (!text) return DEFAULT_STALL_TIMEOUT_MS;
  const seconds = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text) || !(seconds >= 1 && seconds <= 86_400)) {
    throw new CodedError('BAD_USAGE', `${STALL_TIMEOUT_ENV} must be a number of seconds from 1 to 86400 (default ${DEFAULT_STALL_TIMEOUT_MS / 1000}), not "${text.slice(0, 40)}"`);
  }
  return Math.round(seconds * 1000);
}
