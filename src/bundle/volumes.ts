/**
 * Splitting a bundle into volumes (DESIGN.md §3, `bundle --split-size`): where every entry goes,
 * decided before a byte is written, because the bundle.json at the head of every volume lists it.
 *
 * Every volume is a tar of its own: bundle.json, its signature, the volume's SHA256SUMS, then its
 * entries. An entry never straddles volumes unless it is larger than a volume; then it is cut into
 * pieces stored as `parts/<entry path>/001`, `002`, … (`cat` them in order to rejoin by hand),
 * filling the last volume and as many new ones as it needs. Whole entries go, in bundle order, to
 * the first volume with room (gaps left by a large entry are filled by later small ones). The plan
 * is a pure function of the sizes, so the same inputs always give the same volumes.
 */
import { basename, dirname, join } from 'node:path';
import { BLOCK, END_OF_ARCHIVE, tarHeaderBytes } from '../tar/header.ts';
import { CodedError } from '../util/errors.ts';
import { SUMS_PATH } from './manifest.ts';

/** The two zero blocks that end a tar (nothing more: no padding to a record size). */
const END = END_OF_ARCHIVE.length;
const roundUp = (n: number): number => Math.ceil(n / BLOCK) * BLOCK;
/** A coreutils SHA256SUMS line: `<64 hex>  <path>\n`. */
const sumsLine = (path: string): number => 64 + 2 + Buffer.byteLength(path) + 1;

export const PARTS_DIR = 'parts/';

/** The name of piece `n` (1-based) of `path`, numbered with `width` digits. */
export const piecePath = (path: string, n: number, width: number): string => `${PARTS_DIR}${path}/${String(n).padStart(width, '0')}`;

/** Volume files: `NAME.tar` → `NAME.vol001.tar`, … (three digits, more past 999 volumes). */
export function volumeFile(output: string, number: number, count: number): string {
  const base = basename(output).replace(/\.tar$/, '');
  return join(dirname(output), `${base}.vol${String(number).padStart(Math.max(3, String(count).length), '0')}.tar`);
}

/** `NAME.vol003.tar` → { name: 'NAME', number: 3, digits: 3 }. */
export function parseVolumeFile(file: string): { name: string; number: number; digits: number } | undefined {
  const m = /^(.+)\.vol([0-9]{3,})\.tar$/.exec(basename(file));
  return m ? { name: m[1]!, number: Number(m[2]), digits: m[2]!.length } : undefined;
}

export interface PlannedEntry {
  /** The tar entry's name: the entry's own path, or its piece's. */
  path: string;
  size: number;
  /** Index of the data entry this stores (whole, or a piece of it). */
  entry: number;
  /** Set on a piece: where in the entry it starts. */
  offset?: number;
}

export interface PlannedVolume {
  /** Tar entries after bundle.json, its signature and SHA256SUMS, in tar order. */
  entries: PlannedEntry[];
  /** The volume file's exact size in bytes, with bundle.json taking its reserved room. */
  bytes: number;
}

export interface PlanOptions {
  /** No volume may be larger (bytes). */
  limit: number;
  /** Data entries in bundle order. */
  entries: readonly { path: string; size: number }[];
  /** What every volume spends before SHA256SUMS: bundle.json's header and reserved room, and the signature's. */
  headBytes: number;
}

/** A volume being filled: its tar size follows from what it holds. */
class Filling {
  readonly entries: PlannedEntry[] = [];
  sumsLen = 0;
  data = 0;
  readonly head: number;
  constructor(head: number) {
    this.head = head;
  }

  get bytes(): number {
    return this.head + tarHeaderBytes(SUMS_PATH) + roundUp(this.sumsLen) + this.data + END;
  }

  /** Bytes that adding an entry named `path` with `size` bytes would cost, its SHA256SUMS line included. */
  cost(path: string, size: number): number {
    return tarHeaderBytes(path) + roundUp(size) + roundUp(this.sumsLen + sumsLine(path)) - roundUp(this.sumsLen);
  }

  add(e: PlannedEntry): void {
    this.data += tarHeaderBytes(e.path) + roundUp(e.size);
    this.sumsLen += sumsLine(e.path);
    this.entries.push(e);
  }

  clone(): Filling {
    const c = new Filling(this.head);
    c.entries.push(...this.entries);
    c.sumsLen = this.sumsLen;
    c.data = this.data;
    return c;
  }
}

export function planVolumes(o: PlanOptions): PlannedVolume[] {
  const volumes: Filling[] = [];
  const empty = new Filling(o.headBytes);
  for (const [i, e] of o.entries.entries()) {
    if (empty.bytes + empty.cost(e.path, e.size) <= o.limit) {
      let v = volumes.find((x) => x.bytes + x.cost(e.path, e.size) <= o.limit);
      if (!v) volumes.push((v = new Filling(o.headBytes)));
      v.add({ path: e.path, size: e.size, entry: i });
      continue;
    }
    // Larger than a volume: pieces, numbered with as few digits as they need (at least three).
    for (let width = 3; ; width++) {
      const placed = placePieces(o, volumes, i, width);
      if (placed) {
        volumes.splice(Math.max(0, volumes.length - 1), 1, ...placed);
        break;
      }
    }
  }
  return volumes.map((v) => ({ entries: v.entries, bytes: v.bytes }));
}

/**
 * Cuts entry `i` into pieces: the first fills the last volume (when it has a block to spare), the
 * others new volumes. Returns the last volume and the new ones, or undefined when more than
 * `width` digits would be needed to number the pieces.
 */
function placePieces(o: PlanOptions, volumes: Filling[], i: number, width: number): Filling[] | undefined {
  const e = o.entries[i]!;
  const out = volumes.length > 0 ? [volumes.at(-1)!.clone()] : [new Filling(o.headBytes)];
  let offset = 0;
  for (let n = 1; offset < e.size || n === 1; n++) {
    if (n >= 10 ** width) return undefined;
    const name = piecePath(e.path, n, width);
    let v = out.at(-1)!;
    let room = Math.floor((o.limit - v.bytes - v.cost(name, 0)) / BLOCK) * BLOCK;
    if (room < BLOCK) {
      v = new Filling(o.headBytes);
      room = Math.floor((o.limit - v.bytes - v.cost(name, 0)) / BLOCK) * BLOCK;
      if (room < BLOCK) throw tooSmall(o, v.bytes);
      out.push(v);
    }
    const size = Math.min(room, e.size - offset);
    v.add({ path: name, size, entry: i, offset });
    offset += size;
  }
  return out;
}

function tooSmall(o: PlanOptions, emptyBytes: number): CodedError {
  return new CodedError('BAD_USAGE', `--split-size ${o.limit} bytes is too small: every volume starts with bundle.json, its signature and a SHA256SUMS (${emptyBytes} bytes for this bundle) before any content; give a size many times larger`);
}
