// The ELF note segment the executable is built with, and how `bundle` recognises an installer.
// readelf and the Node runtime itself are the oracles: the rewritten binary must still run.
import { execFile } from 'node:child_process';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadInstaller } from '../../src/bundle/installer.ts';
import { appendNoteSegment, readElfNotes } from '../../src/exe/elf.ts';
import { run } from '../testbed/run.ts';
import { rejection } from './helpers.ts';

const execFileP = promisify(execFile);
const RUNTIME = join(import.meta.dirname, '..', '..', 'node_modules', 'node', 'bin', 'node');
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'airgap-exe-'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

/** `readelf -lW` program headers as [type, offset, vaddr, filesz, flags]. */
async function segments(file: string): Promise<string[][]> {
  const out = await run('readelf', ['-lW', file]);
  return [...out.matchAll(/^\s+([A-Z_]+)\s+(0x[0-9a-f]+) (0x[0-9a-f]+) 0x[0-9a-f]+ (0x[0-9a-f]+) 0x[0-9a-f]+ ([RWE ]+?)\s+0x[0-9a-f]+$/gm)].map((m) => m.slice(1, 6).map((s) => s!.trim()));
}

describe('ELF notes', () => {
  it('reads the runtime\'s own notes as readelf does', async () => {
    const notes = await readElfNotes(RUNTIME);
    const buildId = /Build ID: ([0-9a-f]+)/.exec(await run('readelf', ['-n', RUNTIME]))![1];
    expect(notes.map((n) => [n.name, n.type])).toEqual([['GNU', 3], ['GNU', 1]]);
    expect(notes[0]!.desc!.toString('hex')).toBe(buildId);
  });

  it('adds a loaded note segment that keeps the old notes, and the binary still runs', async () => {
    const file = join(dir, 'node-with-notes');
    await copyFile(RUNTIME, file);
    const big = Buffer.alloc(200_001, 7); // not a multiple of 4, larger than what is read into memory
    await appendNoteSegment(file, [{ name: 'NODE_SEA_BLOB', type: 0, desc: big }, { name: 'cartesia-airgap', type: 1, desc: Buffer.from('{"x":1}') }]);

    const notes = await readElfNotes(file);
    expect(notes.map((n) => [n.name, n.type, n.descSize])).toEqual([['GNU', 3, 20], ['GNU', 1, 16], ['NODE_SEA_BLOB', 0, big.length], ['cartesia-airgap', 1, 7]]);
    expect(notes[2]!.desc).toBeUndefined();
    expect(notes[3]!.desc!.toString()).toBe('{"x":1}');

    const before = await segments(RUNTIME);
    const after = await segments(file);
    expect(after).toHaveLength(before.length);
    expect(after.map((s) => s[0])).not.toContain('PHDR');
    const note = after.filter((s) => s[0] === 'NOTE');
    const loads = after.filter((s) => s[0] === 'LOAD');
    expect(note).toHaveLength(1);
    // The note segment is the last load, read-only, at an address above everything else.
    expect(loads.at(-1)).toEqual(['LOAD', note[0]![1], note[0]![2], note[0]![3], 'R']);
    expect(loads.slice(0, -1)).toEqual(before.filter((s) => s[0] === 'LOAD'));
    const { stdout } = await execFileP(file, ['-p', 'process.version']);
    expect(stdout.trim()).toBe((await execFileP(RUNTIME, ['--version'])).stdout.trim());
  });

  it('refuses a position-independent binary and a file that is not ELF', async () => {
    const pie = join(dir, 'true');
    await copyFile('/bin/true', pie);
    expect((await rejection(appendNoteSegment(pie, []))).message).toMatch(/is position-independent; only a fixed-address \(ET_EXEC\)/);
    await writeFile(join(dir, 'text'), 'hello\n');
    expect((await rejection(readElfNotes(join(dir, 'text')))).message).toBe(`${join(dir, 'text')} is not an ELF executable`);
  });
});

describe('loadInstaller', () => {
  it('names the way out when the default executable was never built', async () => {
    const err = await rejection(loadInstaller(join(dir, 'build', 'cartesia-airgap'), false));
    expect(err.message).toBe(`no installer executable at ${join(dir, 'build', 'cartesia-airgap')}; build it with \`npm run build:exe\`, name one with --installer FILE, or leave it out with --no-installer`);
  });

  it('refuses a text file, the bare runtime, and an executable that reads an older bundle format', async () => {
    const text = join(dir, 'not-elf');
    await writeFile(text, '#!/bin/sh\n');
    expect((await rejection(loadInstaller(text, true))).message).toMatch(/^the installer .*not-elf is not a cartesia-airgap executable \(.* is not an ELF executable\)/);
    expect((await rejection(loadInstaller(RUNTIME, true))).message).toMatch(/^the installer .* is not a cartesia-airgap executable \(no build note\)/);

    const old = join(dir, 'old-format');
    await copyFile(RUNTIME, old);
    const info = { name: 'cartesia-airgap', version: '0.0.9', node: 'v24.21.0', platform: 'linux-x64', formatVersion: 0 };
    await appendNoteSegment(old, [{ name: 'NODE_SEA_BLOB', type: 0, desc: Buffer.from('blob') }, { name: 'cartesia-airgap', type: 1, desc: Buffer.from(JSON.stringify(info)) }]);
    expect((await rejection(loadInstaller(old, true))).message).toBe(`the installer ${old} (0.0.9) reads bundle format 0, but this bundle is format 1; build a new one with \`npm run build:exe\``);
  });
});
