/**
 * Never lose work: `bundle` and `install` killed with SIGKILL at seeded points spread over their
 * phases, and `bundle` running out of disk space before and after its space check.
 *
 * Each kill point starts from a fresh state (an empty cache; a new registry prefix and bucket), so
 * points do not depend on each other; the last point of each command is a chain (the run that
 * resumes is itself killed, once or twice) so resuming an interrupted resume is covered too. After
 * every kill the state is checked from outside (invariants.ts); then a run to completion must give
 * the clean run's result, and its --json figures must show that nothing finished before the kill
 * moved again. The results are written to docs/generated/interruptions.md.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { errorLines, runCli, startCli } from './cli.ts';
import { installArgs, installEnv } from './install-target.ts';
import { checkBucket, checkInstallOut, checkLayout, checkObjectCache, checkRegistry, sha256sums } from './invariants.ts';
import { describeTrigger, earlier, plain, prng, runAndKill, timePhases, type KillPoint, type Phase } from './kill-plan.ts';
import { fill, mountTmpfs, resizeTmpfs, tmpfsUnavailable, unmount } from './tmpfs.ts';

const bed = inject('testbed');
const fixture = inject('fixture');
const SEED = Number(process.env.AIRGAP_KILL_SEED ?? 20251118);
const DOC = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'docs', 'generated', 'interruptions.md');
const work = join(bed.root, `kills-${randomBytes(3).toString('hex')}`);
const keys = join(work, 'keys');
const source = ['--key-file', bed.saKeyFile, '--gcs-endpoint', bed.gcs.endpoint, '--source-registry', `${bed.source.host}/${bed.source.prefix}`, '--source-ca-file', bed.caFile];
const bundleArgs = (out: string, cache: string) => ['bundle', '--output', out, ...source, '--customer', fixture.customer, '--signing-key', join(keys, 'bundle.key'), '--cache-dir', cache];
const fileSha = async (f: string) => (await sha256sums([f])).get(f);
const sum = (xs: Iterable<number>) => [...xs].reduce((n, x) => n + x, 0);
const hex = () => randomBytes(3).toString('hex');

const want = new Map(fixture.objects.map((o) => [`${o.bucket}/${o.key}`, { size: o.size, sha256: o.sha256 }]));
const customer = fixture.objects.filter((o) => o.bucket === `cartesia-${fixture.customer}`);
const artifactsWant = new Map(customer.map((o) => [o.key, { size: o.size, sha256: o.sha256 }]));
const releaseBytes = sum(fixture.objects.filter((o) => o.bucket === fixture.release.bucket).map((o) => o.size));
const artifactBytes = sum(customer.map((o) => o.size));
const imageDigests = new Map(fixture.images.map((i) => [i.repository.split('/').at(-1)!, i.digest]));
/** Each image's tag, digest and blobs (from the clean run's cache), by short name. */
let images: Map<string, { tag: string; digest: string; blobs: Map<string, number> }>;

const BUNDLE_PHASES: Phase[] = [
  { name: 'release', start: /Resolve the release and check it against SHA256SUMS$/ },
  { name: 'plan', start: /Plan the images and artifacts$/ },
  { name: 'fetch', start: /Fetch the images and the customer artifacts$/ },
  { name: 'write', start: /Write the bundle$/ },
];
const INSTALL_PHASES: Phase[] = [
  { name: 'plan', start: /Check the signature and ask the target what it already holds$/ },
  { name: 'verify', start: /Verify the bundle \(signature, then every entry to be sent\)$/ },
  { name: 'render', start: /Render values\.yaml from the bundled chart$/ },
  { name: 'send', start: /Send the images and the artifacts$/ },
  { name: 'write', start: /Write values, \.env and the receipt$/ },
];
const PHASE_TEXT: Record<string, string> = {
  'bundle release': 'release fetch and SHA256SUMS check',
  'bundle plan': 'planning (manifests, space check)',
  'bundle fetch': 'image pulls and artifact downloads (side by side), each into its place in the bundle and into the cache; once the artifacts are in, bundle.json signed and written',
  'bundle write': 'the rest of the whole-file hash, the fsync and the rename',
  'bundle done': 'after the bundle was complete (renamed)',
  'install plan': 'signature check and asking the target what it holds',
  'install verify': 'verification',
  'install render': 'values rendering (in memory)',
  'install send': 'image pushes and artifact uploads (side by side)',
  'install write': 'writing values, .env, receipt',
};

