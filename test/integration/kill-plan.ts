/**
 * Seeded kill points for the interruption tests: where in a command's run to send SIGKILL, and a
 * runner that does it. A point names a phase (found by the phase's start line on stderr, which the
 * CLI prints as plain lines when stderr is not a terminal) and a trigger inside it: a fraction of
 * that phase's duration in a measured clean run, or the n-th new file in a directory the command
 * writes (inotify, so the kill lands right as the file appears).
 */
import { watch, type FSWatcher } from 'node:fs';
import { startCli, type CliResult } from './cli.ts';

/** The bed's seeded PRNG (mulberry32), so a seed gives the same kill points on every machine. */
export { seeded as prng } from '../testbed/fault-proxy.ts';

/** A stderr line without colour codes (vitest's environment turns colours on in children). */
// eslint-disable-next-line no-control-regex
export const plain = (line: string): string => line.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');

export interface Phase {
  name: string;
  /** The phase's start line (its first title, before the task renames itself on completion). */
  start: RegExp;
}

export type Trigger =
  | { kind: 'time'; fraction: number }
  | { kind: 'file'; dir: string; nth: number; what: string; match?: RegExp };

export interface KillPoint {
  phase: string;
  trigger: Trigger;
}

export const describeTrigger = (t: Trigger): string =>
  t.kind === 'time' ? `${Math.round(t.fraction * 100)} % into the phase` : `as ${t.nth === 1 ? 'the first' : `the ${ordinal(t.nth)}`} ${t.what} appears`;

const ordinal = (n: number) => `${n}${n % 100 >= 11 && n % 100 <= 13 ? 'th' : (['th', 'st', 'nd', 'rd'][n % 10] ?? 'th')}`;

export interface Timed {
  result: CliResult;
  /** Milliseconds each phase took (the last one until the process ended). */
  durations: Map<string, number>;
}

/** Runs to the end, timing each phase by its start line. */
export async function timePhases(args: string[], env: NodeJS.ProcessEnv, phases: Phase[]): Promise<Timed> {
  const starts: [string, number][] = [];
  const run = startCli(args, {
    env,
    onStderrLine: (line) => {
      const p = phases.find((x) => x.start.test(plain(line)));
      if (p) starts.push([p.name, performance.now()]);
    },
  });
  const result = await run.done;
  const end = performance.now();
  const durations = new Map<string, number>();
  starts.forEach(([name, t], i) => durations.set(name, (starts[i + 1]?.[1] ?? end) - t));
  return { result, durations };
}

export interface KilledRun {
  result: CliResult;
  /** False when the run ended before the trigger fired. */
  killed: boolean;
  /** The phase whose start line was the last one seen when SIGKILL was sent. */
  landed?: string;
}

/** Runs the command and sends SIGKILL at `point`; resolves when the process is gone. */
export async function runAndKill(args: string[], env: NodeJS.ProcessEnv, phases: Phase[], point: KillPoint, durations: Map<string, number>): Promise<KilledRun> {
  let current: string | undefined;
  let landed: string | undefined;
  let timer: NodeJS.Timeout | undefined;
  let watcher: FSWatcher | undefined;
  let armed = false;
  const run = startCli(args, {
    env,
    onStderrLine: (line, child) => {
      const p = phases.find((x) => x.start.test(plain(line)));
      if (!p) return;
      current = p.name;
      if (p.name !== point.phase || armed) return;
      armed = true;
      const kill = () => {
        if (landed !== undefined || child.exitCode !== null) return;
        landed = current;
        child.kill('SIGKILL');
      };
      const t = point.trigger;
      if (t.kind === 'time') {
        timer = setTimeout(kill, Math.round(t.fraction * (durations.get(p.name) ?? 0)));
      } else {
        const seen = new Set<string>();
        watcher = watch(t.dir, (_event, file) => {
          if (!file || seen.has(file) || (t.match && !t.match.test(file))) return;
          seen.add(file);
          if (seen.size >= t.nth) kill();
        });
      }
    },
  });
  try {
    const result = await run.done;
    return { result, killed: result.signal === 'SIGKILL', ...(landed !== undefined ? { landed } : {}) };
  } finally {
    clearTimeout(timer);
    watcher?.close();
  }
}

/**
 * A kill point whose kill did not happen where planned (the phase ended first, or the run did)
 * is tried again from a fresh start with the trigger pulled earlier, at most `tries` times.
 */
export function earlier(point: KillPoint): KillPoint {
  const t = point.trigger;
  return { ...point, trigger: t.kind === 'time' ? { ...t, fraction: t.fraction / 2 } : { ...t, nth: Math.max(1, Math.floor(t.nth / 2)) } };
}
