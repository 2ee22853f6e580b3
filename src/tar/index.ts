/**
 * Tar header scanner: walks an uncompressed tar file by byte offset, reading only the 512-byte
 * headers and the bodies of pax / GNU long-name records, so a multi-GiB bundle is indexed with a
 * few reads and its contents can then be served straight from the file (DESIGN.md §2).
 *
 * Anything that different tar readers could interpret differently is refused rather than guessed:
 * bad checksums, a lone zero block, content declared for a directory or link, size overrides in a
 * global pax header. Paths are reported as stored (minus a leading `./`); refusing hostile paths is
 * the caller's job, with isSafeRelativePath.
 */
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { OciError } from '../oci/errors.ts';

export type TarEntryType =
  | 'file'
  | 'directory'
  | 'symlink'
  | 'hardlink'
  | 'character-device'
  | 'block-device'
  | 'fifo'
  | 'other';

export interface TarEntry {
  /** As stored (pax `path`, GNU long name, or ustar prefix/name), minus leading `./` and a directory's trailing `/`. */
  path: string;
  type: TarEntryType;
  /** The header's typeflag byte as a character (`'0'`, `'5'`, `'\0'`, …). */
  typeflag: string;
  /** Content bytes stored after the header (the pax `size` when present). */
  size: number;
  /** Byte offset of the content in the tar file. */
  offset: number;
  /** Byte offset of the entry's own header (after any pax / long-name headers for it). */
  headerOffset: number;
  mode: number;
  /** Target of a symlink or hard link; a hard link's has a leading `./` stripped like `path`. */
  linkname?: string;
  /** Seconds since the epoch. */
  mtime: number;
}

export interface TarIndex {
  entries: TarEntry[];
  /** Byte offset where the two zero end-of-archive blocks start. */
  endOffset: number;
  /** Size of the tar file; anything past endOffset + 1024 is trailing data (usually record padding). */
  fileSize: number;
}

const BLOCK = 512;
/** Pax and long-name bodies are read into memory; real ones are a few hundred bytes. */
const MAX_META = 1 << 20;

const TYPES: Record<string, TarEntryType> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file', // contiguous file: every reader treats it as a regular file
  '1': 'hardlink',
  '2': 'symlink',
  '3': 'character-device',
  '4': 'block-device',
  '5': 'directory',
  '6': 'fifo',
};

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** True for a plain relative path: not absolute, no empty, `.` or `..` component, no NUL or backslash. */
export function isSafeRelativePath(p: string): boolean {
  if (p === '' || p.startsWith('/') || p.includes('\\') || p.includes('\0')) return false;
  return p.split('/').every((c) => c !== '' && c !== '.' && c !== '..');
}

function fail(file: string, message: string): never {
  throw new OciError('LAYOUT', `tar ${file}: ${message}`);
}

const roundUp = (n: number): number => Math.ceil(n / BLOCK) * BLOCK;

function isZero(b: Buffer): boolean {
  for (const byte of b) if (byte !== 0) return false;
  return true;
}

/** Names must be UTF-8: lossy decoding could make two different stored names look alike. */
function decode(file: string, at: number, bytes: Buffer): string {
  try {
    return utf8.decode(bytes);
  } catch {
    return fail(file, `header at byte ${at} holds a name that is not UTF-8`);
  }
}

/** A string field up to its first NUL. */
function str(file: string, at: number, b: Buffer, start = 0, len = b.length): string {
  const end = b.indexOf(0, start);
  return decode(file, at, b.subarray(start, end === -1 || end > start + len ? start + len : end));
}

/** Octal (leading spaces, NUL/space-terminated) or GNU base-256 (first byte 0x80 or 0xff). Empty → undefined. */
function numeric(file: string, at: number, h: Buffer, start: number, len: number, what: string): bigint | undefined {
  const first = h[start];
  if (first === 0x80 || first === 0xff) {
    let v = 0n;
    for (let i = start; i < start + len; i++) v = (v << 8n) | BigInt(h[i]!);
    // 0x80: the flag bit sits above the value; 0xff: two's complement of the whole field.
    return first === 0x80 ? v - (0x80n << BigInt(8 * (len - 1))) : v - (1n << BigInt(8 * len));
  }
  let i = start;
  const end = start + len;
  while (i < end && h[i] === 0x20) i++;
  let digits = '';
  for (; i < end && h[i] !== 0 && h[i] !== 0x20; i++) {
    const c = h[i]!;
    if (c < 0x30 || c > 0x37) return fail(file, `header at byte ${at} has a malformed ${what} field`);
    digits += String.fromCharCode(c);
  }
  return digits === '' ? undefined : BigInt(`0o${digits}`);
}

