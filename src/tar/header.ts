/**
 * Tar headers of the bundle's regular-file entries (POSIX.1-2001 pax interchange format): a ustar
 * header block, preceded by a pax extended header (typeflag 'x') carrying the `path` record when
 * the name does not fit ustar's name and prefix fields.
 *
 * Byte for byte what tar-stream 3.2.2 writes for the same header (headers.js `encode` and
 * `encodePax`, pack.js `_encodePax`), which wrote bundles before: the same inputs must keep giving
 * the same bundle. test/unit/tar-header.test.ts compares the two. Its choices, kept here:
 * - numeric fields are zero-padded octal followed by a space (checksum: 6 digits, space, NUL);
 * - a size of 8 GiB or more (12+ octal digits) is stored in base-256: 0x80, then 11 bytes big-endian;
 * - uname, gname and linkname are left empty; devmajor and devminor are "000000 ";
 * - the pax header's own ustar block and the entry's ustar block after it are both named
 *   `PaxHeader`, with the entry's mode and mtime;
 * - the archive ends with exactly two zero blocks, with no padding to a record size.
 */

export const BLOCK = 512;
/** The end-of-archive marker: two zero blocks. */
export const END_OF_ARCHIVE = new Uint8Array(2 * BLOCK);

export interface FileHeader {
  name: string;
  size: number;
  /** Permission bits (0o644 or 0o755 in a bundle). */
  mode: number;
  mtime: Date;
}

const TYPE_FILE = '0';
const TYPE_PAX = 'x';
const PAX_NAME = 'PaxHeader';
const MAGIC = 'ustar\0';
const VERSION = '00';

/** Zero bytes that pad `size` bytes of content to a whole block. */
export const paddingBytes = (size: number): number => (BLOCK - (size % BLOCK)) % BLOCK;

/**
 * `name` as ustar's name (≤ 100 bytes) and prefix (≤ 155) fields, split at the first `/`s the way
 * tar-stream splits it; undefined when it cannot be (non-ASCII, or no split fits), so a pax header
 * carries it. The one place that decides between ustar alone and pax.
 */
export function ustarName(name: string): { name: string; prefix: string } | undefined {
  if (Buffer.byteLength(name) !== name.length) return undefined; // not ASCII
  let rest = name;
  let prefix = '';
  while (rest.length > 100) {
    const i = rest.indexOf('/');
    if (i === -1) return undefined;
    prefix += prefix ? `/${rest.slice(0, i)}` : rest.slice(0, i);
    rest = rest.slice(i + 1);
  }
  return prefix.length <= 155 ? { name: rest, prefix } : undefined;
}

/** A pax record: `<length> <key>=<value>\n`, where the length counts its own digits. */
function paxRecord(key: string, value: string): Buffer {
  const body = ` ${key}=${value}\n`;
  const len = Buffer.byteLength(body);
  let digits = String(len).length;
  if (String(len + digits).length > digits) digits++;
  return Buffer.from(`${len + digits}${body}`);
}

/** Bytes the header(s) of a file entry named `name` take (the volume planner needs them before writing). */
export function tarHeaderBytes(name: string): number {
  if (ustarName(name)) return BLOCK;
  const record = paxRecord('path', name).length;
  return BLOCK + record + paddingBytes(record) + BLOCK;
}

/** The header(s) of a regular file entry, ready to be followed by its content. */
export function encodeFileHeader(h: FileHeader): Buffer {
  const fields = ustarName(h.name);
  if (fields) return ustarBlock(fields.name, fields.prefix, h.size, h.mode, h.mtime, TYPE_FILE);
  const record = paxRecord('path', h.name);
  return Buffer.concat([
    ustarBlock(PAX_NAME, '', record.length, h.mode, h.mtime, TYPE_PAX),
    record,
    Buffer.alloc(paddingBytes(record.length)),
    ustarBlock(PAX_NAME, '', h.size, h.mode, h.mtime, TYPE_FILE),
  ]);
}

function ustarBlock(name: string, prefix: string, size: number, mode: number, mtime: Date, typeflag: string): Buffer {
  const b = Buffer.alloc(BLOCK);
  b.write(name, 0, 100, 'latin1');
  b.write(octal(mode & 0o7777, 6), 100, 'latin1');
  b.write(octal(0, 6), 108, 'latin1'); // uid
  b.write(octal(0, 6), 116, 'latin1'); // gid
  writeSize(b, size);
  b.write(octal(Math.trunc(mtime.getTime() / 1000), 11), 136, 'latin1');
  b.write(typeflag, 156, 'latin1');
  b.write(MAGIC, 257, 'latin1');
  b.write(VERSION, 263, 'latin1');
  b.write(octal(0, 6), 329, 'latin1'); // devmajor
  b.write(octal(0, 6), 337, 'latin1'); // devminor
  b.write(prefix, 345, 155, 'latin1');
  b.write(octal(checksum(b), 6), 148, 'latin1');
  return b;
}

/** `digits` octal digits, zero-padded, and a space; all sevens when the value needs more. */
function octal(value: number, digits: number): string {
  const s = value.toString(8);
  return s.length > digits ? `${'7'.repeat(digits)} ` : `${s.padStart(digits, '0')} `;
}

function writeSize(b: Buffer, size: number): void {
  if (size.toString(8).length <= 11) {
    b.write(octal(size, 11), 124, 'latin1');
    return;
  }
  b[124] = 0x80;
  for (let i = 11, n = size; i > 0; i--, n = Math.floor(n / 256)) b[124 + i] = n % 256;
}

/** The sum of the block's bytes with the checksum field counted as eight spaces. */
function checksum(b: Buffer): number {
  let sum = 8 * 0x20;
  for (let i = 0; i < 148; i++) sum += b[i]!;
  for (let i = 156; i < BLOCK; i++) sum += b[i]!;
  return sum;
}
