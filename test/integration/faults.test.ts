/**
 * Faults between the CLI and every server of the bed: a fault proxy (test/testbed/fault-proxy.ts)
 * stands in front of the source registry, its token issuer, GCS, the private registry and S3, and
 * breaks requests on a fixed, bounded schedule: resets in the middle of bodies, bursts of 500/502/
 * 503, 429 with Retry-After, stalls, uploads cut halfway. `bundle` and `install` must complete under
 * each, with results identical to a clean run: the same bundle bytes (sha256), the same image
 * digests in the registry (skopeo), the same objects in the bucket (sha256). The proxy's record
 * proves each fault happened and shows how the CLI answered it (a Range resume, a wait of at least
 * Retry-After, a new upload). The results are written to docs/generated/fault-injection.md.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startFaultProxy, type FaultProxy, type FaultRule, type Injected } from '../testbed/fault-proxy.ts';
import { run } from '../testbed/run.ts';
import { runCli, type CliResult } from './cli.ts';
import { authFile, sha256, skopeo } from './helpers.ts';
import { installArgs, installEnv, objectsIn, s3 } from './install-target.ts';

const bed = inject('testbed');
const fixture = inject('fixture');
const work = join(bed.root, `faults-test-${randomBytes(3).toString('hex')}`);
const keys = join(work, 'keys');
const DOC = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'docs', 'generated', 'fault-injection.md');
const name = (repo: string) => repo.split('/').at(-1)!;
const customer = fixture.objects.filter((o) => o.bucket === `cartesia-${fixture.customer}`);
/** The stall timeout the stall runs give the CLI (CARTESIA_AIRGAP_STALL_TIMEOUT), in seconds. */
const STALL_TIMEOUT = 4;
const RETRY_AFTER = 2;

type Server = 'issuer' | 'source' | 'gcs' | 'registry' | 's3';
const WHERE: Record<Server, string> = {
  source: 'source registry (TLS, token auth)',
  issuer: 'token issuer (TLS)',
  gcs: 'GCS',
  registry: 'private registry (TLS, basic auth)',
  s3: 'S3 (moto)',
};
let proxies: Record<Server, FaultProxy>;

// The chart names the NATS image at the real source registry, not the proxy: the CLI reaches it
// directly and trusts the bed's CA for it as a system root (NATS lives on Docker Hub in real life).
const env = { NODE_EXTRA_CA_CERTS: bed.caFile };

const BLOB = /\/blobs\/sha256:/;
const MEDIA = /alt=media/;
const UPLOAD = /\/blobs\/uploads\/[^?]+\?/;
/** LoRA objects: slashes in S3 paths, %2F in GCS object names. */
const LORA = /\/loras(\/|%2F)/;

interface Row { fault: string; where: string; injected: number; coped: string; result: string }
const rows: Row[] = [];
const KINDS = 5;
let ran = 0;

const bundleArgs = (out: string, cache: string) => [
  'bundle', '--output', out, '--key-file', bed.saKeyFile, '--gcs-endpoint', proxies.gcs.origin,
  '--source-registry', `${proxies.source.host}/${bed.source.prefix}`, '--source-ca-file', bed.caFile,
  '--customer', fixture.customer, '--signing-key', join(keys, 'bundle.key'), '--cache-dir', cache, '--json',
];

/** What an install left behind, read by skopeo and the S3 API, not by our code. */
async function installed(prefix: string, bucket: string): Promise<{ images: Record<string, string>; objects: Record<string, string> }> {
  const auth = await authFile(bed.private.host, bed.private.username, bed.private.password);
  const images: Record<string, string> = {};
  for (const img of fixture.images) {
    const raw = await skopeo(['inspect', '--raw', '--cert-dir', bed.certDir, '--authfile', auth, `docker://${bed.private.host}/${prefix}/${name(img.repository)}:${img.tag}`]);
    images[name(img.repository)] = raw.ok ? `sha256:${sha256(raw.stdout)}` : `missing: ${raw.error}`;
  }
  const objects: Record<string, string> = {};
  for (const o of await objectsIn(bucket)) {
    const got = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: o.Key! }));
    objects[o.Key!] = sha256(Buffer.from(await got.Body!.transformToByteArray()));
  }
  return { images, objects };
}

let cleanBundle: { file: string; sha256: string };
let cleanInstall: Awaited<ReturnType<typeof installed>>;

