import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { parse } from 'yaml';
import { z } from 'zod';
import { OciError } from '../oci/errors.ts';
import { readShipped, shippedName } from '../util/package-files.ts';

const keyPath = z.string().regex(/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/, 'a dotted key path such as release.releaseTag');

export const recipeSchema = z.strictObject({
  name: z.string().regex(/^[a-z0-9-]+$/),
  release: z.strictObject({
    bucket: z.string().min(3),
    prefix: z.string().min(1),
    chart: z.strictObject({
      values: z.string().min(1),
      /** The chart's JSON schema for its values, when it has one. */
      schema: z.string().min(1).optional(),
      /** The Docker Compose .env template install renders. */
      envExample: z.string().min(1).optional(),
      releaseTag: keyPath,
      nats: z.strictObject({ registry: keyPath, repository: keyPath, tag: keyPath }),
    }),
  }),
  registry: z.string().min(1),
  images: z.array(z.strictObject({ name: z.string().regex(/^[a-z0-9._-]+$/), model: z.string().optional() })).min(1),
  customer: z.strictObject({
    bucket: z.string().includes('{customer}'),
    prefixes: z.array(z.string().min(1)).min(1),
  }),
});

export type Recipe = z.infer<typeof recipeSchema>;

/** The recipe shipped with the tool, relative to the package root. */
export const DEFAULT_RECIPE = 'bundles/cartesia.yaml';

export interface LoadedRecipe {
  recipe: Recipe;
  /** sha256 of the file's bytes, recorded in bundle.json. */
  sha256: string;
  file: string;
}

/** `file`, or the recipe shipped with the tool. */
export async function loadRecipe(path?: string): Promise<LoadedRecipe> {
  const file = path ?? shippedName(DEFAULT_RECIPE);
  let text: Buffer;
  try {
    text = path ? await readFile(path) : await readShipped(DEFAULT_RECIPE);
  } catch (err) {
    throw new OciError('UNSUPPORTED', `cannot read the recipe ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  const parsed = recipeSchema.safeParse(parse(text.toString('utf8')));
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new OciError('UNSUPPORTED', `the recipe ${file} is invalid at ${issue.path.join('.') || '(top)'}: ${issue.message}`);
  }
  return { recipe: parsed.data, sha256: createHash('sha256').update(text).digest('hex'), file };
}

/** The images for the asked models (all when none asked); an unknown model is an error naming the known ones. */
export function selectImages(recipe: Recipe, models: string[] | undefined): Recipe['images'] {
  const known = [...new Set(recipe.images.flatMap((i) => (i.model ? [i.model] : [])))];
  if (!models || models.length === 0) return recipe.images;
  const unknown = models.filter((m) => !known.includes(m));
  if (unknown.length) throw new OciError('BAD_REFERENCE', `unknown model ${unknown.join(', ')}; the recipe knows ${known.join(', ')}`);
  return recipe.images.filter((i) => !i.model || models.includes(i.model));
}

/** A dotted key path's value in parsed YAML, or undefined. */
export function valueAt(doc: unknown, path: string): unknown {
  let cur = doc;
  for (const k of path.split('.')) {
    if (typeof cur !== 'object' || cur === null) return undefined;
    cur = (cur as Record<string, unknown>)[k];
  }
  return cur;
}
