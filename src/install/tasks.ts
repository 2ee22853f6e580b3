import type { KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { ListrTask } from 'listr2';
import { manifestSha256Of, type BundleArtifact } from '../bundle/manifest.ts';
import type { OpenedBundle } from '../bundle/reader.ts';
import type { Recipe } from '../bundle/recipe.ts';
import { checkManifestSignature, verifyBundle } from '../bundle/verify.ts';
import type { LoginOptions } from '../oci/auth/credentials.ts';
import type { EndpointOptions, Transport } from '../oci/http/transport.ts';
import type { PutResult, S3Sink } from '../objects/s3.ts';
import type { Facts } from '../render/values.ts';
import { writeFileAtomic } from '../util/atomic.ts';
import { EntryHashes } from '../tar/hash-thread.ts';
import { fileSha256 } from '../util/file-sha256.ts';
import { mib } from '../util/format.ts';
import { mapBounded } from '../util/bounded.ts';
import { throttledOutput } from '../progress/throttle.ts';
import { registryClient } from '../oci/stores.ts';
import type { RegistryClient } from '../oci/registry/client.ts';
import { checkRelied, type ReliedFound } from './delta.ts';
import { pushImages, type PushedImage, type RegistryTarget } from './images.ts';
import { planInstall, type InstallPlan } from './plan.ts';
import { receiptImages, type Receipt } from './receipt.ts';
import { renderForInstall, type Rendered } from './render.ts';

export interface InstallOptions {
  bundle: OpenedBundle;
  recipe: Recipe;
  /** Absent: --insecure-skip-verify (hashes are still checked, the signature is not). */
  publicKey?: KeyObject;
  transport: Transport;
  registry: { target: RegistryTarget; login: LoginOptions; endpoint?: EndpointOptions; description: string };
  s3?: S3Sink;
  facts: Facts;
  valuesOut: string;
  envOut?: string;
  receiptOut: string;
  dryRun: boolean;
  concurrency: number;
  toolVersion: string;
  /** Also take the bundle file's own sha256 (each volume's) for the receipt: one more pass over it. */
  fileSha256: boolean;
}

export interface InstallContext {
  startedAt: Date;
  /** A delta: where the target holds what the bundle leaves out. */
  relied?: ReliedFound;
  /** What the target lacks. */
  plan?: InstallPlan;
  fingerprint?: string | null;
  /** The bundle file's sha256 (a split bundle: bundle.json's); null unless asked for (`fileSha256`). */
  bundleSha256?: string | null;
  /** The sha256 of bundle.json, which lists every entry's: the bundle's identity, known without reading the payload. */
  manifestSha256?: string;
  /** A split bundle's volume files. */
  volumes?: { path: string; sha256: string | null; size: number }[];
  rendered?: Rendered;
  pushed?: PushedImage[];
  uploaded?: PutResult[];
  receipt?: Receipt;
}

/** The sha256 of every tar of the bundle, one after the other. */
async function tarSha256s(b: OpenedBundle): Promise<string[]> {
  const out: string[] = [];
  for (const t of b.tars) out.push(await fileSha256(t.file));
  return out;
}

/** ETags an earlier install into this bucket recorded, from its receipt (absent or unreadable: none). */
async function knownEtags(receiptFile: string, s3: S3Sink): Promise<Map<string, { sha256: string; etag: string }>> {
  const known = new Map<string, { sha256: string; etag: string }>();
  const old = await readFile(receiptFile, 'utf8').then((t) => JSON.parse(t) as Partial<Receipt>, () => undefined);
  const st = old?.storage;
  if (!st || st.endpoint !== s3.description || st.bucket !== s3.bucket || !Array.isArray(st.objects)) return known;
  for (const o of st.objects) if (typeof o?.etag === 'string' && typeof o.sha256 === 'string') known.set(o.key, { sha256: o.sha256, etag: o.etag });
  return known;
}

/** The phases of `install`: everything it will send is checked before the first write anywhere. */
export function installTasks(o: InstallOptions): ListrTask<InstallContext>[] {
  const m = o.bundle.manifest;
  // One login (and token cache) for the plan, the delta check and the push.
  let registry: Promise<RegistryClient> | undefined;
  const client = (): Promise<RegistryClient> =>
    (registry ??= registryClient(o.registry.target.host, o.transport, { login: o.registry.login, ...(o.registry.endpoint ? { endpoint: o.registry.endpoint } : {}) }));
  return [
    {
      title: 'Check the signature and ask the target what it already holds',
      task: async (ctx, task) => {
        // Nothing in bundle.json is acted on, not even to ask the target, before its signature holds.
        if (o.publicKey) checkManifestSignature(o.bundle.manifestBytes, o.bundle.signature, m, o.publicKey);
        // A dry run changes nothing and may run with no target reachable: it plans to send everything.
        ctx.plan = o.dryRun
          ? { imagesToPush: m.images, toUpload: m.artifacts, present: [] }
          : await planInstall({
              images: m.images,
              artifacts: m.artifacts,
              ...(m.images.length ? { client: await client() } : {}),
              target: o.registry.target,
              ...(o.s3 ? { s3: o.s3, knownEtags: await knownEtags(o.receiptOut, o.s3) } : {}),
              concurrency: o.concurrency,
            });
        const p = ctx.plan;
        task.title = `To send: ${p.imagesToPush.length} of ${m.images.length} images, ${p.toUpload.length} of ${m.artifacts.length} artifacts`;
      },
    },
    {
      title: 'Verify the bundle (signature, then every entry to be sent)',
      task: async (ctx, task) => {
        const p = ctx.plan!;
        const show = throttledOutput(task);
        let done = 0;
        // Read only what is used: the chart always, image blobs if any image is sent, the artifacts sent.
        const used = new Set([m.release.archive.path, ...p.toUpload.map((a) => a.path)]);
        const images = p.imagesToPush.length > 0;
        // The servers wait for this phase: the entries are hashed on two cores, or, when the
        // files' own sha256s are asked for, those on one and the entries on the other. A run that
        // sends nothing checks only the chart, not worth starting a thread for.
        const sending = images || p.toUpload.length > 0;
        const thread = sending && !o.fileSha256 ? new EntryHashes() : undefined;
        const [result, shas] = await Promise.all([
          verifyBundle(o.bundle, {
            ...(o.publicKey ? { publicKey: o.publicKey } : {}),
            ...(thread ? { thread } : {}),
            only: (path) => used.has(path) || (images && path.startsWith('images/')),
            onEntry: (path, bytes, total) => {
              if (bytes === total) show(`${++done} entries checked, last ${path}`);
            },
          }).finally(() => thread?.close()),
          o.fileSha256 ? tarSha256s(o.bundle) : Promise.resolve(undefined),
        ]);
        ctx.fingerprint = result.fingerprint;
        ctx.manifestSha256 = manifestSha256Of(o.bundle.manifestBytes);
        if (o.bundle.volumes) {
          // No one file is the bundle: its identity is the signed bundle.json every volume carries.
          ctx.bundleSha256 = ctx.manifestSha256;
          ctx.volumes = o.bundle.tars.map((t, i) => ({ path: t.file, sha256: shas?.[i] ?? null, size: t.index.fileSize }));
        } else ctx.bundleSha256 = shas?.[0] ?? null;
        const left = result.skipped ? `; ${result.skipped} not needed, left unread` : '';
        task.title = `Verified ${result.volumes ? `${result.volumes.count} volumes, ` : ''}${result.entries} entries (${mib(result.bytes)})${left}, ${o.publicKey ? `signed by ${result.fingerprint}` : 'SIGNATURE NOT CHECKED (--insecure-skip-verify)'}`;
      },
    },
    {
      title: 'Render values.yaml from the bundled chart',
      task: async (ctx, task) => {
        ctx.rendered = await renderForInstall(o.bundle, o.recipe, o.facts);
        const v = ctx.rendered.values;
        task.title = `values.yaml: ${v.set.length} keys set${v.unknown.length ? `, not in this chart: ${v.unknown.join(', ')}` : ''}${v.schemaErrors.length ? `, schema: ${v.schemaErrors.join('; ')}` : ''}`;
      },
    },
    {
      title: 'Check the target holds what this delta relies on',
      skip: () => !m.base && 'not a delta',
      task: async (ctx, task) => {
        const base = m.base!;
        ctx.relied = await checkRelied(base, {
          client: await client(),
          target: o.registry.target,
          imageNames: m.images.map((i) => i.name),
          ...(o.s3 ? { s3: o.s3 } : {}),
          concurrency: o.concurrency,
        });
        const r = ctx.relied;
        task.title = `The target holds all this delta relies on from release ${base.release.version}: ${r.manifests} manifests, ${r.blobs} blobs, ${r.artifacts} artifacts`;
      },
    },
    {
      title: 'Send the images and the artifacts',
      skip: () => o.dryRun && 'dry run',
      task: async (ctx, task) => {
        const show = throttledOutput(task);
        let images = '';
        let artifacts = '';
        const progress = (): void => show([images, artifacts].filter(Boolean).join('; '));
        // The registry and the object store are separate servers: both are kept busy at once. Both
        // run to their end, so a failure is reported the same way whichever came first.
        const [pushed, uploaded] = await Promise.allSettled([
          pushAll(o, ctx, client, (t) => ((images = t), progress())),
          uploadAll(o, ctx, (t) => ((artifacts = t), progress())),
        ]);
        if (pushed.status === 'rejected') throw pushed.reason;
        if (uploaded.status === 'rejected') throw uploaded.reason;
        task.title = [pushed.value, uploaded.value].filter(Boolean).join('; ');
      },
    },
    {
      title: 'Write values, .env and the receipt',
      skip: () => o.dryRun && 'dry run',
      task: async (ctx, task) => {
        const r = ctx.rendered!;
        await writeFileAtomic(o.valuesOut, r.values.text);
        if (o.envOut && r.env) await writeFileAtomic(o.envOut, r.env.text);
        ctx.receipt = receipt(o, ctx);
        await writeFileAtomic(o.receiptOut, `${JSON.stringify(ctx.receipt, null, 2)}\n`);
        task.title = `Wrote ${o.valuesOut}${o.envOut && r.env ? `, ${o.envOut}` : ''} and the receipt ${o.receiptOut}`;
      },
    },
  ];
}

/** Every image into the registry; returns the line that sums it up. */
async function pushAll(o: InstallOptions, ctx: InstallContext, client: () => Promise<RegistryClient>, show: (text: string) => void): Promise<string> {
  const m = o.bundle.manifest;
  let bytes = 0;
  const locations = ctx.relied?.locations;
  ctx.pushed = await pushImages(m.images, o.bundle.layoutFiles('images/'), o.registry.target, {
    client: await client(),
    ...(locations ? { locate: (digest: string) => locations.get(digest) } : {}),
    transport: o.transport,
    login: o.registry.login,
    ...(o.registry.endpoint ? { endpoint: o.registry.endpoint } : {}),
    concurrency: o.concurrency,
    onEvent: (name, e) => {
      if (e.type === 'blob-done') show(`${name}: ${mib((bytes += e.bytesTransferred))} uploaded`);
    },
  });
  const up = ctx.pushed.reduce((n, p) => n + p.result.blobs.uploaded, 0);
  const mounted = ctx.pushed.reduce((n, p) => n + p.result.blobs.mounted, 0);
  return `Pushed ${ctx.pushed.length} images to ${o.registry.description}: ${up} blobs uploaded, ${mounted} mounted, ${mib(bytes)}`;
}

/** The artifacts the plan found missing into S3; returns the line that sums it up ('' without S3). */
async function uploadAll(o: InstallOptions, ctx: InstallContext, show: (text: string) => void): Promise<string> {
  const m = o.bundle.manifest;
  if (!o.s3 || m.artifacts.length === 0) return '';
  const s3 = o.s3;
  const { toUpload, present } = ctx.plan!;
  await s3.ensureBucket();
  let finished = 0;
  // The plan found these absent or different: no need to ask again before sending. The verify
  // pass hashed every one of them moments ago, so the sink does not hash them a second time, and
  // their signed MD5 lets the server check the bytes of a large one sent in one request.
  const send = async (a: BundleArtifact): Promise<PutResult> => {
    const r = await s3.put(a.key, a.size, a.sha256, async (range) => o.bundle.open(a.path, range?.start, range?.length), { listed: null, verified: true, ...(a.md5 ? { md5: a.md5 } : {}) });
    show(`${++finished} of ${toUpload.length} artifacts, last ${a.key}`);
    return r;
  };
  // Large objects in their own lanes (the sink runs one multipart upload at a time, its parts side
  // by side; those sent in one streamed request run side by side); small ones, where round trips
  // and not bytes set the pace, several at once beside them.
  const lanes = await Promise.allSettled([mapBounded(toUpload.filter((a) => a.size > s3.partSize), o.concurrency, send), mapBounded(toUpload.filter((a) => a.size <= s3.partSize), o.concurrency, send)]);
  const sent = lanes.flatMap((l) => {
    if (l.status === 'rejected') throw l.reason;
    return l.value;
  });
  const skipped: PutResult[] = present.map((p) => ({ key: p.artifact.key, how: 'skipped', size: p.artifact.size, sha256: p.artifact.sha256, ...(p.etag ? { etag: p.etag } : {}) }));
  const byKey = new Map([...sent, ...skipped].map((r) => [r.key, r]));
  ctx.uploaded = m.artifacts.map((a) => byKey.get(a.key)!);
  return `Artifacts in ${s3.description}: ${sent.length} uploaded, ${skipped.length} already there`;
}

function receipt(o: InstallOptions, ctx: InstallContext): Receipt {
  const m = o.bundle.manifest;
  const v = ctx.rendered!.values;
  return {
    formatVersion: 1,
    tool: { name: 'cartesia-airgap', version: o.toolVersion },
    startedAt: ctx.startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    bundle: { path: o.bundle.file, sha256: ctx.bundleSha256 ?? null, manifestSha256: ctx.manifestSha256!, size: o.bundle.size, ...(ctx.volumes ? { volumes: ctx.volumes } : {}), signer: ctx.fingerprint ?? null, verified: Boolean(o.publicKey), release: { version: m.release.version, tag: m.release.tag } },
    registry: ctx.pushed ? { endpoint: o.registry.description, images: receiptImages(ctx.pushed) } : null,
    storage: o.s3 && ctx.uploaded ? { endpoint: o.s3.description, bucket: o.s3.bucket, objects: ctx.uploaded.map((u) => ({ key: u.key, sha256: u.sha256, size: u.size, how: u.how, ...(u.etag ? { etag: u.etag } : {}) })) } : null,
    values: { path: o.valuesOut, set: v.set.map((s) => ({ path: s.path, value: s.value })), unknown: v.unknown, schemaErrors: v.schemaErrors },
    env: o.envOut && ctx.rendered!.env ? { path: o.envOut } : null,
    ...(m.base && ctx.relied
      ? { base: { manifestSha256: m.base.manifestSha256, signer: m.base.signer.fingerprint, release: m.base.release, found: { manifests: ctx.relied.manifests, blobs: ctx.relied.blobs, artifacts: ctx.relied.artifacts } } }
      : {}),
  };
}
