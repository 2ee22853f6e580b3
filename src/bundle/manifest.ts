import { createHash } from 'node:crypto';
import { z } from 'zod';

/** The bundle format (DESIGN.md §3) of a bundle in one tar. */
export const BUNDLE_FORMAT_VERSION = 1;
/**
 * 1.1: the same content split into volumes (`bundle --split-size`). Adds `volumes`; `entries`
 * then lists the data entries only, since there is no single SHA256SUMS (each volume carries its
 * own). Tools that read only 1 refuse it as newer. A bundle is written with the lowest version
 * that describes it, so a single-file bundle stays version 1, byte for byte.
 */
export const SPLIT_FORMAT_VERSION = 1.1;
/** The newest format this tool reads; newer ones are refused. */
export const READABLE_FORMAT_VERSION = SPLIT_FORMAT_VERSION;

/** bundle.json's sha256 (hex): what the signature covers and, as it lists every entry's sha256, the bundle's identity. */
export const manifestSha256Of = (json: Uint8Array): string => createHash('sha256').update(json).digest('hex');

const sha256Hex = z.string().regex(/^[a-f0-9]{64}$/);
const digest = z.string().regex(/^sha256:[a-f0-9]{64}$/);
/** Entry paths: relative, `/`-separated, no `.`/`..`/empty components (checked again on read). */
const entryPath = z.string().min(1).max(4096).refine((p) => !p.startsWith('/') && p.split('/').every((c) => c !== '' && c !== '.' && c !== '..') && !p.includes('\\') && !p.includes('\0'), 'not a safe relative path');

export const entrySchema = z.object({ path: entryPath, size: z.number().int().nonnegative(), sha256: sha256Hex });

/** A tar entry of one volume: a whole entry, the volume's SHA256SUMS, or a piece of an entry larger than a volume. */
export const volumeEntrySchema = entrySchema.extend({
  /** On a piece: the entry it is cut from, and the byte of that entry it starts at. */
  piece: z.object({ of: entryPath, offset: z.number().int().nonnegative() }).optional(),
});

export const volumesSchema = z.object({
  /** --split-size in bytes: no volume file is larger. */
  limit: z.number().int().positive(),
  /** Volume 1, 2, …: its tar entries after bundle.json and its signature, in tar order, its SHA256SUMS first. */
  list: z.array(z.object({ entries: z.array(volumeEntrySchema).min(2) })).min(1),
});

export const platformSchema = z.object({ os: z.string(), architecture: z.string(), variant: z.string().optional(), digest });

export const imageSchema = z.object({
  /** Short name, e.g. `cartesia-api`; installs go to `PREFIX/<name>:<tag>`. */
  name: z.string(),
  /** Where it was pulled from, e.g. `us-docker.pkg.dev/cartesia-external/self-serve/cartesia-api:sonic-20251118`. */
  source: z.string(),
  tag: z.string(),
  digest,
  mediaType: z.string(),
  /** The index.json ref name inside `images/`. */
  ref: z.string(),
  platforms: z.array(platformSchema),
  /** Bytes of every blob and manifest this image needs (shared ones counted in each image). */
  size: z.number().int().nonnegative(),
});

export const artifactSchema = z.object({
  bucket: z.string(),
  key: z.string(),
  size: z.number().int().nonnegative(),
  sha256: sha256Hex,
  md5: z.string().optional(),
  crc32c: z.string().optional(),
  /** Entry path in the bundle: `artifacts/<bucket>/<key>`. */
  path: entryPath,
});

/** Content a delta leaves out because its base holds it, named by digest (and size, for reports). */
const reliedContentSchema = z.object({ digest, size: z.number().int().nonnegative() });

/**
 * A delta's base (DESIGN.md §3): the signed bundle it was cut against, and every item left out
 * because that bundle holds it. Install checks the target holds each item before writing anything.
 */
