import { CodedError } from '../util/errors.ts';

/**
 * Media sizes for `bundle --split-size`. Vendors' "GB" is 10^9 bytes; FAT32 caps a file at
 * 4 GiB − 1 bytes.
 */
export const SPLIT_PRESETS: Readonly<Record<string, number>> = {
  dvd: 4_700_000_000,
  fat32: 4 * 2 ** 30 - 1,
  bd25: 25_000_000_000,
  bd50: 50_000_000_000,
};

/** K, M, G are 1000-based (as media are sold); KiB, MiB, GiB 1024-based. A trailing B is optional. */
const UNITS: Readonly<Record<string, bigint>> = {
  '': 1n,
  b: 1n,
  k: 1000n,
  kb: 1000n,
  m: 1000n ** 2n,
  mb: 1000n ** 2n,
  g: 1000n ** 3n,
  gb: 1000n ** 3n,
  ki: 1024n,
  kib: 1024n,
  mi: 1024n ** 2n,
  mib: 1024n ** 2n,
  gi: 1024n ** 3n,
  gib: 1024n ** 3n,
};

const HINT = 'give bytes (4700000000), a number with K, M, G (1000-based) or KiB, MiB, GiB (1024-based), or dvd, fat32, bd25, bd50';

/**
 * `--split-size` (or another size flag, named in errors) in bytes: `1048576`, `4.7G`, `1.5 GiB`,
 * `dvd`, … Exact decimal arithmetic, so `4.7G` is 4,700,000,000 bytes and a value that is not a
 * whole number of bytes is refused.
 */
export function parseSplitSize(text: string, flag = '--split-size'): number {
  const value = text.trim().toLowerCase();
  const preset = SPLIT_PRESETS[value];
  if (preset !== undefined) return preset;
  const m = /^([0-9]+)(?:\.([0-9]+))?\s*([a-z]*)$/.exec(value);
  const unit = m ? UNITS[m[3]!] : undefined;
  if (!m || unit === undefined) throw new CodedError('BAD_USAGE', `${flag} ${JSON.stringify(text)} is not a size; ${HINT}`);
  const fraction = m[2] ?? '';
  const scaled = BigInt(m[1]! + fraction) * unit;
  const divisor = 10n ** BigInt(fraction.length);
  if (scaled % divisor !== 0n) throw new CodedError('BAD_USAGE', `${flag} ${JSON.stringify(text)} is not a whole number of bytes; ${HINT}`);
  const bytes = scaled / divisor;
  if (bytes <= 0n) throw new CodedError('BAD_USAGE', `${flag} ${JSON.stringify(text)} must be more than 0 bytes`);
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) throw new CodedError('BAD_USAGE', `${flag} ${JSON.stringify(text)} is too large`);
  return Number(bytes);
}