beforeAll(async () => {
  await mkdir(keys, { recursive: true });
  expect((await runCli(['keys', 'generate', '--out', keys])).code).toBe(0);
  const pki = join(bed.root, 'pki');
  // The bed's own server certificate (127.0.0.1, signed by its CA): the CLI trusts it already.
  const tls = { cert: await readFile(join(pki, 'server.crt')), key: await readFile(join(pki, 'server.key')), ca: await readFile(bed.caFile) };
  const issuer = new URL(bed.source.tokenUrl).origin;
  const tokenProxy = await startFaultProxy({ name: 'issuer', upstream: issuer, tls });
  proxies = {
    issuer: tokenProxy,
    // The registry names its token issuer by absolute URL (its configured realm): point it at the proxy.
    source: await startFaultProxy({ name: 'source', upstream: `https://${bed.source.host}`, tls, rewrite: { [issuer]: tokenProxy.origin } }),
    gcs: await startFaultProxy({ name: 'gcs', upstream: bed.gcs.endpoint }),
    registry: await startFaultProxy({ name: 'registry', upstream: `https://${bed.private.host}`, tls }),
    s3: await startFaultProxy({ name: 's3', upstream: bed.s3.endpoint }),
  };

  // The clean runs: the bundle through the proxies with no faults (bundle.json names the source
  // registry, so both bundles must name the same address), the install straight to the servers.
  const file = join(work, 'clean.tar');
  const b = await runCli(bundleArgs(file, join(work, 'cache-clean')), { env });
  expect(b.code, b.stderr).toBe(0);
  cleanBundle = { file, sha256: (JSON.parse(b.stdout) as { sha256: string }).sha256 };
  expect(cleanBundle.sha256).toBe(sha256(await readFile(file)));
  const out = join(work, 'out-clean');
  await mkdir(out);
  const tag = randomBytes(3).toString('hex');
  const i = await runCli(installArgs(file, join(keys, 'bundle.pub'), `faults-clean-${tag}/cartesia`, `faults-clean-${tag}`, out), { env: { ...env, ...installEnv } });
  expect(i.code, i.stderr).toBe(0);
  cleanInstall = await installed(`faults-clean-${tag}/cartesia`, `faults-clean-${tag}`);
  // The clean install itself is what the fixture pushed and uploaded.
  expect(cleanInstall.images).toEqual(Object.fromEntries(fixture.images.map((img) => [name(img.repository), img.digest])));
  expect(cleanInstall.objects).toEqual(Object.fromEntries(customer.map((o) => [o.key, o.sha256])));
});

afterAll(async () => {
  await Promise.all(Object.values(proxies ?? {}).map((p) => p.close()));
  const cell = (s: string) => s.replaceAll('|', '\\|');
  const table = [
    '<!-- Generated by test/integration/faults.test.ts; do not edit. -->',
    '# Faults on the wire: how `bundle` and `install` get through them',
    '',
    'Generated by test/integration/faults.test.ts. A fault proxy of ours (test/testbed/fault-proxy.ts) stands between the CLI',
    'and each server of the test bed and breaks requests on a fixed schedule (the first matching requests, a bounded number',
    'of times, at seeded byte offsets), then passes everything through. Each fault kind gets its own `bundle` and/or `install`',
    'run, compared with a clean run: the bundle byte for byte (sha256), the registry by skopeo (every image digest), the',
    `bucket by S3 (every object's sha256). "Injected" counts what the proxy recorded doing. The stall runs set`,
    `\`CARTESIA_AIRGAP_STALL_TIMEOUT=${STALL_TIMEOUT}\` (seconds; default 60) so that a stall longer than it is seen through within the test.`,
    '',
    '| fault | where | injected | how the CLI coped | result |',
    '| --- | --- | --- | --- | --- |',
    ...rows.map((r) => `| ${cell(r.fault)} | ${cell(r.where)} | ${r.injected} | ${cell(r.coped)} | ${cell(r.result)} |`),
    '',
  ].join('\n');
  await writeFile(join(bed.root, 'fault-table.md'), table);
  // Only a run of every kind rewrites the repo's copy (not `-t` or a failure).
  if (ran !== KINDS) return;
  await mkdir(dirname(DOC), { recursive: true });
  await writeFile(DOC, table);
});

/** A fault schedule for one run: rules per server; the others pass everything through. */
type Plan = Partial<Record<Server, FaultRule[]>>;

/** The servers each command talks to: a bundle run and an install run can go on at once. */
const SIDE = { bundle: ['source', 'issuer', 'gcs'], install: ['registry', 's3'] } as const satisfies Record<string, Server[]>;

function arm(plan: Plan, servers: readonly Server[]): void {
  for (const server of servers) proxies[server].setRules(plan[server] ?? [], 6);
}

