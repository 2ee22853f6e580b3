// `node scripts/bench-writer.ts [--size 1GiB] [--dir /tmp] [--runs 3]`: the bundle writer's write
// phase alone. Writes a bundle-like tar (a few large layers, many small files, some long names)
// from page-cached files through writeTarFile and prints MiB/s, CPU time (all threads) and peak RSS
// per run. Run 1 is what `bundle` sees (one tar per process). The output dir decides what the fsync
// at the end costs (a tmpfs like /dev/shm: nothing). A benchmark to read, not a timed test.
import { createHash } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileEntry, writeTarFile, type EntrySource } from '../src/bundle/writer.ts';
import { parseSize, scriptArgs } from './bench/measure.ts';

const { values } = parseArgs({ args: scriptArgs(), options: { size: { type: 'string', default: '1GiB' }, dir: { type: 'string', default: '/tmp' }, runs: { type: 'string', default: '3' } } });
const total = parseSize(values.size);
const dir = await mkdtemp(join(values.dir, 'bench-writer-'));
try {
  const entries: EntrySource[] = [];
  const add = async (path: string, bytes: Buffer): Promise<void> => {
    const file = join(dir, String(entries.length));
    await writeFile(file, bytes);
    entries.push(fileEntry(path, file, bytes.length, createHash('sha256').update(bytes).digest('hex')));
  };
  // 300 small files (configs, manifests, migrations), some with names that need a pax header.
  for (let i = 0; i < 300; i++) await add(`artifacts/cartesia-acme/${i % 3 === 0 ? 'x'.repeat(120) : 'm'}/${i}.json`, Buffer.alloc(1000 + i * 37, i));
  // The rest in layers of 64 MiB and one odd-sized tail, each a separate file (page-cached once written).
  const layer = 64 << 20;
  let left = total - entries.reduce((n, e) => n + e.size, 0);
  for (let i = 0; left > 0; i++) {
    const size = Math.min(layer + 17, left);
    const bytes = Buffer.alloc(size, i + 1);
    await add(`images/blobs/sha256/${createHash('sha256').update(bytes).digest('hex')}`, bytes);
    left -= size;
  }
  // Written back before timing, so the writeback of the sources does not compete with the runs.
  for (const e of entries) {
    const fh = await open(e.file!.path, 'r');
    await fh.sync();
    await fh.close();
  }
  const bytes = entries.reduce((n, e) => n + e.size, 0);
  for (let run = 0; run < Number(values.runs); run++) {
    const out = join(dir, `out-${run}.tar`);
    const rss0 = process.memoryUsage().rss;
    let peak = rss0;
    const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const res = await writeTarFile(out, [{ path: 'bundle.json', bytes: Buffer.from('{}\n') }], entries, new Date('2025-11-18T12:34:56Z'));
    const s = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    clearInterval(timer);
    console.log(`run ${run + 1}: ${(res.size / 2 ** 20).toFixed(0)} MiB in ${s.toFixed(2)} s = ${(bytes / 2 ** 20 / s).toFixed(0)} MiB/s, CPU ${((cpu.user + cpu.system) / 1e6).toFixed(2)} s (sys ${(cpu.system / 1e6).toFixed(2)}), peak RSS +${((peak - rss0) / 2 ** 20).toFixed(0)} MiB, sha256 ${res.sha256}`);
    await rm(out);
  }
} finally {
  await rm(dir, { recursive: true, force: true });
}
