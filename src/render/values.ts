import { readFile } from 'node:fs/promises';
import { Ajv, type ErrorObject } from 'ajv';
import { Ajv2019 } from 'ajv/dist/2019.js';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { Document, isMap, isScalar, isSeq, parseDocument, Scalar, type YAMLError } from 'yaml';
import { z } from 'zod';
import { CodedError } from '../util/errors.ts';
import { readShipped, shippedName } from '../util/package-files.ts';

export type RenderErrorCode = 'BAD_TEMPLATE' | 'BAD_VALUES' | 'BAD_SCHEMA' | 'RENDER_FAILED';
export class RenderError extends CodedError<RenderErrorCode> {}

/** What `install` knows (registry, tag, storage class …); undefined = not given, so the entries using it are skipped. */
export type Facts = Record<string, string | number | boolean | undefined>;
export type ScalarValue = string | number | boolean | null;

const PLACEHOLDER = /\{\{\s*([A-Za-z][A-Za-z0-9_]*)\s*\}\}/g;
const WHOLE = /^\{\{\s*([A-Za-z][A-Za-z0-9_]*)\s*\}\}$/;

// A stray `{{` is a typo in the template, not text to pass on to the chart.
export const templateString = z.string().refine((s) => !/\{\{|\}\}/.test(s.replace(PLACEHOLDER, '')), 'a placeholder must look like {{factName}}');
export const templateValue = z.union([templateString, z.number(), z.boolean(), z.null()]);
const keyPath = z.string().regex(/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/, 'a dotted key path such as release.releaseTag (a number indexes a list)');
const entries = z.record(keyPath, templateValue).default({});

export const overlaySchema = z
  .strictObject({ set: entries, optional: entries })
  .refine((o) => Object.keys(o.set).every((k) => !(k in o.optional)), 'a key path is in both set and optional');
export type Overlay = z.infer<typeof overlaySchema>;

/** Shipped with the tool, relative to the package root. */
export const DEFAULT_VALUES_OVERLAY = 'templates/values-overlay.yaml';

/**
 * A template with its facts filled in. A value that is exactly one placeholder takes the fact's own
 * type (so `"{{authenticate}}"` can give a boolean); anything else becomes text. Literals pass as is.
 */
export function fill(template: ScalarValue, facts: Facts): { value: ScalarValue; missing: string[] } {
  if (typeof template !== 'string') return { value: template, missing: [] };
  const names = [...template.matchAll(PLACEHOLDER)].map((m) => m[1]!);
  const missing = [...new Set(names.filter((n) => facts[n] === undefined))];
  if (missing.length) return { value: null, missing };
  const whole = WHOLE.exec(template);
  if (whole) return { value: facts[whole[1]!]!, missing };
  return { value: template.replace(PLACEHOLDER, (_, n: string) => String(facts[n])), missing };
}

/** One line: `<name> line N: <what yaml says>` (yaml's own message carries a code frame). */
function yamlError(code: RenderErrorCode, name: string, err: YAMLError): RenderError {
  const what = (err.message.split('\n')[0] ?? err.code).replace(/ at line \d+, column \d+:?$/, '');
  return new RenderError(code, `${name} line ${err.linePos?.[0].line ?? '?'}: ${what}`);
}

/** Parses and validates a template file's text (values overlay or .env mapping). */
export function parseTemplate<T>(schema: z.ZodType<T>, text: string, name: string): T {
  const doc = parseDocument(text);
  if (doc.errors[0]) throw yamlError('BAD_TEMPLATE', name, doc.errors[0]);
  const parsed = schema.safeParse(doc.toJS() ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new RenderError('BAD_TEMPLATE', `${name} is invalid at ${issue.path.map(String).join('.') || '(top)'}: ${issue.message}`);
  }
  return parsed.data;
}

