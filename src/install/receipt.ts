import type { PushedImage } from './images.ts';

/** What install did, for the security team: no credentials, only endpoints, digests and keys. */
export interface Receipt {
  formatVersion: 1;
  tool: { name: 'cartesia-airgap'; version: string };
  startedAt: string;
  finishedAt: string;
  /**
   * The bundle file's size, and its sha256 when asked for (`--file-sha256`: one more pass over the
   * file, null otherwise); for a split bundle, which has no one file, the sha256 of the bundle.json
   * every volume carries, the volumes' total size, and each volume's own (sha256 likewise).
   * `manifestSha256` (bundle.json's: the signature covers it, and it lists every entry's sha256)
   * identifies the bundle always.
   */
  bundle: { path: string; sha256: string | null; manifestSha256: string; size: number; volumes?: { path: string; sha256: string | null; size: number }[]; signer: string | null; verified: boolean; release: { version: string; tag: string } };
  registry: { endpoint: string; images: { name: string; repository: string; tag: string; digest: string; blobs: { uploaded: number; mounted: number; existed: number }; bytesUploaded: number }[] } | null;
  storage: { endpoint: string; bucket: string; objects: { key: string; sha256: string; size: number; how: 'uploaded' | 'skipped'; etag?: string }[] } | null;
  values: { path: string; set: { path: string; value: unknown }[]; unknown: string[]; schemaErrors: string[] } | null;
  env: { path: string } | null;
  /** A delta: its base, and how many relied-on items were found in the target before anything was written. */
  base?: { manifestSha256: string; signer: string; release: { version: string; tag: string }; found: { manifests: number; blobs: number; artifacts: number } };
}

export const receiptImages = (pushed: PushedImage[]): NonNullable<Receipt['registry']>['images'] =>
  pushed.map((p) => ({
    name: p.name,
    repository: p.repository,
    tag: p.tag,
    digest: p.digest,
    blobs: { uploaded: p.result.blobs.uploaded, mounted: p.result.blobs.mounted, existed: p.result.blobs.existed },
    bytesUploaded: p.result.bytesTransferred,
  }));
