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
import type { BlobOrigin, LayoutFiles } from '../oci/types.ts';
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

/**
 * Pushes every image of the bundle into `PREFIX/<name>:<tag>`, reading blobs from the bundle by
 * offset; digests stay the same; blobs the registry already has are skipped; a blob pushed to
 * one repository is mounted into the next instead of uploaded again; tags are written last.
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
  const seen = new Map<string, BlobOrigin>();
  const pushed: PushedImage[] = [];
  for (const image of images) {
    const repository = targetRepository(target, image.name);
    const dst = new RemoteRepository(client, repository);
    const result = await copyGraph(src, dst, image.ref, image.tag, {
      ...(opts.concurrency ? { concurrency: opts.concurrency } : {}),
      mountFrom: (d) => seen.get(d.digest) ?? locate?.(d.digest)?.origin,
      onEvent: (e) => {
        if (e.type === 'blob-done' && !seen.has(e.digest)) seen.set(e.digest, { registry: target.host, repository });
        opts.onEvent?.(image.name, e);
      },
    });
    // Everything under this image is in `repository` now, also what an interrupted earlier run
    // pushed (a stored manifest's subtree is skipped without events): later images mount those
    // blobs from here instead of uploading them again.
    for (const b of (await walkGraph(src, { mediaType: result.mediaType, digest: result.digest, size: result.size })).blobs) {
      if (!seen.has(b.digest)) seen.set(b.digest, { registry: target.host, repository });
    }
    pushed.push({ name: image.name, repository, tag: image.tag, digest: result.digest, result });
  }
  return pushed;
}