/** A kill point before its directories exist: file triggers name a place, resolved per attempt. */
type Spec = { phase: string; trigger: { kind: 'time'; fraction: number } | { kind: 'file'; where: string; nth: number; what: string; match?: RegExp } };
const rand = prng(SEED);
const time = (phase: string): Spec => ({ phase, trigger: { kind: 'time', fraction: Math.round((0.1 + 0.75 * rand()) * 100) / 100 } });
const file = (phase: string, where: string, what: string, nth: number, match?: RegExp): Spec => ({ phase, trigger: { kind: 'file', where, what, nth, ...(match ? { match } : {}) } });
const upTo = (n: number) => 1 + Math.floor(rand() * n);

const bundleScenarios: Spec[][] = [
  [time('release')],
  [time('plan')],
  [time('fetch')],
  [time('fetch')],
  [file('fetch', 'ingest', 'partial blob in the cache', upTo(6))],
  [time('fetch')],
  [file('fetch', 'tmp', 'object download', upTo(10))],
  // The bundle is written in place: its .partial file appears, at its full size, once the plan is made.
  [file('plan', 'out', 'bundle .partial file', 1, /\.partial$/)],
  [time('write')],
  [time('write')],
  // The re-run of a kill mid-fetch, killed mid-fetch itself: it resumes from the partial bundle again.
  [time('fetch'), time('fetch')],
];
const installScenarios: Spec[][] = [
  [time('verify')],
  [time('render')],
  [time('send')],
  [time('send')],
  [time('send')],
  [time('send')],
  [time('send')],
  [time('send')],
  [file('write', 'out', 'temp file of values.yaml', 1)],
  [time('send'), time('send'), file('write', 'out', 'temp file of values.yaml', 1)],
];

interface Row { command: string; n: number; phase: string; landed: string; trigger: string; used: string; chained: boolean; attempts: number; again: number; rerun: number; inflight: number }
const rows: Row[] = [];
const diskRows: { case: string; exit: number | null; error: string; rerun: string }[] = [];

/**
 * Runs one scenario from a fresh state: each point's kill, the checks after it, and again from a
 * fresh state (with the trigger earlier) when a kill did not land in its planned phase.
 */
async function killChain<S, C extends { problems: string[]; complete?: boolean }>(command: string, chain: Spec[], o: { fresh: () => Promise<S>; args: (s: S) => string[]; env: NodeJS.ProcessEnv; phases: Phase[]; durations: Map<string, number>; dir: (s: S, where: string) => string; check: (s: S) => Promise<C> }): Promise<{ state: S; landed: string[]; attempts: number; last: C; used: Spec[] }> {
  const specs = [...chain];
  for (let attempt = 0; ; attempt++) {
    const final = attempt === 2;
    const state = await o.fresh();
    const landed: string[] = [];
    let last!: C;
    let retry = false;
    for (const [k, spec] of specs.entries()) {
      const t = spec.trigger;
      const point: KillPoint = { phase: spec.phase, trigger: t.kind === 'time' ? t : { ...t, dir: o.dir(state, t.where) } };
      const r = await runAndKill(o.args(state), o.env, o.phases, point, o.durations);
      if (!r.killed) {
        expect(final, `${command} ${spec.phase}: the run ended before the kill (${r.result.stderr.slice(-300)})`).toBe(false);
        specs[k] = { ...spec, trigger: earlier(point).trigger as Spec['trigger'] };
        retry = true;
        break;
      }
      // The state right after SIGKILL: every invariant holds.
      last = await o.check(state);
      expect(last.problems, `${command} killed in ${r.landed} (${describeTrigger(point.trigger)})`).toEqual([]);
      // A kill after the command's last write (its output already whole) landed past the phase.
      const where = last.complete ? 'done' : r.landed!;
      landed.push(where);
      if (where !== spec.phase && !final) {
        specs[k] = { ...spec, trigger: earlier(point).trigger as Spec['trigger'] };
        retry = true;
        break;
      }
    }
    if (!retry) return { state, landed, attempts: attempt + 1, last, used: specs };
  }
}

