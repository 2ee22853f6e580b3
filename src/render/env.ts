import { z } from 'zod';
import { fill, loadTemplate, parseTemplate, templateString, type Facts } from './values.ts';

const varName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'a variable name such as RELEASE_TAG');
export const envMappingSchema = z.strictObject({ vars: z.record(varName, z.union([templateString, z.number(), z.boolean()])) });
/** VARIABLE → value template (`{{fact}}` placeholders), as in templates/compose-env.yaml. */
export type EnvMapping = Record<string, string | number | boolean>;

export const DEFAULT_ENV_MAPPING = 'templates/compose-env.yaml';

export const parseEnvMapping = (text: string, name = 'env mapping'): EnvMapping => parseTemplate(envMappingSchema, text, name).vars;
export const loadEnvMapping = async (file?: string): Promise<EnvMapping> => (await loadTemplate(envMappingSchema, file, DEFAULT_ENV_MAPPING)).vars;

export interface EnvInput {
  /** local/.env.example, as text. */
  example: string;
  mapping: EnvMapping;
  facts: Facts;
}

export interface EnvResult {
  text: string;
  set: { name: string; value: string }[];
  /** Mapped variables the example has no line for (a commented-out line does not count); never added. */
  unknown: string[];
  /** Variables left as the example has them because a fact was not given. */
  skipped: { name: string; facts: string[] }[];
}

// `[export ]NAME=` as Compose reads it (compose-go dotenv: names may hold dots; spaces around `=`).
const LINE = /^(\s*(?:export\s+)?)([A-Za-z_][A-Za-z0-9_.]*)(\s*=[ \t]*)(.*)$/;

/**
 * A value written so Compose reads it back unchanged (docs.docker.com/compose/how-tos/environment-variables/
 * variable-interpolation/#env-file-syntax): bare when it has nothing special; single quotes when it has
 * `$`, `#`, spaces …, since they are literal (no interpolation); double quotes with escapes (and `$$`)
 * when it holds a quote, a backslash or a line break, which single quotes cannot carry everywhere.
 */
export function quoteEnv(value: string): string {
  if (/^[A-Za-z0-9_./:@%+,=-]*$/.test(value)) return value;
  if (!/['\\\n\r]/.test(value)) return `'${value}'`;
  const escaped = value.replace(/[\\"\n\r$]/g, (c) => ({ '\\': '\\\\', '"': '\\"', '\n': '\\n', '\r': '\\r', $: '$$' })[c]!);
  return `"${escaped}"`;
}

/** What follows the value on its line (an inline comment, trailing blanks), kept as it was. */
function afterValue(v: string): string {
  const q = v[0];
  if (q === '"' || q === "'") {
    for (let i = 1; i < v.length; i++) if (v[i] === q && v[i - 1] !== '\\') return v.slice(i + 1);
    return ''; // unterminated: the whole rest was the value
  }
  // Unquoted: a comment starts at a `#` after a blank (older Compose cut at any `#`; we never write one bare).
  const c = /\s+#/.exec(v);
  return c ? v.slice(c.index) : (/\s*$/.exec(v)?.[0] ?? '');
}

/**
 * `.env.example` with the mapped variables' values replaced: every other line, comment, `export`
 * prefix, inline comment and line ending is kept byte for byte. Mapped variables the example lacks
 * are reported, not added.
 */
export function renderEnv(input: EnvInput): EnvResult {
  const result: EnvResult = { text: input.example, set: [], unknown: [], skipped: [] };
  const values = new Map<string, string | undefined>();
  const lines = input.example.split('\n');
  for (const [i, line] of lines.entries()) {
    const cr = line.endsWith('\r') ? '\r' : '';
    const m = LINE.exec(cr ? line.slice(0, -1) : line);
    const name = m?.[2];
    if (!m || name === undefined || !Object.hasOwn(input.mapping, name)) continue;
    if (!values.has(name)) {
      const { value, missing } = fill(input.mapping[name]!, input.facts);
      if (missing.length) result.skipped.push({ name, facts: missing });
      else result.set.push({ name, value: String(value) });
      values.set(name, missing.length ? undefined : String(value));
    }
    const value = values.get(name);
    // Every line of a variable the example repeats is replaced: Compose takes the last one.
    if (value !== undefined) lines[i] = `${m[1]}${name}${m[3]}${quoteEnv(value)}${afterValue(m[4]!)}${cr}`;
  }
  result.unknown = Object.keys(input.mapping).filter((n) => !values.has(n));
  result.text = lines.join('\n');
  return result;
}