/** Runs `bundle` under `plan`; it must succeed with the clean bundle's bytes. */
async function faultedBundle(plan: Plan, extraEnv: NodeJS.ProcessEnv = {}): Promise<string> {
  arm(plan, SIDE.bundle);
  const file = join(work, `bundle-${randomBytes(3).toString('hex')}.tar`);
  const cache = join(work, `cache-${randomBytes(3).toString('hex')}`);
  const r = await runCli(bundleArgs(file, cache), { env: { ...env, ...extraEnv } });
  expect(r.code, r.stderr).toBe(0);
  expect(sha256(await readFile(file))).toBe(cleanBundle.sha256);
  // The cache learned every image blob and artifact, whole, however the fetch of each went.
  const blobs = (await run('tar', ['-tf', file])).split('\n').filter((n) => n.startsWith('images/blobs/sha256/'));
  expect(blobs.length).toBeGreaterThan(0);
  for (const n of blobs) expect(sha256(await readFile(join(cache, n))), n).toBe(n.split('/').at(-1));
  for (const o of customer) expect(sha256(await readFile(join(cache, 'objects', 'sha256', o.sha256))), o.key).toBe(o.sha256);
  return 'bundle exit 0; sha256 identical to the clean bundle; every image blob and artifact whole in the cache';
}

/** Runs `install` of the clean bundle under `plan` into a fresh prefix and bucket; they must match the clean install. */
async function faultedInstall(plan: Plan, extraEnv: NodeJS.ProcessEnv = {}): Promise<string> {
  arm(plan, SIDE.install);
  const tag = randomBytes(3).toString('hex');
  const out = join(work, `out-${tag}`);
  await mkdir(out);
  const via = { registry: proxies.registry.host, s3: proxies.s3.origin };
  const r: CliResult = await runCli(installArgs(cleanBundle.file, join(keys, 'bundle.pub'), `faults-${tag}/cartesia`, `faults-${tag}`, out, via), { env: { ...env, ...installEnv, ...extraEnv } });
  expect(r.code, r.stderr).toBe(0);
  expect(await installed(`faults-${tag}/cartesia`, `faults-${tag}`)).toEqual(cleanInstall);
  return `install exit 0; ${fixture.images.length} image digests (skopeo) and ${customer.length} objects (sha256) identical to the clean install`;
}

/** The requests to the same method and path after `i`: the CLI's answers to the fault. */
const after = (p: FaultProxy, i: Injected) => p.seen.filter((s) => s.at > i.at && s.method === i.method && s.path === i.path);
/** A blob upload's digest (its PUT carries ?digest=), so a new session for the same blob is found. */
const digestOf = (path: string) => new URL(path, 'http://x').searchParams.get('digest');

/** Every fault `rule` injected on `server`, each answered as `answered` says; one table row. */
function row(fault: string, server: Server, rule: FaultRule, answered: (i: Injected) => boolean, coped: string, result: string): void {
  const p = proxies[server];
  const mine = p.injected.filter((i) => i.rule === rule.name);
  expect(mine, `${server}: ${rule.name}`).toHaveLength(rule.limit);
  const ok = mine.filter(answered);
  expect(ok.length, `${server}: ${rule.name}: ${JSON.stringify(mine)}\n${JSON.stringify(p.seen.slice(-40))}`).toBe(mine.length);
  rows.push({ fault, where: `${WHERE[server]}: ${rule.name}`, injected: mine.length, coped: `${coped} (${ok.length} of ${mine.length})`, result });
}

