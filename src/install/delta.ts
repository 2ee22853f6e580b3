/**
 * Installing a delta: before anything is written, the target registry and bucket must already
 * hold every item the delta relies on (what its base's install put there). Read-only HEADs.
 */
import pLimit from 'p-limit';
import type { BundleBase } from '../bundle/manifest.ts';
import type { S3Sink } from '../objects/s3.ts';
import type { RegistryClient } from '../oci/registry/client.ts';
import { RemoteRepository } from '../oci/registry/repository.ts';
import { CodedError } from '../util/errors.ts';
import { targetRepository, type RegistryTarget } from './images.ts';

/** The target lacks what a delta relies on: `items` names each missing thing, one per line. */
export class BaseMissingError extends CodedError<'BASE_MISSING'> {
  readonly items: string[];
  constructor(message: string, items: string[]) {
    super('BASE_MISSING', message);
    this.items = items;
  }
}

export interface ReliedFound {
  /** Where each relied-on digest was found (its own repository first): read and mounted from there. */
  locations: Map<string, RemoteRepository>;
  manifests: number;
  blobs: number;
  artifacts: number;
}

/** A stored object is the relied-on one when its size and stored sha256 (or, without one, its plain MD5 ETag) match. */
function sameObject(have: { size: number; sha256?: string; etag?: string }, want: BundleBase['relies']['artifacts'][number]): string | undefined {
  if (have.size !== want.size) return `holds ${have.size} bytes, not ${want.size}`;
  if (have.sha256 !== undefined) return have.sha256 === want.sha256 ? undefined : `holds sha256 ${have.sha256}, not ${want.sha256}`;
  const md5Hex = want.md5 ? Buffer.from(want.md5, 'base64').toString('hex') : undefined;
  if (md5Hex && have.etag === md5Hex) return undefined;
  return 'has no sha256 metadata (not installed by cartesia-airgap) and no ETag that proves its bytes';
}

/**
 * HEADs every relied-on manifest and blob in its image's repository (then in the other
 * repositories the base's install pushed to, since a blob there can be mounted) and every
 * relied-on object in the bucket. Throws BaseMissingError listing everything absent.
 */
export async function checkRelied(
  base: BundleBase,
  opts: { client: RegistryClient; target: RegistryTarget; imageNames: string[]; s3?: S3Sink; concurrency?: number },
): Promise<ReliedFound> {
  const limit = pLimit(opts.concurrency ?? 8);
  const repos = new Map<string, RemoteRepository>();
  const repo = (name: string): RemoteRepository => {
    let r = repos.get(name);
    if (!r) repos.set(name, (r = new RemoteRepository(opts.client, targetRepository(opts.target, name))));
    return r;
  };
  // One HEAD per (repository, digest), however many images share the digest.
  const probes = new Map<string, Promise<boolean>>();
  const has = (name: string, kind: 'manifest' | 'blob', d: { digest: string; size: number }): Promise<boolean> => {
    const id = `${name}\0${d.digest}`;
    let p = probes.get(id);
    if (!p) {
      const desc = { mediaType: '', digest: d.digest, size: d.size };
      p = limit(() => (kind === 'manifest' ? repo(name).hasManifest(desc) : repo(name).hasBlob(desc)));
      probes.set(id, p);
    }
    return p;
  };
  const others = [...new Set([...opts.imageNames, ...base.images])];
  const locations = new Map<string, RemoteRepository>();
  const missing: string[] = [];
  const host = opts.target.host;
  const find = async (image: string, kind: 'manifest' | 'blob', d: { digest: string; size: number }): Promise<void> => {
    for (const name of [image, ...others.filter((n) => n !== image)]) {
      if (await has(name, kind, d)) {
        if (!locations.has(d.digest) || name === image) locations.set(d.digest, repo(name));
        return;
      }
    }
    missing.push(`${host}/${targetRepository(opts.target, image)}@${d.digest} (${kind}, ${d.size} bytes)`);
  };
  await Promise.all(base.relies.images.flatMap((i) => [...i.manifests.map((d) => find(i.name, 'manifest', d)), ...i.blobs.map((d) => find(i.name, 'blob', d))]));

  const s3 = opts.s3;
  await Promise.all(
    base.relies.artifacts.map((a) =>
      limit(async () => {
        if (!s3) return void missing.push(`${a.key} (sha256 ${a.sha256}): no S3 bucket to look in; pass --s3-bucket`);
        const have = await s3.head(a.key);
        const why = have ? sameObject(have, a) : 'is absent';
        if (why) missing.push(`s3://${s3.bucket}/${a.key} (sha256 ${a.sha256}, ${a.size} bytes) ${why}`);
      }),
    ),
  );
  if (missing.length > 0) {
    missing.sort();
    throw new BaseMissingError(
      `the target lacks ${missing.length} item${missing.length === 1 ? '' : 's'} this delta relies on; install its base first (release ${base.release.version}, bundle.json sha256 ${base.manifestSha256}) into this registry prefix and bucket, or install the full bundle; nothing was written`,
      missing,
    );
  }
  const manifests = new Set(base.relies.images.flatMap((i) => i.manifests.map((d) => d.digest)));
  const blobs = new Set(base.relies.images.flatMap((i) => i.blobs.map((d) => d.digest)));
  return { locations, manifests: manifests.size, blobs: blobs.size, artifacts: base.relies.artifacts.length };
}
