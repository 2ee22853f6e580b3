import { describe, expect, it } from 'vitest';
import { isMap, isSeq, parse, parseDocument } from 'yaml';
import { isCodedError } from '../../src/util/errors.ts';
import { checkSchema, fill, loadOverlay, parseOverlay, renderValues, type Facts } from '../../src/render/values.ts';
import { releaseTree } from '../fixtures/chart.ts';

const tree = releaseTree({
  version: '1.4.0',
  releaseTag: 'sonic-20251118',
  sourceRegistry: 'us-docker.pkg.dev/cartesia-external/self-serve',
  nats: { registry: 'docker.io', repository: 'library/nats', tag: '2.10.22-alpine' },
});
const file = (suffix: string): string => tree.find((f) => f.path.endsWith(suffix))!.text;
const chartValues = file('cartesia/values.yaml');
const schema = file('cartesia/values.schema.json');

const facts: Facts = {
  registry: 'registry.internal:5000/cartesia',
  registryHost: 'registry.internal:5000',
  registryPath: 'cartesia/',
  releaseTag: 'sonic-20260503',
  storageClass: 'gp2',
};

/** Every key path in document order, list items by index. */
function keyOrder(text: string): string[] {
  const out: string[] = [];
  const visit = (node: unknown, prefix: string): void => {
    if (isMap(node)) for (const p of node.items) out.push(`${prefix}${String(p.key)}`), visit(p.value, `${prefix}${String(p.key)}.`);
    if (isSeq(node)) node.items.forEach((n, i) => visit(n, `${prefix}${i}.`));
  };
  visit(parseDocument(text).contents, '');
  return out;
}