function record(command: string, chain: Spec[], used: Spec[], landed: string[], figures: { attempts: number; again: number; rerun: number; inflight: number }): void {
  chain.forEach((spec, i) => {
    const text = (t: Spec['trigger']) => (t.kind === 'time' ? describeTrigger(t) : describeTrigger({ ...t, dir: '' }));
    rows.push({ command, n: rows.filter((r) => r.command === command).length + 1, phase: spec.phase, landed: landed[i]!, trigger: text(spec.trigger), used: text(used[i]!.trigger), chained: i > 0, ...figures });
  });
}

let clean: { sha256: string; bundle: string; cacheImages: string; blobs: Map<string, number>; durations: Map<string, number> };

beforeAll(async () => {
  await mkdir(work, { recursive: true });
  expect((await runCli(['keys', 'generate', '--out', keys])).code).toBe(0);
  const bundle = join(work, 'clean', 'bundle.tar');
  const cache = join(work, 'clean', 'cache');
  const timed = await timePhases(bundleArgs(bundle, cache), {}, BUNDLE_PHASES);
  expect(timed.result.code, timed.result.stderr).toBe(0);
  const layout = await checkLayout(join(cache, 'images'));
  expect(layout.problems).toEqual([]);
  clean = { sha256: (await fileSha(bundle))!, bundle, cacheImages: join(cache, 'images'), blobs: layout.referenced, durations: timed.durations };
  images = new Map(fixture.images.map((i) => {
    const name = i.repository.split('/').at(-1)!;
    return [name, { tag: i.tag, digest: i.digest, blobs: layout.byRef.get(`${name}:${i.tag}`)! }];
  }));
  expect([...images.values()].every((i) => i.blobs?.size > 0)).toBe(true);
  console.log(`kill points: seed ${SEED}; clean bundle ${clean.sha256}, phases ${[...clean.durations].map(([p, ms]) => `${p} ${Math.round(ms)} ms`).join(', ')}`);
});

afterAll(async () => {
  const kb = (n: number) => `${(n / 1024).toFixed(1)} KiB`;
  const perRun = rows.map((r) => `${r.command} #${r.n} ${r.phase}→${r.landed} (${r.used}, attempt ${r.attempts}): re-run moved ${kb(r.rerun)}, finished work moved again ${r.again} B, in flight at the kill ${kb(r.inflight)}`);
  console.log(perRun.join('\n'));
  await writeFile(join(bed.root, 'interruptions-per-run.txt'), `${perRun.join('\n')}\n`);
  if (rows.length !== sum([...bundleScenarios, ...installScenarios].map((c) => c.length)) || (diskRows.length !== 4 && !noTmpfs)) return;
  const row = (r: Row) => `| ${r.command} | ${r.n} | ${PHASE_TEXT[`${r.command} ${r.phase}`]}${r.landed !== r.phase ? ` (landed in ${PHASE_TEXT[`${r.command} ${r.landed}`]})` : ''} | ${r.chained ? 'the re-run, killed again: ' : ''}${r.trigger} | pass | ${r.landed === 'done' ? 'not needed: the bundle under its name = clean run' : `completed, ${r.command === 'bundle' ? 'bundle sha256 = clean run' : 'digests and object sha256s = clean run'}`} | ${r.again} B |`;
  const doc = [
    '<!-- Generated by test/integration/interruptions.test.ts; do not edit. -->',
    '# Interruptions and full disks: what `bundle` and `install` guarantee',
    '',
    `Generated by test/integration/interruptions.test.ts on the small synthetic release. Kill points are drawn from a seeded PRNG (seed ${SEED}; set \`AIRGAP_KILL_SEED\` to draw others): a fraction of the phase's duration in a clean run measured in the same test, or the moment a file appears (inotify). Each point starts from a fresh cache, or a fresh registry prefix and bucket; in the chained rows the run that resumes is itself killed. A kill that lands outside its planned phase is tried again, earlier, from a fresh start.`,
    '',
    '"Checks at the kill", made from outside right after SIGKILL (sha256sum, Node\'s HTTP client, the AWS SDK): no file under the bundle\'s final name (or one identical to the clean bundle); every blob and object in the cache hashes to its name; every ref in the cache\'s OCI layout points at content that is all there; every partial blob is a prefix of the real one; every registry tag under the prefix is the bundle\'s digest and its manifests and blobs can all be fetched and hash right; every S3 key holds the whole object; install\'s output directory holds only whole files under final names (values.yaml and .env as the finished run writes them).',
    '',
    '"Finished work moved again": bytes the completing run transferred (its `--json` `transferred` figures) beyond what was missing after the kill, counting a blob/object as finished when it is whole in the cache, registry repository or bucket; partial image blobs in the cache resume from their last byte. Only work in flight at the kill is lost: an object download (its temp file is swept by the next run), a registry upload session, an S3 put. Per-run byte figures are printed by the test, not kept here.',
    '',
    '| command | # | phase killed in | kill point (planned) | checks at the kill | re-run | finished work moved again |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...rows.map(row),
    '',
    '## Disk full during `bundle`',
    '',
    'A tmpfs of a few hundred KiB or MiB (mounted by the test; root only) holds the output or the cache. "Pre-flight" cases are refused by the space check before anything is downloaded; in "mid-write" cases the test fills the tmpfs right after the check passed, so the write itself hits ENOSPC.',
    '',
    '| case | exit | error (one line) | after the failure |',
    '| --- | --- | --- | --- |',
    ...diskRows.map((d) => `| ${d.case} | ${d.exit} | ${d.error.replaceAll(work, '$WORK').replace(/\d+(\.\d)? (B|KiB|MiB)/g, 'SIZE').replaceAll('|', '\\|')} | ${d.rerun} |`),
    '',
  ].join('\n');
  await mkdir(dirname(DOC), { recursive: true });
  await writeFile(DOC, doc);
});

