// Shared by the benchmark scripts: size parsing, running a command under GNU time, medians.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

/** `2GiB`, `256MiB`, `1.5GB` or a byte count. */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB)?$/i.exec(text.trim());
  const units: Record<string, number> = { b: 1, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, kb: 1e3, mb: 1e6, gb: 1e9 };
  const n = m ? Math.round(Number(m[1]) * units[(m[2] ?? 'b').toLowerCase()]!) : NaN;
  if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`--size ${text}: expected e.g. 2GiB, 256MiB or a byte count`);
  return n;
}

/** npm passes a leading `--` so Node does not take our flags for its own. */
export const scriptArgs = (): string[] => {
  const argv = process.argv.slice(2);
  return argv[0] === '--' ? argv.slice(1) : argv;
};

export interface Timed {
  seconds: number;
  maxRssKiB: number;
  stdout: string;
}

let current: ChildProcess | undefined;
/** The measured child still running, so a signal handler can end it. */
export const runningChild = () => current;

/**
 * Runs `cmd` under `/usr/bin/time -f '%e %M' -o FILE`: GNU time's own report goes to a file, not
 * mixed with the program's stderr (kept only as a tail for error messages).
 * Async on purpose: the bed's token issuer lives in this process and must keep answering.
 */
export async function timed(scratch: string, label: string, cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Promise<Timed> {
  const timeFile = join(scratch, `time-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}.txt`);
  const proc = spawn('/usr/bin/time', ['-o', timeFile, '-f', '%e %M', cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
  current = proc;
  let stdout = '';
  let stderrTail = '';
  proc.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (stderrTail = (stderrTail + d.toString()).slice(-4000)));
  const code = await new Promise<number | null>((res, rej) => proc.on('error', rej).on('close', (c) => res(c)));
  current = undefined;
  if (code !== 0) throw new Error(`${label} exited ${code}:\n${stderrTail.trim()}`);
  // GNU time writes "Command exited with non-zero status" lines first on failure; the figures are last.
  const [secs, kib] = (await readFile(timeFile, 'utf8')).trim().split('\n').at(-1)!.split(' ').map(Number);
  if (!Number.isFinite(secs) || !Number.isFinite(kib)) throw new Error(`could not read GNU time's output in ${timeFile}`);
  return { seconds: secs!, maxRssKiB: kib!, stdout };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}
