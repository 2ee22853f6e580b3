import { describe, expect, it } from 'vitest';
import { isCodedError } from '../../src/util/errors.ts';
import { loadEnvMapping, parseEnvMapping, quoteEnv, renderEnv } from '../../src/render/env.ts';
import { releaseTree } from '../fixtures/chart.ts';

const example = releaseTree({
  version: '1.4.0',
  releaseTag: 'sonic-20251118',
  sourceRegistry: 'us-docker.pkg.dev/cartesia-external/self-serve',
  nats: { registry: 'docker.io', repository: 'library/nats', tag: '2.10.22-alpine' },
}).find((f) => f.path.endsWith('local/.env.example'))!.text;

describe('renderEnv', () => {
  it('fills the synthetic release`s .env.example with the shipped mapping, keeping the rest', async () => {
    const r = renderEnv({ example, mapping: await loadEnvMapping(), facts: { registry: 'registry.internal:5000/cartesia', releaseTag: 'sonic-20260503' } });
    expect(r.text).toBe('# Docker Compose settings\nIMAGE_REGISTRY=registry.internal:5000/cartesia\nRELEASE_TAG=sonic-20260503\nWORKER_REPLICAS=1\n');
    expect(r.set).toEqual([
      { name: 'IMAGE_REGISTRY', value: 'registry.internal:5000/cartesia' },
      { name: 'RELEASE_TAG', value: 'sonic-20260503' },
    ]);
    expect(r.unknown).toEqual([]);
    expect(r.skipped).toEqual([]);
  });

  it('keeps export prefixes, inline comments, quotes` tails and CRLF line ends', () => {
    const text = '# head\r\nexport A=old # keep me\r\nB = "old # not a comment" # comment\r\nC=\'x\'\r\n  # A=commented\r\nD=old#part\r\n';
    const r = renderEnv({ example: text, mapping: { A: 'new', B: 'two words', C: '{{n}}', D: 'd' }, facts: { n: 4 } });
    expect(r.text).toBe("# head\r\nexport A=new # keep me\r\nB = 'two words' # comment\r\nC=4\r\n  # A=commented\r\nD=d\r\n");
  });

  it('reports mapped variables the example lacks, and skips those without facts', () => {
    const r = renderEnv({ example, mapping: { S3_ENDPOINT: '{{s3Endpoint}}', RELEASE_TAG: '{{releaseTag}}', WORKER_REPLICAS: 2 }, facts: {} });
    expect(r.unknown).toEqual(['S3_ENDPOINT']);
    expect(r.skipped).toEqual([{ name: 'RELEASE_TAG', facts: ['releaseTag'] }]);
    expect(r.set).toEqual([{ name: 'WORKER_REPLICAS', value: '2' }]);
    expect(r.text).toBe(example.replace('WORKER_REPLICAS=1', 'WORKER_REPLICAS=2'));
  });

  it('sets every line of a repeated variable', () => {
    expect(renderEnv({ example: 'A=1\nA=2\n', mapping: { A: '3' }, facts: {} }).text).toBe('A=3\nA=3\n');
  });
});

describe('quoteEnv (Compose .env rules)', () => {
  it('leaves plain values bare', () => {
    expect(quoteEnv('registry.internal:5000/cartesia')).toBe('registry.internal:5000/cartesia');
    expect(quoteEnv('')).toBe('');
  });
  it('single-quotes blanks, $, # and quotes it can carry literally', () => {
    expect(quoteEnv('a b')).toBe("'a b'");
    expect(quoteEnv('p$ss${X}')).toBe("'p$ss${X}'");
    expect(quoteEnv('a#b')).toBe("'a#b'");
    expect(quoteEnv('say "hi"')).toBe('\'say "hi"\'');
  });
  it('double-quotes with escapes what single quotes cannot carry', () => {
    expect(quoteEnv("it's $5")).toBe('"it\'s $$5"');
    expect(quoteEnv('C:\\dir "x"')).toBe('"C:\\\\dir \\"x\\""');
    expect(quoteEnv('l1\nl2')).toBe('"l1\\nl2"');
  });
});

describe('env mapping', () => {
  it('is validated', () => {
    const bad = (text: string): string => { try { parseEnvMapping(text, 'm.yaml'); return ''; } catch (e) { expect(isCodedError(e, 'BAD_TEMPLATE')).toBe(true); return (e as Error).message; } };
    expect(bad('vars:\n  1BAD: x\n')).toMatch(/^m\.yaml is invalid at vars\.1BAD: /);
    expect(bad('vars:\n  A: "{{"\n')).toMatch(/placeholder/);
    expect(bad('vars:\n  A: null\n')).toMatch(/invalid at vars\.A/);
    expect(parseEnvMapping('vars:\n  A: 1\n  B: true\n')).toEqual({ A: 1, B: true });
  });
});