describe(`bundle killed with SIGKILL at ${sum(bundleScenarios.map((c) => c.length))} seeded points (seed ${SEED})`, () => {
  it.each(bundleScenarios.map((c, i) => [i + 1, c.map((s) => s.phase).join(' → '), c] as const))('#%i: %s', async (i, _name, chain) => {
    const dirs = async () => {
      const root = join(work, `bundle-${i}-${hex()}`);
      const d = { cache: join(root, 'cache'), out: join(root, 'out'), bundle: join(root, 'out', 'bundle.tar') };
      // The trigger directories exist before the run (the command creates them the same way).
      for (const p of [join(d.cache, 'images', '.cartesia-airgap-ingest'), join(d.cache, 'objects', 'tmp'), d.out]) await mkdir(p, { recursive: true });
      return d;
    };
    type D = Awaited<ReturnType<typeof dirs>>;
    const check = async (d: D) => {
      const layout = await checkLayout(join(d.cache, 'images'), clean.cacheImages);
      const objects = await checkObjectCache(d.cache, want);
      const out = await readdir(d.out);
      const final = out.includes('bundle.tar') && (await fileSha(d.bundle)) !== clean.sha256 ? ['bundle.tar is under its final name but differs from the clean bundle'] : [];
      // The partial bundle and its record of whole entries are what a re-run resumes from.
      const stray = out.filter((n) => !['bundle.tar', 'bundle.tar.partial', 'bundle.tar.partial.done'].includes(n)).map((n) => `unexpected ${n} next to the bundle`);
      return { problems: [...layout.problems, ...objects.problems, ...final, ...stray], layout, objects, complete: out.includes('bundle.tar') };
    };
    const { state: d, landed, attempts, last, used } = await killChain('bundle', chain, {
      fresh: dirs,
      args: (s) => bundleArgs(s.bundle, s.cache),
      env: {},
      phases: BUNDLE_PHASES,
      durations: clean.durations,
      dir: (s, where) => (where === 'ingest' ? join(s.cache, 'images', '.cartesia-airgap-ingest') : where === 'tmp' ? join(s.cache, 'objects', 'tmp') : s.out),
      check,
    });

    if (landed.at(-1) === 'done') {
      // Killed after the rename: the bundle is whole (checked above); a re-run would rightly refuse to overwrite it.
      record('bundle', chain, used, landed, { attempts, again: 0, rerun: 0, inflight: 0 });
      return;
    }
    // What is finished after the kill, counted from outside.
    const { layout, objects } = last;
    const blobsDone = sum([...clean.blobs].map(([h, size]) => (layout.blobs.has(h) ? size : 0)));
    const blobsPartial = sum([...clean.blobs.keys()].map((h) => layout.partial.get(h) ?? 0));
    const done = (bucket: string) => sum([...objects.finished].filter(([k]) => k.startsWith(`${bucket}/`)).map(([, n]) => n));
    const missing = { release: releaseBytes - done(fixture.release.bucket), images: sum(clean.blobs.values()) - blobsDone - blobsPartial, artifacts: artifactBytes - done(`cartesia-${fixture.customer}`) };

    const r = await runCli([...bundleArgs(d.bundle, d.cache), '--json']);
    expect(r.code, r.stderr).toBe(0);
    const moved = (JSON.parse(r.stdout) as { transferred: { release: number; images: number; artifacts: number } }).transferred;
    expect(moved).toEqual(missing);
    expect(await fileSha(d.bundle)).toBe(clean.sha256);
    expect(await readdir(d.out)).toEqual(['bundle.tar']);
    // The temp file of a download the kill cut short was swept by the re-run.
    expect(await readdir(join(d.cache, 'objects', 'tmp'))).toEqual([]);
    expect((await check(d)).problems).toEqual([]);
    record('bundle', chain, used, landed, { attempts, again: sum(Object.values(moved)) - sum(Object.values(missing)), rerun: sum(Object.values(moved)), inflight: objects.tmpBytes + blobsPartial });
  });
});