function checksumOk(file: string, at: number, h: Buffer): boolean {
  let unsigned = 0;
  let signed = 0; // some historic tars summed signed chars; GNU tar accepts either
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : h[i]!;
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  const stored = numeric(file, at, h, 148, 8, 'checksum');
  return stored !== undefined && (stored === BigInt(unsigned) || stored === BigInt(signed));
}

/** Pax records: `<len> <key>=<value>\n`, len counting the whole record in bytes. Later keys win. */
function parsePax(file: string, at: number, body: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  while (i < body.length) {
    if (body[i] === 0 && isZero(body.subarray(i))) break; // tolerate NUL padding after the records
    const space = body.indexOf(0x20, i);
    const lenText = space === -1 ? '' : body.toString('latin1', i, space);
    const len = /^[1-9][0-9]{0,8}$/.test(lenText) ? Number(lenText) : NaN;
    if (!(len > 0) || i + len > body.length || body[i + len - 1] !== 0x0a) {
      return fail(file, `malformed pax record in the extended header at byte ${at}`);
    }
    const record = decode(file, at, body.subarray(space + 1, i + len - 1));
    const eq = record.indexOf('=');
    if (eq <= 0) return fail(file, `malformed pax record in the extended header at byte ${at}`);
    // An empty value unsets the keyword: the header field applies again.
    if (eq === record.length - 1) out.delete(record.slice(0, eq));
    else out.set(record.slice(0, eq), record.slice(eq + 1));
    i += len;
  }
  return out;
}

function toSize(file: string, at: number, v: bigint | undefined, what: string): number {
  if (v === undefined || v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) {
    return fail(file, `header at byte ${at} has an invalid ${what}`);
  }
  return Number(v);
}

function normalise(p: string, isDir: boolean): string {
  if (isDir) p = p.replace(/(.)\/+$/, '$1');
  while (p.startsWith('./')) p = p.slice(2);
  return p === '.' ? '' : p;
}

