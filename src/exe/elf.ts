/**
 * ELF notes, the one piece of ELF the single executable needs (x86-64 Linux, little-endian).
 *
 * Node finds a single-executable blob as a note named NODE_SEA_BLOB in a PT_NOTE segment of the
 * running program (postject's postject_find_resource walks the loaded program headers, so the
 * note must also be inside a PT_LOAD). `appendNoteSegment` adds such a segment at the end of the
 * file; `readElfNotes` lists the notes of a file without running it, so `bundle` can tell what an
 * executable is before it carries it.
 *
 * There is no spare slot in a linker's program header table, and moving the table would need
 * every address in the file shifted. Instead the two headers the new segment needs come from
 * PT_PHDR (only used to find the load bias of a position-independent program, which is why a
 * fixed-address ET_EXEC is required) and the existing PT_NOTE, whose notes are copied into the
 * new segment first, so every note stays visible.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { readAt } from '../tar/index.ts';
import { writeAll } from '../util/write-all.ts';
import { CodedError } from '../util/errors.ts';

export class ElfError extends CodedError<'ELF'> {}

const PT_LOAD = 1;
const PT_NOTE = 4;
const PT_PHDR = 6;
const PF_R = 4;
const ET_EXEC = 2;
const EM_X86_64 = 62;
const EHDR_SIZE = 64;
const PHDR_SIZE = 56;
const PAGE = 0x1000;
/** Descriptions up to this size are read into memory; larger ones (the blob) are only located. */
const MAX_DESC_READ = 1 << 16;

interface ProgramHeader {
  type: number;
  flags: number;
  offset: number;
  vaddr: number;
  paddr: number;
  filesz: number;
  memsz: number;
  align: number;
}

export interface ElfNote {
  name: string;
  type: number;
  /** Byte offset of the description in the file, and its size. */
  descOffset: number;
  descSize: number;
  /** The description, when it is at most 64 KiB. */
  desc?: Buffer;
}

export interface NewNote {
  name: string;
  type: number;
  desc: Uint8Array;
}

const align = (n: number, to: number): number => Math.ceil(n / to) * to;
const u64 = (b: Buffer, at: number): number => {
  const v = b.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ElfError('ELF', `a 64-bit field at ${at} is out of range`);
  return Number(v);
};

interface Headers {
  /** ET_EXEC: loaded at the addresses it names. */
  fixed: boolean;
  phoff: number;
  phnum: number;
  phdrs: ProgramHeader[];
}

async function readHeaders(fh: FileHandle, file: string): Promise<Headers> {
  const e = await readAt(fh, 0, EHDR_SIZE);
  if (e.length < EHDR_SIZE || e.readUInt32BE(0) !== 0x7f454c46) throw new ElfError('ELF', `${file} is not an ELF executable`);
  if (e[4] !== 2 || e[5] !== 1 || e.readUInt16LE(18) !== EM_X86_64) throw new ElfError('ELF', `${file} is not a 64-bit little-endian x86-64 ELF file`);
  if (e.readUInt16LE(54) !== PHDR_SIZE) throw new ElfError('ELF', `${file} has program headers of an unexpected size`);
  const phoff = u64(e, 32);
  const phnum = e.readUInt16LE(56);
  const table = await readAt(fh, phoff, phnum * PHDR_SIZE);
  if (table.length !== phnum * PHDR_SIZE) throw new ElfError('ELF', `${file} ends inside its program header table`);
  const phdrs: ProgramHeader[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = i * PHDR_SIZE;
    phdrs.push({
      type: table.readUInt32LE(at),
      flags: table.readUInt32LE(at + 4),
      offset: u64(table, at + 8),
      vaddr: u64(table, at + 16),
      paddr: u64(table, at + 24),
      filesz: u64(table, at + 32),
      memsz: u64(table, at + 40),
      align: u64(table, at + 48),
    });
  }
  return { fixed: e.readUInt16LE(16) === ET_EXEC, phoff, phnum, phdrs };
}

