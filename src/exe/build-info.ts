/**
 * What a single executable is, written into it at build time as an ELF note (name
 * `cartesia-airgap`, type 1, JSON), so `bundle` can check and record the executable it carries
 * without running it (it may be bundling on another platform).
 */
import { z } from 'zod';

export const BUILD_INFO_NOTE = { name: 'cartesia-airgap', type: 1 } as const;
/** Node's own note holding the single-executable blob. */
export const SEA_BLOB_NOTE = 'NODE_SEA_BLOB';

export const buildInfoSchema = z.strictObject({
  name: z.literal('cartesia-airgap'),
  /** The tool version (package.json). */
  version: z.string().min(1),
  /** The Node runtime inside, e.g. v24.21.0. */
  node: z.string().regex(/^v\d+\.\d+\.\d+/),
  /** `process.platform-process.arch` of the runtime, e.g. linux-x64. */
  platform: z.string().min(1),
  /** The newest bundle format the executable reads (older ones are refused by bundle, not here). */
  formatVersion: z.number().nonnegative(),
});

export type BuildInfo = z.infer<typeof buildInfoSchema>;
