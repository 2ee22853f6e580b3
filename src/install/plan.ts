/**
 * What `install` must send, asked of the target before the bundle's payload is read: an image
 * whose tag already names the bundle's digest is complete there (a registry stores a manifest only
 * once everything it references is stored), and an object with the same size and sha256 is
 * already the bundle's. Install then verifies, and reads, only what it will send; a re-run onto a
 * complete target reads nothing but bundle.json, its signature and the chart.
 */
import type { BundleArtifact, BundleImage } from '../bundle/manifest.ts';
import { isOciError } from '../oci/errors.ts';
import type { RegistryClient } from '../oci/registry/client.ts';
import { RemoteRepository } from '../oci/registry/repository.ts';
import type { S3Sink } from '../objects/s3.ts';
import { mapBounded } from '../util/bounded.ts';
import { targetRepository, type RegistryTarget } from './images.ts';

export interface ArtifactPlan {
  artifact: BundleArtifact;
  /** The object's ETag when it is already there (recorded in the receipt). */
  etag?: string;
}

export interface InstallPlan {
  /** Images whose tag in the target does not name the bundle's digest. */
  imagesToPush: BundleImage[];
  toUpload: BundleArtifact[];
  present: ArtifactPlan[];
}

export interface PlanOptions {
  images: BundleImage[];
  artifacts: BundleArtifact[];
  client?: RegistryClient;
  target: RegistryTarget;
  s3?: S3Sink;
  /**
   * ETags of objects an earlier install uploaded or checked with these bytes (from its receipt).
   * A listed object with that ETag and size is taken as present without asking for its metadata;
   * the ETag changes whenever the object is written again.
   */
  knownEtags?: Map<string, { sha256: string; etag: string }>;
  concurrency: number;
}

export async function planInstall(o: PlanOptions): Promise<InstallPlan> {
  const imagesToPush = o.client ? await missingImages(o.client, o.target, o.images, o.concurrency) : o.images;
  const { toUpload, present } = o.s3 ? await missingObjects(o.s3, o.artifacts, o.knownEtags, o.concurrency) : { toUpload: o.artifacts, present: [] };
  return { imagesToPush, toUpload, present };
}

async function missingImages(client: RegistryClient, target: RegistryTarget, images: BundleImage[], concurrency: number): Promise<BundleImage[]> {
  const tagged = await mapBounded(images, concurrency, async (img) => {
    try {
      return (await new RemoteRepository(client, targetRepository(target, img.name)).resolve(img.tag)).digest === img.digest;
    } catch (err) {
      if (isOciError(err, 'NOT_FOUND')) return false;
      throw err;
    }
  });
  return images.filter((_, i) => !tagged[i]);
}

async function missingObjects(s3: S3Sink, artifacts: BundleArtifact[], known: PlanOptions['knownEtags'], concurrency: number): Promise<Pick<InstallPlan, 'toUpload' | 'present'>> {
  // One listing instead of a request per object: most keys of a first install are absent.
  const listed = await s3.list('');
  const there = await mapBounded(artifacts, concurrency, async (a): Promise<ArtifactPlan | undefined> => {
    const l = listed.get(a.key);
    if (!l || l.size !== a.size) return undefined;
    const k = known?.get(a.key);
    if (k && k.sha256 === a.sha256 && k.etag === l.etag) return { artifact: a, etag: l.etag };
    const h = await s3.head(a.key);
    return h && h.size === a.size && h.sha256 === a.sha256 ? { artifact: a, ...(h.etag ? { etag: h.etag } : {}) } : undefined;
  });
  return { toUpload: artifacts.filter((_, i) => !there[i]), present: there.filter((p) => p !== undefined) };
}
