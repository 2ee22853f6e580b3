import { OciError } from './errors.ts';
import type { Platform } from './types.ts';

/** `os/arch[/variant]` as on the command line (`linux/amd64`, `linux/arm64/v8`). */
export function parsePlatform(value: string): Platform {
  const [os, architecture, variant, ...rest] = value.split('/');
  if (!os || !architecture || rest.length > 0) throw new OciError('BAD_REFERENCE', `invalid platform "${value}": use os/arch or os/arch/variant, e.g. linux/amd64`);
  return { os, architecture, ...(variant ? { variant } : {}) };
}

export const formatPlatform = (p: Platform): string => [p.os, p.architecture, p.variant].filter(Boolean).join('/');

// containerd's normalisation: arm64 without a variant means v8, amd64 has none.
const variantOf = (p: Platform) => p.variant ?? (p.architecture === 'arm64' ? 'v8' : '');

/** Whether an index entry's platform is the one asked for (the variant only when asked). */
export function platformMatches(wanted: Platform, candidate: Platform | undefined): boolean {
  if (!candidate || candidate.os !== wanted.os || candidate.architecture !== wanted.architecture) return false;
  return wanted.variant === undefined || variantOf(wanted) === variantOf(candidate);
}
