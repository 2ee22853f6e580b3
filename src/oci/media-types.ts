/** Media types from the OCI Image Spec v1.1 and Docker Image Manifest V2 Schema 2. */
export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const DOCKER_MANIFEST_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
export const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';

export const INDEX_MEDIA_TYPES: readonly string[] = [OCI_INDEX, DOCKER_MANIFEST_LIST];
export const MANIFEST_MEDIA_TYPES: readonly string[] = [OCI_MANIFEST, DOCKER_MANIFEST];

/** Manifests larger than this are refused (the Distribution spec's recommended limit). */
export const MAX_MANIFEST_BYTES = 4 << 20;

/** What we send as Accept for manifests: every type we can carry byte-for-byte. */
export const MANIFEST_ACCEPT = [OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST].join(', ');

export const isIndex = (mediaType: string): boolean => INDEX_MEDIA_TYPES.includes(mediaType);
export const isManifest = (mediaType: string): boolean => MANIFEST_MEDIA_TYPES.includes(mediaType);
export const isManifestLike = (mediaType: string): boolean => isIndex(mediaType) || isManifest(mediaType);

/**
 * The media type of manifest bytes whose carrier gave none (a layout entry found by digest, a
 * registry answering with a generic Content-Type): the `mediaType` field, else the shape.
 */
export function sniffMediaType(bytes: Uint8Array): string | undefined {
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof doc !== 'object' || doc === null) return undefined;
  const o = doc as Record<string, unknown>;
  if (typeof o.mediaType === 'string' && isManifestLike(o.mediaType)) return o.mediaType;
  if (Array.isArray(o.manifests)) return OCI_INDEX;
  if (typeof o.config === 'object' && Array.isArray(o.layers)) return OCI_MANIFEST;
  return undefined;
}
