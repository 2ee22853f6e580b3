import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const BIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'run.js');

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * The built CLI as users run it, in a child process on the pinned Node (process.execPath).
 * `onStderrLine` sees each stderr line as it comes, so a test can act mid-run (e.g. kill -9).
 */
export function startCli(args: string[], opts: { env?: NodeJS.ProcessEnv; onStderrLine?: (line: string, child: ChildProcess) => void } = {}): { child: ChildProcess; done: Promise<CliResult> } {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let partial = '';
  child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr!.on('data', (c: Buffer) => {
    stderr += c.toString();
    partial += c.toString();
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const l of lines) opts.onStderrLine?.(l, child);
  });
  const done = new Promise<CliResult>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  return { child, done };
}

export const runCli = (args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> => startCli(args, opts).done;

/** The stderr lines that are not NDJSON progress: what a person would read. */
export const errorLines = (r: CliResult): string[] => r.stderr.split('\n').filter((l) => l && !l.startsWith('{'));