describe('bundle and install under faults, with results identical to a clean run', () => {
  it('resets in the middle of response bodies: blobs and objects resume with Range from the byte reached, manifests and tokens are asked for again', async () => {
    const source: FaultRule = { name: 'blob GETs of 16 KiB or more, reset 4–12 KiB in', fault: { kind: 'reset-body', at: { min: 4096, max: 12288 } }, method: 'GET', path: BLOB, minBytes: 16384, every: 2, limit: 3 };
    const gcs: FaultRule = { name: 'object reads of 16 KiB or more, reset 4–12 KiB in', fault: { kind: 'reset-body', at: { min: 4096, max: 12288 } }, method: 'GET', path: MEDIA, minBytes: 16384, limit: 2 };
    const small = { kind: 'reset-body', at: { min: 100, max: 300 } } as const;
    const manifest: FaultRule = { name: 'manifest GETs, reset 100–300 bytes in', fault: small, method: 'GET', path: /\/manifests\//, minBytes: 400, limit: 2 };
    const token: FaultRule = { name: 'token answers, reset 100–300 bytes in', fault: small, method: 'GET', limit: 1 };
    const result = await faultedBundle({ source: [source, manifest], gcs: [gcs], issuer: [token] });
    // The next request for the same content asks for the rest: Range from a byte after 0, at most where the cut was.
    const resumed = (p: FaultProxy) => (i: Injected) => {
      const from = Number(/^bytes=(\d+)-$/.exec(after(p, i)[0]?.range ?? '')?.[1] ?? 0);
      return from > 0 && from <= i.detail;
    };
    row('reset mid-body', 'source', source, resumed(proxies.source), 'the next GET asked for the rest with Range', result);
    row('reset mid-body', 'gcs', gcs, resumed(proxies.gcs), 'the next read asked for the rest with Range', result);
    // Small documents are read whole: asked for again.
    const again = (p: FaultProxy) => (i: Injected) => after(p, i).some((s) => s.status === 200 && s.range === undefined);
    row('reset mid-body', 'source', manifest, again(proxies.source), 'asked for the whole manifest again', result);
    row('reset mid-body', 'issuer', token, again(proxies.issuer), 'asked for a token again', result);
    ran++;
  });

  it('bursts of 500, 502, 503: every request is sent again and the run completes', async () => {
    const burst = { kind: 'status', statuses: [500, 502, 503] } as const;
    const plan = {
      source: [{ name: 'three requests in a row after the first five', fault: burst, skip: 5, limit: 3 }],
      issuer: [{ name: 'the first three token requests', fault: burst, limit: 3 }],
      gcs: [{ name: 'three object reads in a row after the release files', fault: burst, method: 'GET', path: MEDIA, skip: 3, limit: 3 }],
      registry: [{ name: 'the first three upload starts (POST)', fault: burst, method: 'POST', path: /\/blobs\/uploads\/$/, limit: 3 }],
      s3: [{ name: 'the first three object PUTs', fault: burst, method: 'PUT', path: /\/.+\/.+/, limit: 3 }],
    } satisfies Plan;
    const [bundled, result] = await Promise.all([faultedBundle(plan), faultedInstall(plan)]);
    const sentAgain = (p: FaultProxy) => (i: Injected) => after(p, i).some((s) => s.status !== undefined && s.status < 500);
    for (const server of ['source', 'issuer', 'gcs'] as const) row('500/502/503 burst', server, plan[server][0]!, sentAgain(proxies[server]), 'sent again until answered', bundled);
    // An upload start is a new session: what counts is that the same repository got one.
    row('500/502/503 burst', 'registry', plan.registry[0]!, sentAgain(proxies.registry), 'sent again until answered', result);
    row('500/502/503 burst', 's3', plan.s3[0]!, sentAgain(proxies.s3), 'sent again until answered', result);
    ran++;
  });

  it('429 with Retry-After: every client waits at least that long before asking again', async () => {
    const throttle = { kind: 'throttle', retryAfterSeconds: RETRY_AFTER } as const;
    const plan = {
      source: [{ name: 'the first blob GET', fault: throttle, method: 'GET', path: BLOB, limit: 1 }],
      gcs: [{ name: 'the first LoRA read', fault: throttle, method: 'GET', path: LORA, limit: 1 }],
      registry: [{ name: 'the first blob upload (PUT)', fault: throttle, method: 'PUT', path: UPLOAD, limit: 1 }],
      s3: [{ name: 'the first LoRA PUT', fault: throttle, method: 'PUT', path: LORA, limit: 1 }],
    } satisfies Plan;
    const waited = (p: FaultProxy) => (i: Injected) => {
      const next = p.seen.find((s) => s.at > i.at && s.method === i.method && (s.path === i.path || (digestOf(s.path) !== null && digestOf(s.path) === digestOf(i.path))));
      return next !== undefined && next.at - i.at >= RETRY_AFTER * 1000 - 20;
    };
    const [bundled, result] = await Promise.all([faultedBundle(plan), faultedInstall(plan)]);
    row('429 + Retry-After: 2', 'source', plan.source[0]!, waited(proxies.source), `asked again after at least ${RETRY_AFTER} s`, bundled);
    row('429 + Retry-After: 2', 'gcs', plan.gcs[0]!, waited(proxies.gcs), `asked again after at least ${RETRY_AFTER} s`, bundled);
    row('429 + Retry-After: 2', 'registry', plan.registry[0]!, waited(proxies.registry), `uploaded again after at least ${RETRY_AFTER} s`, result);
    row('429 + Retry-After: 2', 's3', plan.s3[0]!, waited(proxies.s3), `asked again after at least ${RETRY_AFTER} s`, result);
    ran++;
  });

  it(`stalls: one shorter than the stall timeout is waited out, one longer is abandoned and resumed`, async () => {
    const stallEnv = { CARTESIA_AIRGAP_STALL_TIMEOUT: String(STALL_TIMEOUT) };
    const short = (what: string, path: RegExp, at: { min: number; max: number } | 'headers', method = 'GET'): FaultRule => ({ name: `${what}: 1 s`, fault: { kind: 'stall', at, ms: 1000 }, method, path, minBytes: at === 'headers' ? 0 : 16384, limit: 1 });
    const long = (what: string, path: RegExp, at: { min: number; max: number } | 'headers', method = 'GET'): FaultRule => ({ name: `${what}: 8 s`, fault: { kind: 'stall', at, ms: 8000 }, method, path, minBytes: at === 'headers' ? 0 : 16384, limit: 1 });
    const mid = { min: 4096, max: 8192 };
    const plan = {
      source: [short('a blob GET, 4–8 KiB in', BLOB, mid), long('another blob GET, 4–8 KiB in', BLOB, mid)],
      gcs: [short('a LoRA read, 4–8 KiB in', LORA, mid), long('another LoRA read, 4–8 KiB in', LORA, mid)],
      // The registry's answer to a finished upload is held; a registry may take minutes to verify a
      // large blob, so the wait for headers is not cut short (at least 120 s): only the short stall.
      registry: [short('the answer to a blob upload (PUT)', UPLOAD, 'headers', 'PUT')],
      s3: [short('the answer to a LoRA PUT', LORA, 'headers', 'PUT'), long('the answer to another LoRA PUT', LORA, 'headers', 'PUT')],
    } satisfies Plan;
    const waitedOut = (p: FaultProxy) => (i: Injected) => after(p, i).length === 0;
    // Given up on after the stall timeout, not before, and well before the stall itself ended.
    const gaveUp = (next: { at: number } | undefined, i: Injected) => next !== undefined && next.at - i.at >= STALL_TIMEOUT * 1000 - 50 && next.at - i.at < 8000;
    const resumed = (p: FaultProxy) => (i: Injected) => {
      const next = after(p, i)[0];
      return gaveUp(next, i) && Number(/^bytes=(\d+)-$/.exec(next?.range ?? '')?.[1] ?? 0) > 0;
    };
    const [bundled, result] = await Promise.all([faultedBundle(plan, stallEnv), faultedInstall(plan, stallEnv)]);
    for (const server of ['source', 'gcs'] as const) {
      row('stall mid-body, shorter than the timeout', server, plan[server][0]!, waitedOut(proxies[server]), 'waited it out: no second request', bundled);
      row(`stall mid-body, longer than the timeout (${STALL_TIMEOUT} s)`, server, plan[server][1]!, resumed(proxies[server]), `gave up after ${STALL_TIMEOUT} s and asked for the rest with Range`, bundled);
    }
    row('stall before the answer, shorter than the timeout', 'registry', plan.registry[0]!, waitedOut(proxies.registry), 'waited it out: no second request', result);
    row('stall before the answer, shorter than the timeout', 's3', plan.s3[0]!, waitedOut(proxies.s3), 'waited it out: no second request', result);
    row(`stall before the answer, longer than the timeout (${STALL_TIMEOUT} s)`, 's3', plan.s3[1]!, (i) => gaveUp(after(proxies.s3, i)[0], i) && after(proxies.s3, i).some((s) => s.status === 200), `gave up after ${STALL_TIMEOUT} s and sent the PUT again`, result);
    ran++;
  });

  it('uploads cut halfway: the blob or object is sent again whole and committed once', async () => {
    const cut = { kind: 'cut-upload', at: { min: 8192, max: 16384 } } as const;
    const plan = {
      registry: [{ name: 'blob uploads (PUT) of 20 KiB or more, cut 8–16 KiB in', fault: cut, method: 'PUT', path: UPLOAD, minBytes: 20000, limit: 2 }],
      s3: [{ name: 'LoRA PUTs, cut 8–16 KiB in', fault: cut, method: 'PUT', path: LORA, minBytes: 20000, limit: 2 }],
    } satisfies Plan;
    const result = await faultedInstall(plan);
    // A cut registry upload is abandoned: a new session (new path) for the same digest must be committed (201).
    row('upload cut halfway', 'registry', plan.registry[0]!, (i) => proxies.registry.seen.some((s) => s.at > i.at && s.method === 'PUT' && digestOf(s.path) === digestOf(i.path) && s.status === 201), 'a new upload session for the same blob, committed', result);
    row('upload cut halfway', 's3', plan.s3[0]!, (i) => after(proxies.s3, i).some((s) => s.status === 200), 'the PUT sent again whole', result);
    ran++;
  });
});
