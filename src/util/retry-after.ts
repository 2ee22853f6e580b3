/**
 * Retry-After (RFC 9110 §10.2.3): seconds or an HTTP date, as milliseconds from now; bounded so a
 * server cannot park us for long.
 */
export function retryAfterMs(value: string | string[] | undefined, maxMs = 60_000): number | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  if (!v) return undefined;
  const secs = Number(v);
  const ms = Number.isFinite(secs) ? secs * 1000 : Date.parse(v) - Date.now();
  return Number.isFinite(ms) ? Math.min(Math.max(ms, 0), maxMs) : undefined;
}
