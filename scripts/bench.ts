// `npm run bench -- --size 4GiB [--runs 3] [--json FILE] [--cold]`: seeds the loopback test bed with a
// synthetic release of about SIZE bytes (big base/runtime layers shared between images, a few large
// LoRA files, many small migration files), then measures on the same data, each `--runs` times:
//   bundle (through the cache, and --direct) vs skopeo copy --all docker://… oci:… per image + a
//     plain @google-cloud/storage download
//   install vs  skopeo copy --all oci:… docker://… per image + a plain @aws-sdk/lib-storage upload
//     (after one untimed install, so neither side's first run pays the fresh servers' warm-up)
//   verify  vs  sha256sum over the same tar
//   no-op re-runs of bundle (same output, warm cache; and --direct) and install (everything present)
// and prints medians, ratios and peak RSS. A benchmark to read, not a test: it fails only when a
// command fails. The bed's servers run on the same cores; their CPU time is reported beside ours.
// It deletes skopeo's blob-info cache before each peer run (a cache skopeo rebuilds; see below).
import { readFile, writeFile, mkdir, rm } from 'node:fs/promises';
import { cpus, homedir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { DeleteBucketCommand, DeleteObjectsCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { RELEASE_BUCKET, seedRelease, sizedFixture, type FixtureRecord } from '../test/fixtures/release.ts';
import { run } from '../test/testbed/run.ts';
import { skopeoAuthFile } from '../test/testbed/skopeo-auth.ts';
import type { Testbed } from '../test/testbed/testbed.ts';
import { median, parseSize, scriptArgs, timed, withTestbed, type Timed } from './bench/measure.ts';

const { values } = parseArgs({
  args: scriptArgs(),
  options: { size: { type: 'string', default: '1GiB' }, runs: { type: 'string', default: '3' }, json: { type: 'string' }, cold: { type: 'boolean', default: false } },
});
const size = parseSize(values.size);
const runs = Number(values.runs);
if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs ${values.runs}: expected a whole number ≥ 1`);
const cli = join(import.meta.dirname, '..', 'bin', 'run.js');
const peers = join(import.meta.dirname, 'bench', 'peers.ts');
// Our CLI runs as users run it: bin/run.js through its shebang (which sets its V8 flags), on the
// pinned Node 24 that npm put first on PATH. The peers' Node scripts run on the same runtime.
const node = process.execPath;
process.env.PATH = `${dirname(node)}:${process.env.PATH ?? ''}`;
const log = (s: string) => console.error(`bench: ${s}`);

/** CPU seconds the bed's server processes used so far (utime + stime from /proc), by what they serve. */
async function serverCpu(bed: Testbed): Promise<Record<string, number>> {
  const by: Record<string, number> = {};
  for (const pid of bed.pids) {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const role = /registry/.test(cmd) ? 'registry' : /moto/.test(cmd) ? 's3' : /gcs/.test(cmd) ? 'gcs' : 'other';
    by[role] = (by[role] ?? 0) + (Number(fields[11] ?? 0) + Number(fields[12] ?? 0)) / 100; // USER_HZ is 100 on Linux
  }
  return by;
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

/**
 * Drops a bucket the bed's S3 holds (moto keeps objects in memory and temp files): at 4 GiB, six
 * installs' artifacts would not fit beside everything else. Not timed.
 */
async function dropBucket(bed: Testbed, bucket: string): Promise<void> {
  const s3 = new S3Client({ endpoint: bed.s3.endpoint, region: bed.s3.region, forcePathStyle: true, credentials: { accessKeyId: bed.s3.accessKeyId, secretAccessKey: bed.s3.secretAccessKey } });
  try {
    for (;;) {
      const page = await s3.send(new ListObjectsV2Command({ Bucket: bucket }));
      const keys = (page.Contents ?? []).map((o) => ({ Key: o.Key! }));
      if (keys.length === 0) break;
      await s3.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys } }));
    }
    await s3.send(new DeleteBucketCommand({ Bucket: bucket }));
  } finally {
    s3.destroy();
  }
}

/**
 * skopeo remembers in a blob-info cache where it has seen each blob and mounts it from there on
 * the next push: after run 1, the peer's installs would mount everything from run 1's
 * repositories and upload nothing. Every peer run starts without it, as every run of ours starts
 * with no knowledge of earlier ones.
 */
async function forgetSkopeoBlobs(): Promise<void> {
  const dirs = ['/var/lib/containers/cache', join(process.env.XDG_DATA_HOME ?? join(homedir(), '.local', 'share'), 'containers', 'cache')];
  await Promise.all(dirs.flatMap((d) => ['blob-info-cache-v1.boltdb', 'blob-info-cache-v1.sqlite'].map((f) => rm(join(d, f), { force: true }))));
}

interface Sample {
  seconds: number;
  maxRssMiB: number;
  /** The measured commands' own CPU (user + system). */
  cpuSeconds: number;
  serverCpuSeconds: number;
  /** The same by server: registry (all three), s3 (moto), gcs (the emulator). */
  serverCpuByRole: Record<string, number>;
}

/** Runs the steps one after another (as a shell script would) and sums them into one sample. */
async function sample(bed: Testbed, label: string, steps: (() => Promise<Timed>)[]): Promise<Sample> {
  // What earlier runs left dirty in the page cache is written out first, not during (and charged
  // to) this run: on these VMs writeback costs ~3 CPU s per GiB.
  await run('sync', []);
  // --cold: nothing an earlier run read or freed is left in the page cache (root only). Otherwise a
  // run's buffered writes can land on memory an earlier run just freed, which this VM serves far
  // cheaper than memory it has handed back to its host.
  if (values.cold) await writeFile('/proc/sys/vm/drop_caches', '3');
  const cpu0 = await serverCpu(bed);
  let seconds = 0;
  let rss = 0;
  let cpu = 0;
  for (const step of steps) {
    const t = await step();
    seconds += t.seconds;
    cpu += t.cpuSeconds;
    rss = Math.max(rss, t.maxRssKiB / 1024);
  }
  const cpu1 = await serverCpu(bed);
  const byRole = Object.fromEntries(Object.keys(cpu1).map((r) => [r, Number((cpu1[r]! - (cpu0[r] ?? 0)).toFixed(2))]));
  const s = { seconds, maxRssMiB: rss, cpuSeconds: Number(cpu.toFixed(2)), serverCpuSeconds: Number(sum(Object.values(byRole)).toFixed(2)), serverCpuByRole: byRole };
  log(`${label}: ${s.seconds.toFixed(2)} s, peak RSS ${s.maxRssMiB.toFixed(0)} MiB, own CPU ${s.cpuSeconds.toFixed(1)} s, servers ${s.serverCpuSeconds.toFixed(1)} CPU s (${roles(byRole)})`);
  return s;
}

/** Server CPU by role, the busy ones: `registry 20.1, s3 13.2`. */
const roles = (by: Record<string, number>) => Object.entries(by).filter(([, v]) => v >= 0.5).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ') || 'idle';

const summarize = (xs: Sample[]) => ({
  medianSeconds: median(xs.map((x) => x.seconds)),
  maxRssMiB: Math.max(...xs.map((x) => x.maxRssMiB)),
  medianCpuSeconds: median(xs.map((x) => x.cpuSeconds)),
  medianServerCpuSeconds: median(xs.map((x) => x.serverCpuSeconds)),
  medianServerCpuByRole: Object.fromEntries(Object.keys(xs[0]?.serverCpuByRole ?? {}).map((r) => [r, median(xs.map((x) => x.serverCpuByRole[r] ?? 0))])),
  samples: xs,
});

async function main(b: Testbed): Promise<void> {
  const work = join(b.root, 'bench');
  await mkdir(work, { recursive: true });
  log(`seeding a synthetic release of about ${(size / 2 ** 30).toFixed(2)} GiB`);
  const seedStart = Date.now();
  const fx: FixtureRecord = await seedRelease(b, join(work, 'fixture'), sizedFixture(size));
  log(`seeded in ${((Date.now() - seedStart) / 1000).toFixed(1)} s`);
  const customerBucket = `cartesia-${fx.customer}`;
  const sourceAuth = await skopeoAuthFile(work, b.source.host, '_json_key', (await readFile(b.saKeyFile, 'utf8')).trim());
  const privateAuth = await skopeoAuthFile(work, b.private.host, b.private.username, b.private.password);
  const s3Env = { AWS_ACCESS_KEY_ID: b.s3.accessKeyId, AWS_SECRET_ACCESS_KEY: b.s3.secretAccessKey, AWS_REGION: b.s3.region };
  const keys = join(work, 'keys');
  await run(node, [cli, 'keys', 'generate', '--out', keys]);

  // Without the 124 MiB installer: the peer path carries no tool, so both move the same data.
  const bundleArgs = (i: number) => ['bundle', '--output', join(work, `bundle-${i}.tar`), '--customer', fx.customer, '--signing-key', join(keys, 'bundle.key'), '--key-file', b.saKeyFile, '--gcs-endpoint', b.gcs.endpoint, '--source-registry', `${b.source.host}/${b.source.prefix}`, '--source-ca-file', b.caFile, '--cache-dir', join(work, `cache-${i}`), '--no-installer', '--json'];
  const directArgs = (i: number) => [...bundleArgs(i).map((a) => a.replace(`bundle-${i}.tar`, `direct-${i}.tar`).replace(`cache-${i}`, `cache-direct-${i}`)), '--direct'];
  // Each run its own receipt, as each has its own target: a re-run finds its run's receipt, as the same install command run again would.
  const installArgs = (i: number, bundle: string) => ['install', bundle, '--public-key', join(keys, 'bundle.pub'), '--registry', `${b.private.host}/ours-${i}`, '--registry-username', b.private.username, '--registry-ca-file', b.caFile, '--s3-endpoint', b.s3.endpoint, '--s3-bucket', `ours-${i}`, '--values-out', join(work, `values-${i}.yaml`), '--receipt', join(work, `receipt-${i}.json`), '--json'];
  const installEnv = { ...s3Env, CARTESIA_AIRGAP_REGISTRY_PASSWORD: b.private.password };

  const bundleOurs: Sample[] = [];
  const bundleDirect: Sample[] = [];
  const bundlePeer: Sample[] = [];
  for (let i = 1; i <= runs; i++) {
    bundleOurs.push(await sample(b, `bundle #${i} (cartesia-airgap)`, [() => timed(work, 'bundle', cli, bundleArgs(i))]));
    bundleDirect.push(await sample(b, `bundle --direct #${i} (cartesia-airgap)`, [() => timed(work, 'bundle --direct', cli, directArgs(i))]));
    if (i > 1) await Promise.all([join(work, `direct-${i}.tar`), join(work, `cache-direct-${i}`)].map((p) => rm(p, { recursive: true, force: true })));
    const peerDir = join(work, `peer-bundle-${i}`);
    await mkdir(join(peerDir, 'images'), { recursive: true });
    await forgetSkopeoBlobs();
    bundlePeer.push(
      await sample(b, `bundle #${i} (skopeo + @google-cloud/storage)`, [
        ...fx.images.map((img) => () => timed(work, `skopeo copy ${img.repository}`, 'skopeo', ['copy', '--all', '--quiet', '--src-cert-dir', b.certDir, '--src-authfile', sourceAuth, `docker://${b.source.host}/${img.repository}:${img.tag}`, `oci:${join(peerDir, 'images')}:${img.repository.split('/').at(-1)}:${img.tag}`])),
        () => timed(work, 'gcs download', node, [peers, 'gcs-download', b.gcs.endpoint, join(peerDir, 'objects'), RELEASE_BUCKET, customerBucket]),
      ]),
    );
    // Disk: only run 1's bundle and cache are needed again (the no-op re-run, install, verify).
    await rm(peerDir, { recursive: true, force: true });
    if (i > 1) await Promise.all([join(work, `bundle-${i}.tar`), join(work, `cache-${i}`)].map((p) => rm(p, { recursive: true, force: true })));
  }
  const bundleFile = join(work, 'bundle-1.tar');
  // A no-op re-run changes nothing, so it is repeated like the rest and its median taken.
  const noops = async (what: string, again: () => Promise<Timed>) => {
    const xs: Sample[] = [];
    for (let i = 1; i <= runs; i++) xs.push(await sample(b, `${what} #${i}`, [again]));
    return summarize(xs);
  };
  const bundleNoop = await noops('bundle again, same output and cache (no-op)', () => timed(work, 'bundle no-op', cli, bundleArgs(1)));
  const directNoop = await noops('bundle --direct again, same output (no-op)', () => timed(work, 'bundle --direct no-op', cli, directArgs(1)));
  await Promise.all([join(work, 'direct-1.tar'), join(work, 'cache-direct-1')].map((p) => rm(p, { recursive: true, force: true })));
  const bundleSize = (JSON.parse((await run(node, [cli, 'inspect', bundleFile, '--json'])).trim()) as { size?: number }).size ?? 0;

  // The peer reads an extracted layout (skopeo cannot read one inside a tar); extraction is not counted.
  const extracted = join(work, 'extracted');
  await mkdir(extracted, { recursive: true });
  await run('tar', ['-xf', bundleFile, '-C', extracted]);
  const index = JSON.parse(await readFile(join(extracted, 'images', 'index.json'), 'utf8')) as { manifests: { annotations: Record<string, string> }[] };
  const refs = index.manifests.map((m) => m.annotations['org.opencontainers.image.ref.name']!);

  const installOurs: Sample[] = [];
  const installPeer: Sample[] = [];
  // One untimed install first: the first install on a fresh bed made the servers spend 3-4 CPU s
  // more than the ones after it (registry 12.1 vs 10.7-11.2, moto 13.7 vs 10.3-11.8 at 4 GiB),
  // and ours runs first in each pair, so only our side paid it.
  log('install warm-up (not timed)');
  await timed(work, 'install warm-up', cli, installArgs(0, bundleFile), { env: installEnv });
  for (let i = 1; i <= runs; i++) {
    installOurs.push(await sample(b, `install #${i} (cartesia-airgap)`, [() => timed(work, 'install', cli, installArgs(i, bundleFile), { env: installEnv })]));
    await forgetSkopeoBlobs();
    installPeer.push(
      await sample(b, `install #${i} (skopeo + @aws-sdk/lib-storage)`, [
        ...refs.map((ref) => () => timed(work, `skopeo copy ${ref}`, 'skopeo', ['copy', '--all', '--quiet', '--dest-cert-dir', b.certDir, '--dest-authfile', privateAuth, `oci:${join(extracted, 'images')}:${ref}`, `docker://${b.private.host}/peer-${i}/${ref}`])),
        () => timed(work, 's3 upload', node, [peers, 's3-upload', b.s3.endpoint, `peer-${i}`, join(extracted, 'artifacts', customerBucket)], { env: s3Env }),
      ]),
    );
    // Run 1's bucket stays for the no-op re-run.
    await dropBucket(b, `peer-${i}`);
    if (i > 1) await dropBucket(b, `ours-${i}`);
  }
  const installNoop = await noops('install again into the same target (no-op)', () => timed(work, 'install no-op', cli, installArgs(1, bundleFile), { env: installEnv }));

  const verifyOurs: Sample[] = [];
  const verifySha: Sample[] = [];
  for (let i = 1; i <= runs; i++) {
    verifyOurs.push(await sample(b, `verify #${i} (cartesia-airgap)`, [() => timed(work, 'verify', cli, ['verify', bundleFile, '--public-key', join(keys, 'bundle.pub')])]));
    verifySha.push(await sample(b, `verify #${i} (sha256sum)`, [() => timed(work, 'sha256sum', 'sha256sum', [bundleFile])]));
  }

  const m = {
    bundle: { ours: summarize(bundleOurs), direct: summarize(bundleDirect), peer: summarize(bundlePeer), noop: bundleNoop, directNoop },
    install: { ours: summarize(installOurs), peer: summarize(installPeer), noop: installNoop },
    verify: { ours: summarize(verifyOurs), sha256sum: summarize(verifySha) },
  };
  const ratio = (a: number, b2: number) => Number((a / b2).toFixed(3));
  const report = {
    date: new Date().toISOString(),
    sizeBytes: bundleSize,
    requestedSizeBytes: size,
    runs,
    cold: values.cold,
    machine: { cores: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', memoryBytes: totalmem(), node: process.version },
    ratios: {
      bundle: ratio(m.bundle.ours.medianSeconds, m.bundle.peer.medianSeconds),
      bundleDirect: ratio(m.bundle.direct.medianSeconds, m.bundle.peer.medianSeconds),
      install: ratio(m.install.ours.medianSeconds, m.install.peer.medianSeconds),
      // Throughput ratio: ours ÷ sha256sum's, i.e. sha256sum's time ÷ ours.
      verify: ratio(m.verify.sha256sum.medianSeconds, m.verify.ours.medianSeconds),
    },
    noop: {
      bundle: ratio(m.bundle.noop.medianSeconds, m.bundle.ours.medianSeconds),
      bundleDirect: ratio(m.bundle.directNoop.medianSeconds, m.bundle.direct.medianSeconds),
      install: ratio(m.install.noop.medianSeconds, m.install.ours.medianSeconds),
    },
    rssMiB: { bundle: Math.round(m.bundle.ours.maxRssMiB), bundleDirect: Math.round(m.bundle.direct.maxRssMiB), install: Math.round(m.install.ours.maxRssMiB), verify: Math.round(m.verify.ours.maxRssMiB) },
    targets: { bundleRatio: 0.7, installRatio: 0.7, verifyRatio: 0.8, noop: 0.05, rssMiB: 256e6 / 2 ** 20 },
    measurements: m,
  };

  const gib = (n: number) => (n / 2 ** 30).toFixed(2);
  const mbs = (s: number) => (bundleSize / 1e6 / Math.max(s, 0.001)).toFixed(0);
  const row = (name: string, s: ReturnType<typeof summarize>) =>
    console.log(`${name.padEnd(44)} ${s.medianSeconds.toFixed(2).padStart(9)} ${mbs(s.medianSeconds).padStart(7)} ${s.maxRssMiB.toFixed(0).padStart(9)} ${s.medianCpuSeconds.toFixed(1).padStart(9)} ${s.medianServerCpuSeconds.toFixed(1).padStart(11)}  ${roles(s.medianServerCpuByRole)}`);
  console.log(`\nbundle of ${bundleSize} bytes (${gib(bundleSize)} GiB), ${runs} runs each, median${values.cold ? ', page cache dropped before each' : ''}; ${report.machine.cores} cores, ${gib(report.machine.memoryBytes)} GiB RAM, ${report.date.slice(0, 10)}`);
  console.log(`${'operation'.padEnd(44)} ${'seconds'.padStart(9)} ${'MB/s'.padStart(7)} ${'RSS MiB'.padStart(9)} ${'own CPU s'.padStart(9)} ${'server CPU s'.padStart(11)}  by server`);
  row('bundle: cartesia-airgap', m.bundle.ours);
  row('bundle --direct: cartesia-airgap', m.bundle.direct);
  row('bundle: skopeo + @google-cloud/storage', m.bundle.peer);
  row('install: cartesia-airgap', m.install.ours);
  row('install: skopeo + @aws-sdk/lib-storage', m.install.peer);
  row('verify: cartesia-airgap', m.verify.ours);
  row('verify: sha256sum', m.verify.sha256sum);
  row('bundle again (no-op)', m.bundle.noop);
  row('bundle --direct again (no-op)', m.bundle.directNoop);
  row('install again (no-op)', m.install.noop);
  const mark = (ok: boolean) => (ok ? 'met' : 'MISSED');
  console.log(`\nratios: bundle ${report.ratios.bundle} (target ≤ 0.7, ${mark(report.ratios.bundle <= 0.7)}), bundle --direct ${report.ratios.bundleDirect} (${mark(report.ratios.bundleDirect <= 0.7)}), install ${report.ratios.install} (≤ 0.7, ${mark(report.ratios.install <= 0.7)}), verify throughput ${report.ratios.verify} × sha256sum (≥ 0.8, ${mark(report.ratios.verify >= 0.8)})`);
  console.log(`no-op re-runs: bundle ${report.noop.bundle}, bundle --direct ${report.noop.bundleDirect}, install ${report.noop.install} of a full run (≤ 0.05, ${mark(Math.max(report.noop.bundle, report.noop.bundleDirect, report.noop.install) <= 0.05)})`);
  console.log(`peak RSS: bundle ${report.rssMiB.bundle} MiB, bundle --direct ${report.rssMiB.bundleDirect} MiB, install ${report.rssMiB.install} MiB, verify ${report.rssMiB.verify} MiB (≤ 256 MB = 244 MiB, ${mark(Math.max(report.rssMiB.bundle, report.rssMiB.bundleDirect, report.rssMiB.install) <= 244)})`);
  if (values.json) await writeFile(resolve(values.json), `${JSON.stringify(report, null, 2)}\n`);
}

await withTestbed('bench', main);