describe(`install killed with SIGKILL at ${sum(installScenarios.map((c) => c.length))} seeded points (seed ${SEED})`, () => {
  let durations: Map<string, number>;
  let cleanValues: string;
  let cleanEnv: string;
  let blobsTotal: number;
  const norm = (text: string, prefix: string, bucket: string) => text.replaceAll(prefix, '<PREFIX>').replaceAll(bucket, '<BUCKET>');

  beforeAll(async () => {
    const [prefix, bucket, out] = ['kills-clean/cartesia', `kills-clean-${hex()}`, join(work, 'install-clean')];
    await mkdir(out, { recursive: true });
    const timed = await timePhases(installArgs(clean.bundle, join(keys, 'bundle.pub'), prefix, bucket, out), installEnv, INSTALL_PHASES);
    expect(timed.result.code, timed.result.stderr).toBe(0);
    durations = timed.durations;
    const receipt = JSON.parse(await readFile(join(out, 'cartesia-install-receipt.json'), 'utf8')) as { registry: { images: { bytesUploaded: number }[] } };
    blobsTotal = sum(receipt.registry.images.map((i) => i.bytesUploaded));
    // A clean install uploads each blob once (mounting the shared ones): the bundle's distinct blobs.
    expect(blobsTotal).toBe(sum(clean.blobs.values()));
    cleanValues = norm(await readFile(join(out, 'values.yaml'), 'utf8'), prefix, bucket);
    cleanEnv = norm(await readFile(join(out, '.env'), 'utf8'), prefix, bucket);
    console.log(`install phases: ${[...durations].map(([p, ms]) => `${p} ${Math.round(ms)} ms`).join(', ')}`);
  });

  it.each(installScenarios.map((c, i) => [i + 1, c.map((s) => s.phase).join(' → '), c] as const))('#%i: %s', async (i, _name, chain) => {
    const fresh = async () => {
      const id = `${i}-${hex()}`;
      const s = { prefix: `kills-p${id}/cartesia`, bucket: `kills-b${id}`, out: join(work, `install-${id}`), seen: new Map<string, string>() };
      await mkdir(s.out, { recursive: true });
      return s;
    };
    type S = Awaited<ReturnType<typeof fresh>>;
    const check = async (s: S) => {
      // The registry may still be committing an upload the killed run had sent whole: what it
      // holds (the re-run's baseline) is read once two looks 100 ms apart agree.
      let registry = await checkRegistry(s.prefix, images);
      for (let look = 0; look < 20; look++) {
        await sleep(100);
        const again = await checkRegistry(s.prefix, images);
        const same = again.uploadBytes === registry.uploadBytes && again.present.size === registry.present.size && [...again.present].every((h) => registry.present.has(h));
        registry = again;
        if (same) break;
      }
      const bucket = await checkBucket(s.bucket, artifactsWant);
      const out = await checkInstallOut(s.out);
      for (const [n, text] of out.files) s.seen.set(n, text); // compared with the finished run's below
      return { problems: [...registry.problems, ...bucket.problems, ...out.problems], registry, bucket };
    };
    const { state: s, landed, attempts, last, used } = await killChain('install', chain, {
      fresh,
      args: (x) => installArgs(clean.bundle, join(keys, 'bundle.pub'), x.prefix, x.bucket, x.out),
      env: installEnv,
      phases: INSTALL_PHASES,
      durations,
      dir: (x) => x.out,
      check,
    });

    const { registry, bucket } = last;
    const missing = { images: blobsTotal - sum([...registry.present].map((h) => clean.blobs.get(h) ?? 0)), artifacts: artifactBytes - sum([...bucket.objects.keys()].map((k) => artifactsWant.get(k)!.size)) };

    const r = await runCli([...installArgs(clean.bundle, join(keys, 'bundle.pub'), s.prefix, s.bucket, s.out), '--json'], { env: installEnv });
    expect(r.code, r.stderr).toBe(0);
    const moved = (JSON.parse(r.stdout) as { transferred: { images: number; artifacts: number } }).transferred;
    const after = await checkRegistry(s.prefix, images);
    expect(after.problems).toEqual([]);
    expect(after.tags).toEqual(imageDigests);
    const objects = await checkBucket(s.bucket, artifactsWant);
    expect(objects.problems).toEqual([]);
    expect(objects.objects).toEqual(new Map(customer.map((o) => [o.key, o.sha256])));
    const values = await readFile(join(s.out, 'values.yaml'), 'utf8');
    const env = await readFile(join(s.out, '.env'), 'utf8');
    expect(norm(values, s.prefix, s.bucket)).toBe(cleanValues);
    expect(norm(env, s.prefix, s.bucket)).toBe(cleanEnv);
    // Whatever a kill left under a final name was already the whole file.
    if (s.seen.has('values.yaml')) expect(s.seen.get('values.yaml')).toBe(values);
    if (s.seen.has('.env')) expect(s.seen.get('.env')).toBe(env);
    expect(moved).toEqual(missing);
    record('install', chain, used, landed, { attempts, again: sum(Object.values(moved)) - sum(Object.values(missing)), rerun: sum(Object.values(moved)), inflight: registry.uploadBytes });
  });
});

