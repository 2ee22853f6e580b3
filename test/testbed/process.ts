import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

/** A server child started on 127.0.0.1 port 0, whose real port was read from its own log. */
export interface ServerProcess {
  name: string;
  pid: number;
  port: number;
  log: string[];
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
// Last resort: a test runner that exits without teardown must not leave servers behind.
process.once('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

export interface StartOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Matches the line that says the server listens; group 1 is the port. */
  ready: RegExp;
  timeoutMs?: number;
}

export function startProcess(name: string, cmd: string, args: string[], opts: StartOptions): Promise<ServerProcess> {
  const child = spawn(cmd, args, {
    cwd: opts.cwd,
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  const log: string[] = [];
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  void exited.then(() => live.delete(child));

  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const killer = setTimeout(() => child.kill('SIGKILL'), 5000);
    child.kill('SIGTERM');
    await exited;
    clearTimeout(killer);
  };

  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${name}: not ready after ${opts.timeoutMs ?? 30000} ms\n${log.slice(-20).join('\n')}`));
    }, opts.timeoutMs ?? 30000);
    const onExit = (code: number | null, signal: string | null) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code ?? signal}) before it was ready\n${log.slice(-20).join('\n')}`));
    };
    child.once('exit', onExit);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`${name}: cannot start ${cmd}: ${err.message}; run scripts/setup.sh`));
    });
    let done = false;
    const onLine = (line: string) => {
      if (log.length > 2000) log.shift();
      log.push(line);
      const m = done ? null : opts.ready.exec(line);
      if (m) {
        done = true;
        clearTimeout(timer);
        child.off('exit', onExit);
        resolve({ name, pid: child.pid!, port: Number(m[1]), log, stop });
      }
    };
    createInterface({ input: child.stdout! }).on('line', onLine);
    createInterface({ input: child.stderr! }).on('line', onLine);
  });
}
