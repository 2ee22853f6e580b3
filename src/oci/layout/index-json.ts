import { OciError } from '../errors.ts';
import { OCI_INDEX } from '../media-types.ts';
import type { Descriptor } from '../types.ts';

/** Image-layout annotations (OCI Image Spec annotations.md) and containerd's full-name one. */
export const REF_NAME = 'org.opencontainers.image.ref.name';
export const IMAGE_NAME = 'io.containerd.image.name';

export interface ImageIndex {
  schemaVersion: 2;
  mediaType?: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
}

export const MAX_INDEX_JSON_BYTES = 16 << 20;

export const emptyIndex = (): ImageIndex => ({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [] });

export function parseIndexJson(bytes: Buffer, where: string): ImageIndex {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new OciError('LAYOUT', `${where}/index.json is not JSON`);
  }
  const idx = doc as ImageIndex;
  if (typeof idx !== 'object' || idx === null || idx.schemaVersion !== 2 || !Array.isArray(idx.manifests)) {
    throw new OciError('LAYOUT', `${where}/index.json is not an OCI image index (schemaVersion 2 with manifests)`);
  }
  for (const m of idx.manifests) {
    if (typeof m?.digest !== 'string' || typeof m.size !== 'number' || typeof m.mediaType !== 'string') {
      throw new OciError('LAYOUT', `${where}/index.json has an entry without mediaType, digest and size`);
    }
  }
  return idx;
}

/** Serialised with sorted entries so the same images always give the same bytes. */
export function serializeIndexJson(idx: ImageIndex): string {
  const key = (d: Descriptor) => `${d.annotations?.[REF_NAME] ?? ''}\0${d.digest}`;
  const manifests = [...idx.manifests].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
  return `${JSON.stringify({ ...idx, manifests }, null, 2)}\n`;
}
