import pLimit from 'p-limit';
import type { LoginOptions } from '../oci/auth/credentials.ts';
import { copyGraph, type CopyEvent, type CopyResult } from '../oci/copy.ts';
import { walkGraph } from '../oci/graph.ts';
import type { EndpointOptions, Transport } from '../oci/http/transport.ts';
import { LayoutReader } from '../oci/layout/reader.ts';
import { parseReference } from '../oci/reference.ts';
import { registryClient } from '../oci/stores.ts';
import type { RegistryClient } from '../oci/registry/client.ts';
import { RemoteRepository } from '../oci/registry/repository.ts';
import { FallbackSource } from '../oci/fallback.ts';
import type { BlobOrigin, Descriptor, LayoutFiles } from '../oci/types.ts';
import type { BundleImage } from '../bundle/manifest.ts';

/** `--registry HOST[:PORT]/PREFIX`, split; the prefix may be empty or several levels deep. */
export interface RegistryTarget {
  host: string;
  prefix: string;
}

export function parseRegistryTarget(value: string): RegistryTarget {
  // Parsed as a reference so host, port and path rules are the engine's own.
  const ref = parseReference(`${value.replace(/\/+$/, '')}/x`, null);
  if (!value.includes('/') && !/[.:]/.test(value) && value !== 'localhost') {
    return { host: value, prefix: '' };
  }
  return { host: ref.registry, prefix: ref.repository.split('/').slice(0, -1).join('/') };
}

export const targetRepository = (t: RegistryTarget, name: string): string => (t.prefix ? `${t.prefix}/${name}` : name);

export interface PushedImage {
  name: string;
  repository: string;
  tag: string;
  digest: string;
  result: CopyResult;
}

/** A blob one repository is uploading now: others that need it wait and mount it from there. */
interface Claim {
  repository: string;
  done: Promise<BlobOrigin>;
  resolve(origin: BlobOrigin): void;
  reject(err: unknown): void;
}

/**
 * Pushes every image of the bundle into `PREFIX/<name>:<tag>`, reading blobs from the bundle by
 * offset; digests stay the same; blobs the registry already has are skipped; a blob pushed to
 * one repository is mounted into the others instead of uploaded again; tags are written last.
 * The images go side by side, their blobs through one limiter of `concurrency` transfers: one
 * after another, each image's last large blobs left lanes idle while the next image waited
 * (4 GiB bed: the first image's two 515 MB layers alone for 5 s). A blob another image is
 * uploading is waited for and mounted, never sent twice.
 */
export async function pushImages(
  images: BundleImage[],
  layout: LayoutFiles,
  target: RegistryTarget,
  opts: {
    transport: Transport;
    login: LoginOptions;
    endpoint?: EndpointOptions;
    concurrency?: number;
    onEvent?: (image: string, e: CopyEvent) => void;
    /** A client already logged in to the target (else one is made). */
    client?: RegistryClient;
    /** A delta: where in the target each content the bundle leaves out is (found by checkRelied). */
    locate?: (digest: string) => RemoteRepository | undefined;
  },
): Promise<PushedImage[]> {
  const client = opts.client ?? (await registryClient(target.host, opts.transport, { login: opts.login, ...(opts.endpoint ? { endpoint: opts.endpoint } : {}) }));
  // install verified every blob it sends just before; the registry checks each digest again.
  const layoutReader = new LayoutReader(layout, { verifiedBlobs: true });
  // A delta's unchanged images are tagged from the manifests already in the target.
  const src = opts.locate ? new FallbackSource(layoutReader, opts.locate) : layoutReader;
  const { locate } = opts;
  const limit = pLimit({ concurrency: opts.concurrency ?? 4, rejectOnClear: true });
  const seen = new Map<string, BlobOrigin>();
  const claims = new Map<string, Claim>();
  // Each image's blobs, and which repositories each blob goes to: one an interrupted run left it
  // in is mounted from.
  const blobsOf = new Map<BundleImage, Descriptor[]>();
  const holders = new Map<string, string[]>();
  for (const image of images) {
    const repository = targetRepository(target, image.name);
    const { blobs } = await walkGraph(src, await src.resolve(image.ref));
    blobsOf.set(image, blobs);
    for (const b of blobs) holders.set(b.digest, [...(holders.get(b.digest) ?? []), repository]);
  }
  // Asked just before a blob would be uploaded into `repository`: where to mount it from instead.
  const mountFrom = (repository: string) => async (d: Descriptor): Promise<BlobOrigin | undefined> => {
    const known = seen.get(d.digest) ?? locate?.(d.digest)?.origin;
    if (known) return known;
    const claim = claims.get(d.digest);
    if (claim) return claim.repository === repository ? undefined : claim.done;
    claims.set(d.digest, claimFor(repository));
    for (const other of holders.get(d.digest) ?? []) {
      if (other !== repository && (await new RemoteRepository(client, other).hasBlob(d))) {
        const origin = { registry: target.host, repository: other };
        seen.set(d.digest, origin);
        return origin;
      }
    }
    return undefined;
  };
  const failures: unknown[] = [];
  const settled = await Promise.allSettled(
    images.map(async (image): Promise<PushedImage> => {
      const repository = targetRepository(target, image.name);
      const here: BlobOrigin = { registry: target.host, repository };
      const dst = new RemoteRepository(client, repository);
      try {
        const result = await copyGraph(src, dst, image.ref, image.tag, {
          limit,
          mountFrom: mountFrom(repository),
          onEvent: (e) => {
            if (e.type === 'blob-done') {
              const origin = seen.get(e.digest) ?? here;
              seen.set(e.digest, origin);
              const claim = claims.get(e.digest);
              if (claim?.repository === repository) claim.resolve(origin);
            }
            opts.onEvent?.(image.name, e);
          },
        });
        // Everything under this image is in `repository` now, also what an interrupted earlier run
        // pushed (a stored manifest's subtree is skipped without events): images still pushing
        // mount those blobs from here instead of uploading them again.
        for (const b of blobsOf.get(image) ?? []) if (!seen.has(b.digest)) seen.set(b.digest, here);
        return { name: image.name, repository, tag: image.tag, digest: result.digest, result };
      } catch (err) {
        failures.push(err);
        // Whoever waits for a blob this image was uploading fails too, rather than wait forever.
        for (const c of claims.values()) if (c.repository === repository) c.reject(err);
        throw err;
      }
    }),
  );
  // The first failure, not the aborts it caused by clearing the shared queue.
  if (failures.length > 0) throw failures.find((e) => !(e instanceof DOMException && e.name === 'AbortError')) ?? failures[0];
  return settled.map((r) => (r as PromiseFulfilledResult<PushedImage>).value);
}

function claimFor(repository: string): Claim {
  let resolve!: (origin: BlobOrigin) => void;
  let reject!: (err: unknown) => void;
  const done = new Promise<BlobOrigin>((res, rej) => ((resolve = res), (reject = rej)));
  done.catch(() => {}); // seen by the waiters, if any
  return { repository, done, resolve, reject };
}