export const baseSchema = z.object({
  /** sha256 of the base's bundle.json: what its signature covers, and through it every entry. */
  manifestSha256: sha256Hex,
  signer: z.object({ algorithm: z.literal('ecdsa-p256-sha256'), fingerprint: z.string() }),
  release: z.object({ version: z.string(), tag: z.string() }),
  /** The base's image names: the repositories its install pushed to, where relied-on blobs may be. */
  images: z.array(z.string()),
  relies: z.object({
    /** Per image of this bundle, the manifests and blobs it needs that are not carried here. */
    images: z.array(z.object({ name: z.string(), manifests: z.array(reliedContentSchema), blobs: z.array(reliedContentSchema) })),
    /** Artifacts installed by the base under the same key with the same bytes. */
    artifacts: z.array(z.object({ bucket: z.string(), key: z.string(), size: z.number().int().nonnegative(), sha256: sha256Hex, md5: z.string().optional() })),
  }),
});

/** The installer executable a bundle carries in tool/ (`npm run build:exe`), as its build note describes it. */
export const installerSchema = z.object({
  path: entryPath,
  size: z.number().int().nonnegative(),
  sha256: sha256Hex,
  /** The tool version inside it. */
  version: z.string(),
  /** Its Node runtime, e.g. v24.21.0, and where it runs, e.g. linux-x64. */
  node: z.string(),
  platform: z.string(),
  /** The newest bundle format it reads (1.1 reads split bundles). */
  formatVersion: z.number().positive(),
});

export const bundleManifestSchema = z.object({
  formatVersion: z.literal(BUNDLE_FORMAT_VERSION),
  tool: z.object({ name: z.literal('cartesia-airgap'), version: z.string() }),
  /** Absent when the bundle carries no installer (--no-installer). */
  installer: installerSchema.optional(),
  /** The fixed timestamp of every tar entry (SOURCE_DATE_EPOCH or the release's date). */
  created: z.string(),
  recipe: z.object({ name: z.string(), sha256: sha256Hex }),
  signer: z.object({ algorithm: z.literal('ecdsa-p256-sha256'), fingerprint: z.string() }).nullable(),
  release: z.object({
    version: z.string(),
    tag: z.string(),
    archive: z.object({ path: entryPath, sha256: sha256Hex, size: z.number().int().nonnegative() }),
  }),
  customer: z.object({ name: z.string().optional(), bucket: z.string() }).nullable(),
  images: z.array(imageSchema),
  artifacts: z.array(artifactSchema),
  /** Only in a delta: its base and what it relies on the base for (absent in a full bundle). */
  base: baseSchema.optional(),
  /** Every entry after bundle.json and its signature, in tar order. */
  entries: z.array(entrySchema),
});

/** A bundle split into volumes: `entries` lists every data entry whole, `volumes` where each is stored. */
export const splitManifestSchema = bundleManifestSchema.extend({
  formatVersion: z.literal(SPLIT_FORMAT_VERSION),
  volumes: volumesSchema,
});

export type BundleManifest = z.infer<typeof bundleManifestSchema>;
export type SplitManifest = z.infer<typeof splitManifestSchema>;
/** What a reader may find: a single-file bundle's manifest, or a split one's. */
export type AnyManifest = BundleManifest | SplitManifest;
export type BundleEntry = z.infer<typeof entrySchema>;
export type BundleImage = z.infer<typeof imageSchema>;
export type BundleArtifact = z.infer<typeof artifactSchema>;
export type VolumeEntry = z.infer<typeof volumeEntrySchema>;
export type BundleVolumes = z.infer<typeof volumesSchema>;
export type BundleBase = z.infer<typeof baseSchema>;
export type BundleInstaller = z.infer<typeof installerSchema>;

/** The fixed names of the first entries (DESIGN.md §3). */
export const MANIFEST_PATH = 'bundle.json';
export const SIGNATURE_PATH = 'bundle.json.sig';
export const SUMS_PATH = 'SHA256SUMS';
/** Where the installer executable goes, so `tar -xf BUNDLE tool/` gets it alone. */
export const INSTALLER_PATH = 'tool/cartesia-airgap';