/** Reads and validates a template: `path`, or the one shipped with the tool as `shipped`. */
export async function loadTemplate<T>(schema: z.ZodType<T>, path: string | undefined, shipped: string): Promise<T> {
  const file = path ?? shippedName(shipped);
  let text: string;
  try {
    text = path ? await readFile(path, 'utf8') : (await readShipped(shipped)).toString('utf8');
  } catch (err) {
    throw new RenderError('BAD_TEMPLATE', `cannot read the template ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  return parseTemplate(schema, text, file);
}

export const parseOverlay = (text: string, name = 'values overlay'): Overlay => parseTemplate(overlaySchema, text, name);
export const loadOverlay = (file?: string): Promise<Overlay> => loadTemplate(overlaySchema, file, DEFAULT_VALUES_OVERLAY);

export interface ValuesInput {
  /** The chart's own values.yaml, as text. */
  chartValues: string;
  /** The chart's values.schema.json, as text, when it has one. */
  schema?: string;
  /** The overlay template's text, or an overlay already parsed (e.g. with recipe keys added). */
  overlay: string | Overlay;
  facts: Facts;
  /** How messages name the values file (default values.yaml). */
  name?: string;
}

export interface ValuesResult {
  text: string;
  /** Keys written; `added` when the chart had the parent but not the key (`set` entries only). */
  set: { path: string; value: ScalarValue; added: boolean }[];
  /** Overlay keys this chart has no scalar for (the parent is missing, or the key for `optional` ones). */
  unknown: string[];
  /** Entries left alone because a fact was not given. */
  skipped: { path: string; facts: string[] }[];
  /** values.schema.json violations of the result, like `/infra/authenticate: must be boolean`. */
  schemaErrors: string[];
}

type Edit = { at: number; end: number; text: string; order: number };

/** The node at `keys` under `node`: map keys by name, list items by number; aliases are not followed. */
function walk(node: unknown, keys: string[]): unknown {
  for (const k of keys) {
    if (isMap(node)) node = node.get(k, true);
    else if (isSeq(node) && /^\d+$/.test(k)) node = node.get(Number(k), true);
    else return undefined;
  }
  return node;
}

/** A scalar as YAML text on one line: the old quoting style where it can carry the value, double quotes in flow context or for line breaks. */
function scalarText(value: ScalarValue, type?: Scalar.Type, flow = false): string {
  const s = new Scalar(value);
  if (typeof value === 'string') {
    s.type = flow || /[\n\r]/.test(value) ? 'QUOTE_DOUBLE' : type === 'QUOTE_SINGLE' || type === 'QUOTE_DOUBLE' ? type : 'PLAIN';
  }
  return new Document(s).toString({ lineWidth: 0 }).replace(/\n$/, '');
}

/**
 * The chart's values.yaml with the overlay applied. The Document API finds the nodes; the new values
 * are spliced into the original text, so every other byte (comments, their spacing, indentation,
 * quoting, anchors) stays as the chart wrote it; `doc.toString()` would re-space inline comments and
 * re-indent lists. The result is parsed again and every value read back before it is returned.
 */
export function renderValues(input: ValuesInput): ValuesResult {
  const name = input.name ?? 'values.yaml';
  const overlay = typeof input.overlay === 'string' ? parseOverlay(input.overlay) : input.overlay;
  const src = input.chartValues;
  const doc = parseDocument(src);
  if (doc.errors[0]) throw yamlError('BAD_VALUES', name, doc.errors[0]);
  const result: ValuesResult = { text: src, set: [], unknown: [], skipped: [], schemaErrors: [] };
  const edits: Edit[] = [];
  const all = [...Object.entries(overlay.set).map((e) => [...e, true] as const), ...Object.entries(overlay.optional).map((e) => [...e, false] as const)];
  for (const [order, [path, template, required]] of all.entries()) {
    const keys = path.split('.');
    const last = keys.pop()!;
    const parent = walk(doc.contents, keys);
    const node = walk(parent, [last]);
    // Only a `set` key may be added, and only into an existing block mapping: never a new parent.
    const addable = required && node === undefined && isMap(parent) && !parent.flow && parent.range && parent.items[0];
    if (!(isScalar(node) && node.range) && !addable) {
      result.unknown.push(path);
      continue;
    }
    const { value, missing } = fill(template, input.facts);
    if (missing.length) {
      result.skipped.push({ path, facts: missing });
      continue;
    }
    if (isScalar(node) && node.range) {
      const [at, end] = node.range;
      let text = scalarText(value, node.type, (isMap(parent) || isSeq(parent)) && parent.flow === true);
      // An empty value (`key:`) has a zero-width range: keep a space after the colon and before a comment.
      if (at === end) text = `${/\s/.test(src[at - 1] ?? ' ') ? '' : ' '}${text}${src[at] === '#' ? ' ' : ''}`;
      // Block scalars own their trailing line break; keep it.
      edits.push({ at, end, text: text + (/\s*$/.exec(src.slice(at, end))?.[0] ?? ''), order });
    } else if (isMap(parent) && parent.range) {
      const first = parent.items[0]!.key as { range?: [number, number, number] };
      const keyAt = first.range?.[0] ?? parent.range[0];
      const indent = ' '.repeat(keyAt - (src.lastIndexOf('\n', keyAt - 1) + 1));
      const at = parent.range[1];
      edits.push({ at, end: at, text: `${src[at - 1] === '\n' ? '' : '\n'}${indent}${scalarText(last)}: ${scalarText(value)}\n`, order });
    }
    result.set.push({ path, value, added: node === undefined });
  }
  // Last edit first, so earlier offsets stay valid; additions at one place keep the overlay's order.
  edits.sort((a, b) => b.at - a.at || b.order - a.order);
  let text = src;
  for (const e of edits) text = text.slice(0, e.at) + e.text + text.slice(e.end);
  result.text = text;

  const out = parseDocument(text);
  if (out.errors[0]) throw new RenderError('RENDER_FAILED', `rendering ${name} made invalid YAML (${out.errors[0].code}); please report this with the chart's values.yaml`);
  for (const s of result.set) {
    const got = walk(out.contents, s.path.split('.'));
    if (!isScalar(got) || got.value !== s.value) {
      throw new RenderError('RENDER_FAILED', `${name}: ${s.path} reads back as ${JSON.stringify(isScalar(got) ? got.value : got)}, not ${JSON.stringify(s.value)} (a tag on the chart's key?)`);
    }
  }
  if (input.schema !== undefined) result.schemaErrors = checkSchema(input.schema, out.toJS());
  return result;
}

const schemaMessage = (e: ErrorObject): string => {
  const p = e.params as { additionalProperty?: string; allowedValues?: unknown[] };
  const extra = p.additionalProperty !== undefined ? ` (${p.additionalProperty})` : p.allowedValues ? `: ${p.allowedValues.map((v) => JSON.stringify(v)).join(', ')}` : '';
  return `${e.instancePath || '/'}: ${e.message ?? e.keyword}${extra}`;
};

/**
 * Validates like `helm install` would, with ajv: Helm schemas use $ref, oneOf, pattern, minimum …,
 * which a home-made subset would pass silently. The draft follows `$schema` (07 when absent);
 * formats are not checked (ajv needs ajv-formats for them). A schema ajv cannot compile is reported
 * as one message, not thrown: the values are still usable.
 */
export function checkSchema(schemaText: string, data: unknown): string[] {
  let schema: unknown;
  try {
    schema = JSON.parse(schemaText);
  } catch (err) {
    throw new RenderError('BAD_SCHEMA', `values.schema.json is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof schema !== 'boolean' && (typeof schema !== 'object' || schema === null || Array.isArray(schema))) {
    throw new RenderError('BAD_SCHEMA', 'values.schema.json is not a JSON schema (an object or a boolean)');
  }
  const draft = typeof schema === 'object' ? String((schema as { $schema?: unknown }).$schema ?? '') : '';
  const opts = { allErrors: true, strict: false, validateFormats: false, validateSchema: false, logger: false as const };
  const ajv = draft.includes('2020-12') ? new Ajv2020(opts) : draft.includes('2019-09') ? new Ajv2019(opts) : new Ajv(opts);
  let validate;
  try {
    validate = ajv.compile(schema as object | boolean);
  } catch (err) {
    return [`values.schema.json could not be compiled, so the values were not checked against it: ${(err as Error).message}`];
  }
  return validate(data) ? [] : (validate.errors ?? []).map(schemaMessage);
}
