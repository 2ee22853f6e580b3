// `npm run bench:blob -- [--size 2GiB] [--json FILE]`: the must-show "copying a single 2 GiB blob
// keeps peak RSS under 200 MB". Copies a one-layer image layout → registry → layout with our CLI and
// with skopeo (for comparison), each under GNU time, and prints seconds, MB/s and peak RSS.
// A benchmark to read, not a timed test: it fails only when a copy or the hash check fails.
import { writeFile } from 'node:fs/promises';
import { cpus, totalmem, platform, release } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { seededBytes } from '../test/fixtures/bytes.ts';
import { LayoutWriter } from '../test/fixtures/oci-layout.ts';
import { run } from '../test/testbed/run.ts';
import type { Testbed } from '../test/testbed/testbed.ts';
import { parseSize, scriptArgs, timed, withTestbed } from './bench/measure.ts';

const LAYER = 'application/vnd.oci.image.layer.v1.tar';
const LIMIT_BYTES = 200e6; // the issue's "200 MB": decimal megabytes

const { values } = parseArgs({
  args: scriptArgs(),
  options: { size: { type: 'string', default: '2GiB' }, json: { type: 'string' } },
});
const size = parseSize(values.size);
const cli = join(import.meta.dirname, '..', 'bin', 'run.js');

interface Measure {
  operation: string;
  tool: 'cartesia-airgap' | 'skopeo';
  seconds: number;
  mbPerSecond: number;
  maxRssKiB: number;
  maxRssMiB: number;
  stdout: string;
}

async function measure(bed: Testbed, operation: string, tool: Measure['tool'], cmd: string, args: string[]): Promise<Measure> {
  const t = await timed(bed.root, `${operation} (${tool})`, cmd, args);
  return { operation, tool, seconds: t.seconds, mbPerSecond: size / 1e6 / Math.max(t.seconds, 0.01), maxRssKiB: t.maxRssKiB, maxRssMiB: t.maxRssKiB / 1024, stdout: t.stdout };
}

/** Our CLI's --json result must say the layer's bytes really moved (not skipped as already there). */
function checkOurs(m: Measure): void {
  const r = JSON.parse(m.stdout.trim().split('\n').at(-1)!) as { blobs: { uploaded: number }; bytesTransferred: number };
  if (r.bytesTransferred < size) throw new Error(`${m.operation}: only ${r.bytesTransferred} of ${size} bytes transferred (blobs ${JSON.stringify(r.blobs)})`);
}

await withTestbed('bench-blob', async (bed) => {
  const plain = bed.plain.host;
  const layout = join(bed.root, 'bench-layout');
  const out = join(bed.root, 'bench-out');
  const out2 = join(bed.root, 'bench-out-skopeo');

  // The input is built with the fixtures' own writer, never the engine under test.
  console.error(`bench-blob: writing a ${size}-byte layer into ${layout}`);
  const w = await new LayoutWriter(layout).init();
  const layer = await w.putStream(LAYER, seededBytes(`bench-blob-${size}`, size));
  const config = await w.putJson('application/vnd.oci.image.config.v1+json', {
    architecture: 'amd64',
    os: 'linux',
    rootfs: { type: 'layers', diff_ids: [layer.digest] }, // an uncompressed "tar": diff_id = digest
  });
  const manifest = await w.putJson('application/vnd.oci.image.manifest.v1+json', {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config,
    layers: [layer],
  });
  w.addRef(manifest, 'big:1');
  await w.writeIndex();

  const node = process.execPath; // the pinned Node 24 that npm put on PATH for this script
  const runs: Measure[] = [];
  const ours = async (op: string, args: string[]) => {
    const m = await measure(bed, op, 'cartesia-airgap', node, [cli, 'copy', ...args, '--json']);
    checkOurs(m);
    runs.push(m);
  };
  console.error('bench-blob: (a) layout → registry');
  await ours('layout → registry', [`oci:${layout}:big:1`, `docker://${plain}/bench/big:1`, '--dest-plain-http']);
  console.error('bench-blob: (b) registry → layout');
  await ours('registry → layout', [`docker://${plain}/bench/big:1`, `oci:${out}`, '--src-plain-http']);

  // Independent oracle: coreutils' sha256sum over the blob file our copy wrote.
  const hex = layer.digest.slice('sha256:'.length);
  const sum = (await run('sha256sum', [join(out, 'blobs', 'sha256', hex)])).split(' ')[0];
  if (sum !== hex) throw new Error(`hash check: ${out} holds ${sum} under the name ${hex}`);
  console.error('bench-blob: sha256sum of the copied layer matches its digest');

  // skopeo pushes to its own repository so the registry cannot answer "already there" for it.
  console.error('bench-blob: skopeo, the same two copies');
  runs.push(await measure(bed, 'layout → registry', 'skopeo', 'skopeo', ['copy', '--dest-tls-verify=false', `oci:${layout}:big:1`, `docker://${plain}/bench/skopeo:1`]));
  runs.push(await measure(bed, 'registry → layout', 'skopeo', 'skopeo', ['copy', '--src-tls-verify=false', `docker://${plain}/bench/skopeo:1`, `oci:${out2}:big:1`]));

  const mine = runs.filter((r) => r.tool === 'cartesia-airgap');
  const under = mine.every((r) => r.maxRssKiB * 1024 < LIMIT_BYTES);
  console.log(`\nsingle blob of ${size} bytes (${(size / 2 ** 30).toFixed(2)} GiB), ${cpus().length} CPUs, ${(totalmem() / 2 ** 30).toFixed(1)} GiB RAM`);
  console.log(`${'operation'.padEnd(38)} ${'seconds'.padStart(8)} ${'MB/s'.padStart(8)} ${'peak RSS MiB'.padStart(13)}`);
  for (const r of runs) {
    console.log(`${`${r.tool} ${r.operation}`.padEnd(38)} ${r.seconds.toFixed(2).padStart(8)} ${r.mbPerSecond.toFixed(1).padStart(8)} ${r.maxRssMiB.toFixed(1).padStart(13)}`);
  }
  console.log(`peak RSS under 200 MB: ${under ? 'yes' : 'no'}`);

  if (values.json) {
    const report = {
      date: new Date().toISOString(),
      sizeBytes: size,
      limitBytes: LIMIT_BYTES,
      peakRssUnder200MB: under,
      machine: { cpus: cpus().length, totalmem: totalmem(), platform: platform(), release: release(), node: process.version },
      runs: runs.map(({ stdout: _stdout, ...r }) => r),
    };
    await writeFile(resolve(values.json), `${JSON.stringify(report, null, 2)}\n`);
  }
});
