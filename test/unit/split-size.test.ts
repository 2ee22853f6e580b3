import { describe, expect, it } from 'vitest';
import { parseSplitSize } from '../../src/bundle/split-size.ts';
import { isCodedError } from '../../src/util/errors.ts';

describe('parseSplitSize', () => {
  it.each([
    ['1048576', 1_048_576],
    ['1', 1],
    ['4.7G', 4_700_000_000],
    ['4.7 GB', 4_700_000_000],
    ['650M', 650_000_000],
    ['100k', 100_000],
    ['1.5KiB', 1536],
    ['64MiB', 67_108_864],
    ['4GiB', 4_294_967_296],
    ['2gi', 2_147_483_648],
    ['dvd', 4_700_000_000],
    ['DVD', 4_700_000_000],
    ['fat32', 4_294_967_295],
    ['bd25', 25_000_000_000],
    ['bd50', 50_000_000_000],
  ])('%s is %d bytes', (text, bytes) => {
    expect(parseSplitSize(text)).toBe(bytes);
  });

  it.each([
    ['', /is not a size; give bytes \(4700000000\), a number with K, M, G \(1000-based\) or KiB, MiB, GiB \(1024-based\), or dvd, fat32, bd25, bd50$/],
    ['4.7Q', /^--split-size "4\.7Q" is not a size; give bytes/],
    ['-5', /^--split-size "-5" is not a size/],
    ['cd', /^--split-size "cd" is not a size/],
    ['1.0001K', /^--split-size "1\.0001K" is not a whole number of bytes/],
    ['0.1', /is not a whole number of bytes/],
    ['0', /^--split-size "0" must be more than 0 bytes$/],
    ['99999999999GiB', /^--split-size "99999999999GiB" is too large$/],
    ['1e9', /is not a size/],
  ])('refuses %j in one line', (text, message) => {
    let err: unknown;
    try {
      parseSplitSize(text);
    } catch (e) {
      err = e;
    }
    expect(isCodedError(err, 'BAD_USAGE')).toBe(true);
    expect((err as Error).message).toMatch(message);
    expect((err as Error).message).not.toContain('\n');
  });
});
