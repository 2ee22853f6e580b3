import { z } from 'zod';

/** The bundle format (DESIGN.md §3): this version is written; readers refuse newer ones. */
export const BUNDLE_FORMAT_VERSION = 1;

const sha256Hex = z.string().regex(/^[a-f0-9]{64}$/);
const digest = z.string().regex(/^sha256:[a-f0-9]{64}$/);
/** Entry paths: relative, `/`-separated, no `.`/`..`/empty components (checked again on read). */
const entryPath = z.string().min(1).max(4096).refine((p) => !p.startsWith('/') && p.split('/').every((c) => c !== '' && c !== '.' && c !== '..') && !p.includes('\\') && !p.includes('\0'), 'not a safe relative path');

export const entrySchema = z.object({ path: entryPath, size: z.number().int().nonnegative(), sha256: sha256Hex });

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
  /** The newest bundle format it reads. */
  formatVersion: z.number().int().positive(),
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
  /** Every entry after bundle.json and its signature, in tar order. */
  entries: z.array(entrySchema),
});

export type BundleManifest = z.infer<typeof bundleManifestSchema>;
export type BundleEntry = z.infer<typeof entrySchema>;
export type BundleImage = z.infer<typeof imageSchema>;
export type BundleArtifact = z.infer<typeof artifactSchema>;
export type BundleInstaller = z.infer<typeof installerSchema>;

/** The fixed names of the first entries (DESIGN.md §3). */
export const MANIFEST_PATH = 'bundle.json';
export const SIGNATURE_PATH = 'bundle.json.sig';
export const SUMS_PATH = 'SHA256SUMS';
/** Where the installer executable goes, so `tar -xf BUNDLE tool/` gets it alone. */
export const INSTALLER_PATH = 'tool/cartesia-airgap';
