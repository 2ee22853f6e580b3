// Shared by the benchmark scripts: size parsing, running a command under GNU time, medians.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseSplitSize } from '../../src/bundle/split-size.ts';
import { startTestbed, type Testbed } from '../../test/testbed/testbed.ts';

/** `--size`: `2GiB`, `256MiB`, `1.5GB` or a byte count (the same parser as `bundle --split-size`). */
export const parseSize = (text: string): number => parseSplitSize(text, '--size');

/** npm passes a leading `--` so Node does not take our flags for its own. */
export const scriptArgs = (): string[] => {
  const argv = process.argv.slice(2);
  return argv[0] === '--' ? argv.slice(1) : argv;
};

export interface Timed {
  seconds: number;
  maxRssKiB: number;
  /** User + system CPU of the command (its threads included). */
  cpuSeconds: number;
  stdout: string;
}

/** The measured child still running, so a signal handler can end it. */
let current: ChildProcess | undefined;

/**
 * Runs `cmd` under `/usr/bin/time -f '%e %M %U %S' -o FILE`: GNU time's own report goes to a file, not
 * mixed with the program's stderr (kept only as a tail for error messages).
 * Async on purpose: the bed's token issuer lives in this process and must keep answering.
 */
export async function timed(scratch: string, label: string, cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Promise<Timed> {
  const timeFile = join(scratch, `time-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}.txt`);
  const proc = spawn('/usr/bin/time', ['-o', timeFile, '-f', '%e %M %U %S', cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
  current = proc;
  let stdout = '';
  let stderrTail = '';
  proc.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (stderrTail = (stderrTail + d.toString()).slice(-4000)));
  const code = await new Promise<number | null>((res, rej) => proc.on('error', rej).on('close', (c) => res(c)));
  current = undefined;
  if (code !== 0) throw new Error(`${label} exited ${code}:\n${stderrTail.trim()}`);
  // GNU time writes "Command exited with non-zero status" lines first on failure; the figures are last.
  const [secs, kib, user, sys] = (await readFile(timeFile, 'utf8')).trim().split('\n').at(-1)!.split(' ').map(Number);
  if (![secs, kib, user, sys].every(Number.isFinite)) throw new Error(`could not read GNU time's output in ${timeFile}`);
  return { seconds: secs!, maxRssKiB: kib!, cpuSeconds: user! + sys!, stdout };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/**
 * Starts the loopback test bed, runs `body`, and stops the bed once whoever asks first (normal end,
 * error or signal; its root holds every temp dir), killing a measurement still running. Exits the
 * process: 0, 1 after printing the error, 130 on a signal.
 */
export async function withTestbed(name: string, body: (bed: Testbed) => Promise<void>): Promise<never> {
  let bed: Testbed | undefined;
  let stopping: Promise<void> | undefined;
  const cleanup = () => (stopping ??= (async () => {
    current?.kill('SIGTERM');
    await bed?.stop();
  })());
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      console.error(`${name}: ${sig}, stopping the test bed`);
      void cleanup().finally(() => process.exit(130));
    });
  }
  let failed = false;
  try {
    bed = await startTestbed();
    await body(bed);
  } catch (err) {
    console.error(`${name}: ${(err as Error).message}`);
    failed = true;
  } finally {
    await cleanup();
  }
  process.exit(failed ? 1 : 0);
}