/** Whole-line comments and the `# …` tail of lines that carry one. */
const comments = (text: string): string[] =>
  text.split('\n').flatMap((l) => (l.trim().startsWith('#') ? [l.trim()] : /\s(#.*)$/.exec(l)?.slice(1) ?? []));

describe('renderValues on the synthetic chart with the shipped overlay', async () => {
  const overlay = await loadOverlay();
  const r = renderValues({ chartValues, schema, overlay, facts });

  it('sets the documented keys, booleans as booleans', () => {
    const v = parse(r.text);
    expect(v.infra.imageRegistry).toBe('registry.internal:5000/cartesia');
    expect(v.release.releaseTag).toBe('sonic-20260503');
    expect(v.nats.image).toEqual({ registry: 'registry.internal:5000', repository: 'cartesia/nats', tag: '2.10.22-alpine' });
    expect(v.infra.authenticate).toBe(false);
    expect(v.licenseProxy.persistence).toEqual({ enabled: true, storageClass: 'gp2', size: '1Gi' });
    expect(r.set.map((s) => s.path)).toEqual(Object.keys(overlay.set));
    expect(r.set.every((s) => !s.added)).toBe(true);
    expect(r.skipped).toEqual([{ path: 'infra.imagePullSecrets.0.name', facts: ['pullSecret'] }]);
    expect(r.schemaErrors).toEqual([]);
  });

  it('keeps every comment, and the key order', () => {
    const kept = comments(r.text);
    for (const c of comments(chartValues)) expect(kept).toContain(c);
    expect(comments(chartValues).length).toBeGreaterThan(10);
    expect(keyOrder(r.text)).toEqual(keyOrder(chartValues));
  });

  it('changes only the lines of the keys it set, quoting style and comment spacing included', () => {
    const before = chartValues.split('\n');
    const after = r.text.split('\n');
    expect(after).toHaveLength(before.length);
    const changed = after.flatMap((l, i) => (l === before[i] ? [] : [l.trim()]));
    expect(changed).toEqual([
      'releaseTag: sonic-20260503',
      'imageRegistry: registry.internal:5000/cartesia',
      'authenticate: false',
      'enabled: true',
      'storageClass: "gp2"  # e.g. gp2; use your cluster\'s class',
      'registry: registry.internal:5000',
      'repository: cartesia/nats',
    ]);
  });

  it('reports the optional keys this chart lacks and invents none of them', () => {
    expect(r.unknown).toEqual(['licenseProxy.seedFile', 'storage.s3.endpoint', 'storage.s3.bucket', 'storage.s3.region', 'storage.s3.credentialsSecret']);
    const v = parse(r.text);
    expect(v.storage).toBeUndefined();
    expect(v.licenseProxy.seedFile).toBeUndefined();
  });

  it('is idempotent, and byte-identical when the facts equal the chart', () => {
    expect(renderValues({ chartValues: r.text, schema, overlay, facts }).text).toBe(r.text);
    const same = { set: { 'release.releaseTag': '{{releaseTag}}', 'licenseProxy.persistence.storageClass': '{{storageClass}}', 'infra.authenticate': true }, optional: {} };
    const again = renderValues({ chartValues, overlay: same, facts: { releaseTag: 'sonic-20251118', storageClass: '' } });
    expect(again.set).toHaveLength(3);
    expect(again.text).toBe(chartValues);
  });
});

describe('renderValues rules', () => {
  it('skips an entry whose fact is missing and leaves the line alone', async () => {
    const { storageClass: _, ...less } = facts;
    const r = renderValues({ chartValues, overlay: await loadOverlay(), facts: less });
    expect(r.skipped).toContainEqual({ path: 'licenseProxy.persistence.storageClass', facts: ['storageClass'] });
    expect(r.text).toContain('    storageClass: ""  # e.g. gp2');
  });

  it('keeps a whole-placeholder fact`s type and turns mixed text into a string', () => {
    expect(fill('{{n}}', { n: 3 })).toEqual({ value: 3, missing: [] });
    expect(fill('{{ b }}', { b: false })).toEqual({ value: false, missing: [] });
    expect(fill('{{p}}nats', { p: '' })).toEqual({ value: 'nats', missing: [] });
    expect(fill('{{a}}/{{b}}/{{a}}', { a: 'x' })).toEqual({ value: null, missing: ['b'] });
    const overlay = { set: { 'api.replicas': '{{n}}', 'api.port': '{{n}}0' }, optional: {} };
    const v = parse(renderValues({ chartValues, overlay, facts: { n: 3 } }).text);
    expect(v.api).toEqual({ image: 'cartesia-api', replicas: 3, port: '30' });
  });

  it('adds a set key under an existing mapping, never a missing parent or an optional key', () => {
    const overlay = {
      set: { 'licenseProxy.persistence.accessMode': 'ReadWriteOnce', 'ingress.host': 'tts.internal', 'nats.jetstream.enabled': false },
      optional: { 'licenseProxy.persistence.volumeName': 'v' },
    };
    const r = renderValues({ chartValues, overlay, facts: {} });
    expect(r.unknown).toEqual(['ingress.host', 'licenseProxy.persistence.volumeName']);
    expect(r.set).toEqual([
      { path: 'licenseProxy.persistence.accessMode', value: 'ReadWriteOnce', added: true },
      { path: 'nats.jetstream.enabled', value: false, added: false },
    ]);
    expect(r.text).toContain('    size: 1Gi\n    accessMode: ReadWriteOnce\n\nnats:');
    const v = parse(r.text);
    expect(v.ingress).toBeUndefined();
    expect(Object.keys(v.licenseProxy.persistence)).toEqual(['enabled', 'storageClass', 'size', 'accessMode']);
  });

  it('writes into list items, flow collections, empty values and block scalars', () => {
    const text = 'a:\n  - name: x  # first\n  - name: y\nf: {p: 1, q: [1, 2]}\ne:\nc:   # later\nb: |\n  old\n  text\nz: 1\n';
    const overlay = { set: { 'a.1.name': 'n', 'f.p': 'p, q', 'f.q.0': 'x]', e: 'E', c: true, b: 'two\nlines' }, optional: {} };
    const r = renderValues({ chartValues: text, overlay, facts: {} });
    expect(r.text).toBe('a:\n  - name: x  # first\n  - name: n\nf: {p: "p, q", q: ["x]", 2]}\ne: E\nc:   true # later\nb: "two\\nlines"\nz: 1\n');
    expect(parse(r.text)).toEqual({ a: [{ name: 'x' }, { name: 'n' }], f: { p: 'p, q', q: ['x]', 2] }, e: 'E', c: true, b: 'two\nlines', z: 1 });
  });

  it('quotes text that would otherwise read as another type', () => {
    const overlay = { set: { 'api.image': '{{v}}' }, optional: {} };
    for (const v of ['true', '5000', 'null', 'a: b', '# x', '']) {
      expect(parse(renderValues({ chartValues, overlay, facts: { v } }).text).api.image).toBe(v);
    }
  });

  it('reports schema violations of the result', () => {
    const overlay = { set: { 'infra.authenticate': '{{auth}}', 'release.maxUnavailable': '{{n}}' }, optional: {} };
    const r = renderValues({ chartValues, schema, overlay, facts: { auth: 'false', n: 1.5 } });
    expect(r.schemaErrors).toEqual(['/release/maxUnavailable: must be integer', '/infra/authenticate: must be boolean']);
    expect(renderValues({ chartValues, schema, overlay, facts: { auth: false, n: 1 } }).schemaErrors).toEqual([]);
  });

  it('follows the schema draft and names what it rejects', () => {
    const s2020 = JSON.stringify({ $schema: 'https://json-schema.org/draft/2020-12/schema', type: 'object', properties: { a: { enum: ['x', 'y'] }, t: { prefixItems: [{ type: 'string' }] } }, additionalProperties: false });
    expect(checkSchema(s2020, { a: 'z', t: [1], b: 1 })).toEqual(['/: must NOT have additional properties (b)', '/a: must be equal to one of the allowed values: "x", "y"', '/t/0: must be string']);
    const draft4 = JSON.stringify({ $schema: 'http://json-schema.org/draft-04/schema#', properties: { n: { minimum: 1, exclusiveMinimum: true } } });
    expect(checkSchema(draft4, {})[0]).toMatch(/^values\.schema\.json could not be compiled/);
    const err = (() => { try { checkSchema('{', {}); } catch (e) { return e; } })();
    expect(isCodedError(err, 'BAD_SCHEMA')).toBe(true);
  });

  it('refuses a values.yaml that is not YAML with one line naming the file and line', () => {
    const err = (() => { try { renderValues({ chartValues: 'a: 1\nb: 2\na: 3\n', overlay: { set: {}, optional: {} }, facts: {} }); } catch (e) { return e as Error; } })();
    expect(isCodedError(err, 'BAD_VALUES')).toBe(true);
    expect(err?.message).toBe('values.yaml line 3: Map keys must be unique');
  });

  it('validates the overlay', () => {
    const bad = (text: string): string => { try { parseOverlay(text, 'o.yaml'); return ''; } catch (e) { expect(isCodedError(e, 'BAD_TEMPLATE')).toBe(true); return (e as Error).message; } };
    expect(bad('set:\n  "a..b": 1\n')).toMatch(/^o\.yaml is invalid at set\.a\.\.b: /);
    expect(bad('set:\n  a: "{{ no-dash }}"\n')).toMatch(/placeholder must look like \{\{factName\}\}/);
    expect(bad('sett:\n  a: 1\n')).toMatch(/^o\.yaml is invalid at \(top\): /);
    expect(bad('set:\n  a: 1\noptional:\n  a: 2\n')).toMatch(/both set and optional/);
    expect(bad('set:\n  a: [1]\n')).toMatch(/invalid at set\.a/);
    expect(bad('set: {a: 1\n')).toMatch(/^o\.yaml line \d+: /);
    expect(parseOverlay('# nothing yet\n')).toEqual({ set: {}, optional: {} });
  });
});
