import { createHash, type KeyObject } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import type { ListrTask } from 'listr2';
import type { OpenedBundle } from '../bundle/reader.ts';
import type { Recipe } from '../bundle/recipe.ts';
import { verifyBundle } from '../bundle/verify.ts';
import type { LoginOptions } from '../oci/auth/credentials.ts';
import type { EndpointOptions, Transport } from '../oci/http/transport.ts';
import type { PutResult, S3Sink } from '../objects/s3.ts';
import type { Facts } from '../render/values.ts';
import { writeFileAtomic } from '../util/atomic.ts';
import { mapBounded } from '../util/bounded.ts';
import { throttledOutput } from '../progress/throttle.ts';
import { registryClient } from '../oci/stores.ts';
import type { RegistryClient } from '../oci/registry/client.ts';
import { checkRelied, type ReliedFound } from './delta.ts';
import { pushImages, type PushedImage, type RegistryTarget } from './images.ts';
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
}

export interface InstallContext {
  startedAt: Date;
  /** A delta: where the target holds what the bundle leaves out. */
  relied?: ReliedFound;
  fingerprint?: string | null;
  bundleSha256?: string;
  /** A split bundle's volume files. */
  volumes?: { path: string; sha256: string; size: number }[];
  rendered?: Rendered;
  pushed?: PushedImage[];
  uploaded?: PutResult[];
  receipt?: Receipt;
}

const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

async function fileSha256(file: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(file, { highWaterMark: 1 << 20 }), async (src: AsyncIterable<Buffer>) => {
    for await (const c of src) h.update(c);
  });
  return h.digest('hex');
}

/** The sha256 of every tar of the bundle, one after the other. */
async function tarSha256s(b: OpenedBundle): Promise<string[]> {
  const out: string[] = [];
  for (const t of b.tars) out.push(await fileSha256(t.file));
  return out;
}

/** The phases of `install`: everything is checked before the first write anywhere. */
export function installTasks(o: InstallOptions): ListrTask<InstallContext>[] {
  const m = o.bundle.manifest;
  // One login (and token cache) for the delta check and the push.
  let registry: Promise<RegistryClient> | undefined;
  const client = (): Promise<RegistryClient> =>
    (registry ??= registryClient(o.registry.target.host, o.transport, { login: o.registry.login, ...(o.registry.endpoint ? { endpoint: o.registry.endpoint } : {}) }));
  return [
    {
      title: 'Verify the bundle (signature, then every entry)',
      task: async (ctx, task) => {
        const show = throttledOutput(task);
        let done = 0;
        const [result, shas] = await Promise.all([
          verifyBundle(o.bundle, {
            ...(o.publicKey ? { publicKey: o.publicKey } : {}),
            onEntry: (path, bytes, total) => {
              if (bytes === total) show(`${++done} entries checked, last ${path}`);
            },
          }),
          tarSha256s(o.bundle),
        ]);
        ctx.fingerprint = result.fingerprint;
        if (o.bundle.volumes) {
          // No one file is the bundle: its identity is the signed bundle.json every volume carries.
          ctx.bundleSha256 = createHash('sha256').update(o.bundle.manifestBytes).digest('hex');
          ctx.volumes = o.bundle.tars.map((t, i) => ({ path: t.file, sha256: shas[i]!, size: t.index.fileSize }));
        } else ctx.bundleSha256 = shas[0]!;
        task.title = `Verified ${result.volumes ? `${result.volumes.count} volumes, ` : ''}${result.entries} entries (${mib(result.bytes)}), ${o.publicKey ? `signed by ${result.fingerprint}` : 'SIGNATURE NOT CHECKED (--insecure-skip-verify)'}`;
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
      title: `Push ${m.images.length} images to ${o.registry.description}`,
      skip: () => o.dryRun && 'dry run',
      task: async (ctx, task) => {
        const show = throttledOutput(task);
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
            if (e.type === 'blob-done') {
              bytes += e.bytesTransferred;
              show(`${name}: ${mib(bytes)} uploaded`);
            }
          },
        });
        const up = ctx.pushed.reduce((n, p) => n + p.result.blobs.uploaded, 0);
        const mounted = ctx.pushed.reduce((n, p) => n + p.result.blobs.mounted, 0);
        task.title = `Pushed ${ctx.pushed.length} images to ${o.registry.description}: ${up} blobs uploaded, ${mounted} mounted, ${mib(bytes)}`;
      },
    },
    {
      title: `Upload ${m.artifacts.length} artifacts`,
      skip: () => (o.dryRun ? 'dry run' : !o.s3 || m.artifacts.length === 0 ? 'no artifacts in this bundle' : false),
      task: async (ctx, task) => {
        const s3 = o.s3!;
        const show = throttledOutput(task);
        await s3.ensureBucket();
        // Several objects at once: most artifacts are small, so round trips, not bytes, set the pace.
        let finished = 0;
        ctx.uploaded = await mapBounded(m.artifacts, o.concurrency, async (a) => {
          const r = await s3.put(a.key, a.size, a.sha256, async () => o.bundle.open(a.path));
          show(`${++finished} of ${m.artifacts.length}: ${a.key}`);
          return r;
        });
        const up = ctx.uploaded.filter((u) => u.how === 'uploaded').length;
        task.title = `Artifacts in ${s3.description}: ${up} uploaded, ${ctx.uploaded.length - up} already there`;
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

function receipt(o: InstallOptions, ctx: InstallContext): Receipt {
  const m = o.bundle.manifest;
  const v = ctx.rendered!.values;
  return {
    formatVersion: 1,
    tool: { name: 'cartesia-airgap', version: o.toolVersion },
    startedAt: ctx.startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    bundle: { path: o.bundle.file, sha256: ctx.bundleSha256!, size: o.bundle.size, ...(ctx.volumes ? { volumes: ctx.volumes } : {}), signer: ctx.fingerprint ?? null, verified: Boolean(o.publicKey), release: { version: m.release.version, tag: m.release.tag } },
    registry: ctx.pushed ? { endpoint: o.registry.description, images: receiptImages(ctx.pushed) } : null,
    storage: o.s3 && ctx.uploaded ? { endpoint: o.s3.description, bucket: o.s3.bucket, objects: ctx.uploaded.map((u) => ({ key: u.key, sha256: u.sha256, size: u.size, how: u.how })) } : null,
    values: { path: o.valuesOut, set: v.set.map((s) => ({ path: s.path, value: s.value })), unknown: v.unknown, schemaErrors: v.schemaErrors },
    env: o.envOut && ctx.rendered!.env ? { path: o.envOut } : null,
    ...(m.base && ctx.relied
      ? { base: { manifestSha256: m.base.manifestSha256, signer: m.base.signer.fingerprint, release: m.base.release, found: { manifests: ctx.relied.manifests, blobs: ctx.relied.blobs, artifacts: ctx.relied.artifacts } } }
      : {}),
  };
}