/** Up to `len` bytes at byte `pos` (fewer only at the end of the file): reads may return short. */
export async function readAt(fh: FileHandle, pos: number, len: number): Promise<Buffer> {
  const buf = Buffer.alloc(len);
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(buf, got, len - got, pos + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got === len ? buf : buf.subarray(0, got);
}

/** Indexes every entry of an uncompressed tar without reading file contents. */
export async function scanTar(file: string): Promise<TarIndex> {
  const fh = await open(file, 'r');
  try {
    const fileSize = (await fh.stat()).size;
    const entries: TarEntry[] = [];
    // Metadata from pax 'x' and GNU 'L'/'K' headers, applied to the next real entry.
    let pax = new Map<string, string>();
    let longName: string | undefined;
    let longLink: string | undefined;
    let metaAt = -1; // offset of the first pending metadata header
    let pos = 0;
    for (;;) {
      if (pos >= fileSize) {
        fail(file, `missing end-of-archive blocks: the archive ends at byte ${fileSize}, expected two zero blocks at byte ${pos}`);
      }
      const h = await readAt(fh, pos, BLOCK);
      if (h.length < BLOCK) fail(file, `truncated header at byte ${pos} (the file ends at byte ${fileSize})`);
      if (isZero(h)) {
        if (metaAt >= 0) fail(file, `extended header at byte ${metaAt} is followed by the end of the archive at byte ${pos}`);
        const h2 = await readAt(fh, pos + BLOCK, BLOCK);
        if (h2.length < BLOCK) fail(file, `missing second end-of-archive block at byte ${pos + BLOCK}`);
        if (!isZero(h2)) fail(file, `lone zero block at byte ${pos} followed by more data`);
        return { entries, endOffset: pos, fileSize };
      }
      if (!checksumOk(file, pos, h)) fail(file, `bad header checksum at byte ${pos}`);

      const typeflag = String.fromCharCode(h[156]!);
      const ownSize = toSize(file, pos, numeric(file, pos, h, 124, 12, 'size'), 'size');
      const isMeta = typeflag === 'x' || typeflag === 'g' || typeflag === 'L' || typeflag === 'K';
      const paxSize = isMeta ? undefined : pax.get('size');
      const size = paxSize === undefined ? ownSize : toSize(file, pos, /^[0-9]+$/.test(paxSize) ? BigInt(paxSize) : undefined, 'pax size');

      let offset = pos + BLOCK;
      if (typeflag === 'S' && h[482] !== 0) {
        // Old GNU sparse: extension blocks of sparse map follow the header, each flagging the next at byte 504.
        for (let more = true; more; offset += BLOCK) {
          const ext = await readAt(fh, offset, BLOCK);
          if (ext.length < BLOCK) fail(file, `truncated sparse header at byte ${offset}`);
          more = ext[504] !== 0;
        }
      }
      if (offset + size > fileSize) {
        fail(file, `truncated archive: the ${size}-byte content at byte ${offset} runs past the end of the file (${fileSize} bytes)`);
      }

      if (isMeta) {
        if (size > MAX_META) fail(file, `extended header at byte ${pos} is too large (${size} bytes)`);
        const body = await readAt(fh, offset, size);
        if (typeflag !== 'g' && metaAt < 0) metaAt = pos;
        if (typeflag === 'x') {
          pax = new Map([...pax, ...parsePax(file, pos, body)]);
        } else if (typeflag === 'g') {
          // Globals that would change names or sizes of later entries are read differently by different tools.
          const g = parsePax(file, pos, body);
          for (const k of ['path', 'linkpath', 'size']) {
            if (g.has(k)) fail(file, `global pax header at byte ${pos} sets '${k}', which is not supported`);
          }
        } else if (typeflag === 'L') {
          longName = str(file, pos, body);
        } else {
          longLink = str(file, pos, body);
        }
        pos = offset + roundUp(size);
        continue;
      }

      // ustar ('ustar\0') splits long names into prefix/name; GNU ('ustar  ') uses those bytes for other fields.
      const ustar = h.toString('latin1', 257, 263) === 'ustar\0';
      let name = str(file, pos, h, 0, 100);
      const prefix = ustar ? str(file, pos, h, 345, 155) : '';
      if (prefix !== '') name = `${prefix}/${name}`;
      const rawPath = pax.get('path') ?? longName ?? name;
      let type = TYPES[typeflag] ?? 'other';
      if (type === 'file' && typeflag !== '7' && rawPath.endsWith('/')) type = 'directory'; // pre-POSIX directory
      if ([...pax.keys()].some((k) => k.startsWith('GNU.sparse.'))) type = 'other'; // stored bytes ≠ file bytes
      if (type !== 'file' && type !== 'other' && size !== 0) {
        fail(file, `${type} entry '${rawPath}' at byte ${pos} declares ${size} content bytes; tar readers disagree on skipping them`);
      }
      const entry: TarEntry = {
        path: normalise(rawPath, type === 'directory'),
        type,
        typeflag,
        size,
        offset,
        headerOffset: pos,
        mode: Number(numeric(file, pos, h, 100, 8, 'mode') ?? 0n) & 0o7777,
        mtime: paxTime(pax.get('mtime')) ?? Number(numeric(file, pos, h, 136, 12, 'mtime') ?? 0n),
      };
      if (type === 'symlink' || type === 'hardlink') {
        const link = pax.get('linkpath') ?? longLink ?? str(file, pos, h, 157, 100);
        entry.linkname = type === 'hardlink' ? normalise(link, false) : link;
      }
      entries.push(entry);
      pax = new Map();
      longName = undefined;
      longLink = undefined;
      metaAt = -1;
      pos = offset + roundUp(size);
    }
  } finally {
    await fh.close();
  }
}

/** Pax mtime is decimal seconds, possibly fractional: keep whole seconds. */
function paxTime(v: string | undefined): number | undefined {
  return v !== undefined && /^-?[0-9]+(\.[0-9]*)?$/.test(v) ? Math.floor(Number(v)) : undefined;
}
