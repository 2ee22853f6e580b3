import type { OpenedBundle } from '../bundle/reader.ts';
import type { Recipe } from '../bundle/recipe.ts';
import { readArchiveFiles } from '../bundle/release-archive.ts';
import { loadEnvMapping, renderEnv, type EnvResult } from '../render/env.ts';
import { loadOverlay, renderValues, type Facts, type ValuesResult } from '../render/values.ts';
import { CodedError } from '../util/errors.ts';

export interface Rendered {
  values: ValuesResult;
  env?: EnvResult;
}

/**
 * values.yaml (and the Compose .env) for this install, rendered in memory from the chart inside
 * the bundled release archive: nothing is written until the images and artifacts are in place.
 */
export async function renderForInstall(b: OpenedBundle, recipe: Recipe, facts: Facts): Promise<Rendered> {
  const { chart } = recipe.release;
  const wanted = [chart.values, ...(chart.schema ? [chart.schema] : []), ...(chart.envExample ? [chart.envExample] : [])];
  const { files } = await readArchiveFiles(b.open(b.manifest.release.archive.path), wanted);
  const chartValues = files.get(chart.values);
  if (chartValues === undefined) throw new CodedError('NOT_FOUND', `the bundled release has no ${chart.values}; this bundle does not match the recipe`);
  const schema = chart.schema ? files.get(chart.schema) : undefined;
  const values = renderValues({ chartValues, ...(schema !== undefined ? { schema } : {}), overlay: await loadOverlay(), facts, name: chart.values });
  const example = chart.envExample ? files.get(chart.envExample) : undefined;
  const env = example === undefined ? undefined : renderEnv({ example, mapping: await loadEnvMapping(), facts });
  return { values, ...(env ? { env } : {}) };
}
