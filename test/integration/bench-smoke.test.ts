// The benchmark (scripts/bench.ts) is read, not tested, but it must keep running: this runs it at a
// tiny size, once, and checks its JSON report and printed table are whole. The figures themselves
// mean nothing at 8 MiB; only their shape is asserted. It starts its own test bed, as users run it.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const REPO = join(import.meta.dirname, '..', '..');
const SIZE = 8 * 2 ** 20;
let child: ChildProcess | undefined;
let dir: string | undefined;

afterAll(async () => {
  // On a timeout the bench is still running: SIGTERM makes it stop its bed and exit.
  if (child && child.exitCode === null && child.signalCode === null) {
    const gone = new Promise((r) => child!.once('close', r));
    child.kill('SIGTERM');
    await gone;
  }
  if (dir) await rm(dir, { recursive: true, force: true });
});

interface Report {
  date: string;
  sizeBytes: number;
  runs: number;
  machine: { cores: number; memoryBytes: number };
  ratios: Record<'bundle' | 'bundleDirect' | 'install' | 'verify', number>;
  noop: Record<'bundle' | 'bundleDirect' | 'install', number>;
  rssMiB: Record<'bundle' | 'bundleDirect' | 'install' | 'verify', number>;
  measurements: { install: { ours: { medianCpuSeconds: number; medianServerCpuSeconds: number; medianServerCpuByRole: Record<string, number>; samples: { serverCpuByRole: Record<string, number> }[] } } };
}

describe('npm run bench -- --size 8MiB --runs 1 --json FILE', () => {
  it('measures bundle, install and verify against the peers and writes a whole report', { timeout: 600_000 }, async () => {
    dir = await mkdtemp(join(tmpdir(), 'airgap-bench-smoke-'));
    const json = join(dir, 'bench.json');
    // What `npm run bench` runs after its build (integration tests run after `npm run build`),
    // with the `--` npm passes.
    const proc = spawn(process.execPath, [join(REPO, 'scripts', 'bench.ts'), '--', '--size', '8MiB', '--runs', '1', '--json', json], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    child = proc;
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const code = await new Promise<number | null>((resolve, reject) => proc.on('error', reject).on('close', (c) => resolve(c)));
    expect(code, stderr.slice(-4000)).toBe(0);

    const r = JSON.parse(await readFile(json, 'utf8')) as Report;
    expect(r.sizeBytes).toBeGreaterThan(SIZE * 0.5);
    expect(r.runs).toBe(1);
    for (const k of ['bundle', 'bundleDirect', 'install', 'verify'] as const) {
      expect(Number.isFinite(r.ratios[k]) && r.ratios[k] > 0, `ratios.${k} = ${r.ratios[k]}`).toBe(true);
    }
    for (const k of ['bundle', 'bundleDirect', 'install'] as const) {
      expect(Number.isFinite(r.noop[k]) && r.noop[k] >= 0, `noop.${k} = ${r.noop[k]}`).toBe(true);
      expect(r.rssMiB[k], `rssMiB.${k}`).toBeGreaterThan(0);
    }
    expect(r.machine.cores).toBeGreaterThanOrEqual(1);
    expect(r.machine.memoryBytes).toBeGreaterThan(0);
    expect(new Date(r.date).toISOString()).toBe(r.date);

    // Whose CPU the time went to: our own process, and each server (install loads the registry and S3).
    const install = r.measurements.install.ours;
    expect(install.medianCpuSeconds).toBeGreaterThan(0);
    expect(install.medianServerCpuByRole.registry).toBeGreaterThan(0);
    expect(install.medianServerCpuByRole.s3).toBeGreaterThan(0);
    expect(install.medianServerCpuSeconds).toBeCloseTo(Object.values(install.samples[0]!.serverCpuByRole).reduce((a, b) => a + b, 0), 1);

    // The table: name, seconds, MB/s, peak RSS MiB, own CPU seconds, server CPU seconds, by server.
    const rows = ['bundle: cartesia-airgap', 'bundle --direct: cartesia-airgap', 'bundle --direct again (no-op)', 'bundle: skopeo + @google-cloud/storage', 'install: cartesia-airgap', 'install: skopeo + @aws-sdk/lib-storage', 'verify: cartesia-airgap', 'verify: sha256sum', 'bundle again (no-op)', 'install again (no-op)'];
    for (const row of rows) {
      expect(stdout).toMatch(new RegExp(`^${row.replace(/[()+]/g, '\\$&')} +\\d+\\.\\d{2} +\\d+ +\\d+ +\\d+\\.\\d +\\d+\\.\\d  (idle|[a-z0-9]+ \\d+\\.\\d(, [a-z0-9]+ \\d+\\.\\d)*)$`, 'm'));
    }
    expect(stdout).toMatch(/^ratios: bundle [\d.]+ .*verify throughput [\d.]+ × sha256sum/m);
  });
});