/** The notes in every PT_NOTE segment of `file`, in order. */
export async function readElfNotes(file: string): Promise<ElfNote[]> {
  const fh = await open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    const { phdrs } = await readHeaders(fh, file);
    const notes: ElfNote[] = [];
    for (const ph of phdrs.filter((p) => p.type === PT_NOTE)) {
      const end = ph.offset + ph.filesz;
      if (end > size) throw new ElfError('ELF', `${file} ends inside a note segment`);
      for (let pos = ph.offset; pos + 12 <= end; ) {
        const h = await readAt(fh, pos, 12);
        const namesz = h.readUInt32LE(0);
        const descsz = h.readUInt32LE(4);
        const descOffset = pos + 12 + align(namesz, 4);
        if (descOffset + descsz > end) throw new ElfError('ELF', `${file} has a note running past its segment at byte ${pos}`);
        const name = (await readAt(fh, pos + 12, namesz)).toString('latin1').replace(/\0+$/, '');
        notes.push({ name, type: h.readUInt32LE(8), descOffset, descSize: descsz, ...(descsz <= MAX_DESC_READ ? { desc: await readAt(fh, descOffset, descsz) } : {}) });
        pos = descOffset + align(descsz, 4);
      }
    }
    return notes;
  } finally {
    await fh.close();
  }
}

function encodeNote(n: NewNote): Buffer {
  const name = Buffer.from(`${n.name}\0`, 'latin1');
  const out = Buffer.alloc(12 + align(name.length, 4) + align(n.desc.length, 4));
  out.writeUInt32LE(name.length, 0);
  out.writeUInt32LE(n.desc.length, 4);
  out.writeUInt32LE(n.type, 8);
  name.copy(out, 12);
  out.set(n.desc, 12 + align(name.length, 4));
  return out;
}

function encodeHeader(p: ProgramHeader): Buffer {
  const b = Buffer.alloc(PHDR_SIZE);
  b.writeUInt32LE(p.type, 0);
  b.writeUInt32LE(p.flags, 4);
  [p.offset, p.vaddr, p.paddr, p.filesz, p.memsz, p.align].forEach((v, i) => b.writeBigUInt64LE(BigInt(v), 8 + i * 8));
  return b;
}

/**
 * Appends one loaded, read-only segment holding the file's existing notes plus `notes`, and points
 * the program headers at it (in place: `file` is the caller's own copy).
 */
export async function appendNoteSegment(file: string, notes: NewNote[]): Promise<void> {
  const fh = await open(file, 'r+');
  try {
    const size = (await fh.stat()).size;
    const { fixed, phoff, phnum, phdrs } = await readHeaders(fh, file);
    if (!fixed) throw new ElfError('ELF', `${file} is position-independent; only a fixed-address (ET_EXEC) Node.js binary can take the note segment`);
    const phdrAt = phdrs.findIndex((p) => p.type === PT_PHDR);
    const noteAt = phdrs.findIndex((p) => p.type === PT_NOTE);
    if (phdrAt < 0 || noteAt < 0 || phdrs.filter((p) => p.type === PT_NOTE).length !== 1) {
      throw new ElfError('ELF', `${file} lacks the PT_PHDR and single PT_NOTE headers whose slots the note segment reuses`);
    }
    const old = phdrs[noteAt]!;
    const oldNotes = await readAt(fh, old.offset, old.filesz);
    if (oldNotes.length !== old.filesz) throw new ElfError('ELF', `${file} ends inside its note segment`);
    const body = Buffer.concat([oldNotes, Buffer.alloc(align(oldNotes.length, 4) - oldNotes.length), ...notes.map(encodeNote)]);

    const loads = phdrs.filter((p) => p.type === PT_LOAD);
    const offset = align(size, PAGE);
    // Above everything mapped (including .bss); offset and address agree modulo the page size.
    const vaddr = align(Math.max(...loads.map((p) => p.vaddr + p.memsz)), PAGE) + PAGE;
    const load: ProgramHeader = { type: PT_LOAD, flags: PF_R, offset, vaddr, paddr: vaddr, filesz: body.length, memsz: body.length, align: PAGE };
    const note: ProgramHeader = { type: PT_NOTE, flags: PF_R, offset, vaddr, paddr: vaddr, filesz: body.length, memsz: body.length, align: 4 };

    // Same count: PT_PHDR goes, the new PT_LOAD follows the last one (loads stay in address order),
    // and the new PT_NOTE takes the old one's place.
    const lastLoad = phdrs.findLastIndex((p) => p.type === PT_LOAD);
    const table: ProgramHeader[] = [];
    phdrs.forEach((p, i) => {
      if (i === phdrAt) return;
      table.push(i === noteAt ? note : p);
      if (i === lastLoad) table.push(load);
    });
    if (table.length !== phnum) throw new ElfError('ELF', 'program header rewrite lost an entry');

    await writeAll(fh, Buffer.alloc(offset - size), size);
    await writeAll(fh, body, offset);
    await writeAll(fh, Buffer.concat(table.map(encodeHeader)), phoff);
  } finally {
    await fh.close();
  }
}