const noTmpfs = tmpfsUnavailable();
if (noTmpfs) console.log(`disk-full tests skipped: ${noTmpfs}`);

describe.skipIf(noTmpfs)(`bundle on a full disk${noTmpfs ? ` (skipped: ${noTmpfs})` : ''}`, () => {
  /**
   * One case: a tmpfs at `mnt` holding the output or the cache; `fillAfterCheck` takes its free
   * space once the space check has passed. The failure must be one line; nothing may sit under the
   * final name; the cache must be valid; after making room, a re-run succeeds and fetches only
   * what was not cached.
   */
  async function full(name: string, o: { onTmpfs: 'output' | 'cache'; size: string; fillAfterCheck?: number; error: (mnt: string, out: string) => RegExp }): Promise<void> {
    const root = join(work, `full-${hex()}`);
    const mnt = join(root, 'mnt');
    mountTmpfs(mnt, o.size);
    try {
      const out = o.onTmpfs === 'output' ? join(mnt, 'bundle.tar') : join(root, 'bundle.tar');
      const cache = o.onTmpfs === 'cache' ? join(mnt, 'cache') : join(root, 'cache');
      let filler: string | undefined;
      const run = startCli(bundleArgs(out, cache), {
        onStderrLine: (line) => {
          if (o.fillAfterCheck !== undefined && !filler && /^\S+ \d+ images \(/.test(plain(line))) filler = fill(mnt, o.fillAfterCheck);
        },
      });
      const r = await run.done;
      expect(r.code, r.stderr).toBe(1);
      const errors = errorLines(r).filter((l) => l.startsWith('Error:'));
      expect(errors, r.stderr).toHaveLength(1);
      expect(errors[0]).toMatch(o.error(mnt, out));
      expect(await readdir(dirname(out))).not.toContain('bundle.tar');
      // bundle.tar.partial may stay: the re-run resumes from it.
      const layout = await checkLayout(join(cache, 'images'), clean.cacheImages);
      const objects = await checkObjectCache(cache, want);
      expect([...layout.problems, ...objects.problems]).toEqual([]);
      const blobsDone = sum([...clean.blobs].map(([h, size]) => (layout.blobs.has(h) ? size : 0))) + sum([...layout.partial.values()]);
      const done = (bucket: string) => sum([...objects.finished].filter(([k]) => k.startsWith(`${bucket}/`)).map(([, n]) => n));

      // Room again: the tmpfs grows (a pre-flight refusal) or the filler goes.
      if (filler) await writeFile(filler, '');
      else resizeTmpfs(mnt, '16m');
      const again = await runCli([...bundleArgs(out, cache), '--json']);
      expect(again.code, again.stderr).toBe(0);
      expect(await fileSha(out)).toBe(clean.sha256);
      const moved = (JSON.parse(again.stdout) as { transferred: { release: number; images: number; artifacts: number } }).transferred;
      expect(moved).toEqual({ release: releaseBytes - done(fixture.release.bucket), images: sum(clean.blobs.values()) - blobsDone, artifacts: artifactBytes - done(`cartesia-${fixture.customer}`) });
      const cached = releaseBytes + sum(clean.blobs.values()) + artifactBytes - sum(Object.values(moved));
      diskRows.push({ case: name, exit: r.code, error: errors[0]!.replaceAll(out, '$OUT').replaceAll(mnt, '$TMPFS'), rerun: `nothing under the final name; cache valid; with room again the re-run succeeds (sha256 = clean run) and fetches only what was not cached${cached > 0 ? ` (${o.onTmpfs === 'cache' && o.fillAfterCheck !== undefined ? 'the blobs fetched before the disk filled' : 'everything fetched before the failure'} not fetched again)` : ''}` });
    } finally {
      unmount(mnt);
    }
  }

  const human = '[\\d.]+ (B|KiB|MiB)';
  it('output: refused by the space check, before any image is fetched', () =>
    full('`--output` on a 512 KiB tmpfs (pre-flight)', { onTmpfs: 'output', size: '512k', error: (mnt) => new RegExp(`^Error: not enough space on the file system of ${mnt}: ${human} needed \\(bundle ${human}\\), ${human} free; free some space or choose another --output$`) }));

  it('output: the disk fills after the check, while the bundle is filled', () =>
    full('`--output` on a 4 MiB tmpfs filled to 256 KiB free after the check (mid-write)', { onTmpfs: 'output', size: '4m', fillAfterCheck: 256 << 10, error: (mnt, out) => new RegExp(`^Error: no space left on the file system of ${mnt} \\(ENOSPC\\) while fetching into ${out} and the cache \\(about ${human} needed, ${human} free\\); free some space or choose another --output, then run again \\(finished downloads are kept\\)$`) }));

  it('cache: refused by the space check', () =>
    full('`--cache-dir` on a 512 KiB tmpfs (pre-flight)', { onTmpfs: 'cache', size: '512k', error: (mnt) => new RegExp(`^Error: not enough space on the file system of ${mnt}/cache: ${human} needed \\(cache ${human}\\), ${human} free; free some space or choose another --cache-dir$`) }));

  it('cache: the disk fills after the check, while images are fetched', () =>
    full('`--cache-dir` on a 4 MiB tmpfs filled to 200 KiB free after the check (mid-fetch)', { onTmpfs: 'cache', size: '4m', fillAfterCheck: 200 << 10, error: (mnt, out) => new RegExp(`^Error: no space left on the file system of ${mnt}/cache \\(ENOSPC\\) while fetching into ${out} and the cache \\(about ${human} needed, ${human} free\\); free some space or choose another --cache-dir, then run again \\(finished downloads are kept\\)$`) }));
});
