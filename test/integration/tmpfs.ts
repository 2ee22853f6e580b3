/** Small tmpfs mounts for the disk-full tests (root only); every mount is undone by the caller. */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmdirSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Why tmpfs cannot be mounted here, or undefined when it can (tried once, on a scratch dir). */
export function tmpfsUnavailable(): string | undefined {
  if (process.platform !== 'linux') return `tmpfs mounts need Linux (this is ${process.platform})`;
  if (process.getuid?.() !== 0) return 'mounting a tmpfs needs root, and this runs as another user';
  const dir = mkdtempSync(join(tmpdir(), 'tmpfs-probe-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', dir], { stdio: 'pipe' });
    execFileSync('umount', [dir], { stdio: 'pipe' });
    return undefined;
  } catch (err) {
    return `mount -t tmpfs is not permitted here: ${String((err as { stderr?: Buffer }).stderr ?? (err as Error).message).trim()}`;
  } finally {
    rmdirSync(dir);
  }
}

export function mountTmpfs(dir: string, size: string): void {
  mkdirSync(dir, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'pipe' });
}

/** Grows (or shrinks) a mounted tmpfs in place; its files stay. */
export const resizeTmpfs = (dir: string, size: string): void => void execFileSync('mount', ['-o', `remount,size=${size}`, dir], { stdio: 'pipe' });

export function unmount(dir: string): void {
  try {
    execFileSync('umount', [dir], { stdio: 'pipe' });
  } catch {
    // not mounted (the test failed before mounting): nothing to undo
  }
}

export const freeBytes = (dir: string): number => {
  const s = statfsSync(dir);
  return s.bavail * s.bsize;
};

/** Takes all but `keep` bytes of the file system's free space, so the next writes run out. */
export function fill(dir: string, keep: number): string {
  const file = join(dir, 'filler');
  writeFileSync(file, Buffer.alloc(Math.max(0, freeBytes(dir) - keep)));
  return file;
}
