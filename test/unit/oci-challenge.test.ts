import { describe, expect, it } from 'vitest';
import { parseChallenges } from '../../src/oci/auth/challenge.ts';

describe('parseChallenges', () => {
  it("parses Docker Hub's Bearer challenge", () => {
    const header = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nats:pull"';
    expect(parseChallenges(header)).toEqual([
      { scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/nats:pull' } },
    ]);
  });

  it('splits several challenges in one header value', () => {
    expect(parseChallenges('Basic realm="a", Bearer realm="b",service="c"')).toEqual([
      { scheme: 'basic', params: { realm: 'a' } },
      { scheme: 'bearer', params: { realm: 'b', service: 'c' } },
    ]);
  });

  it('splits a Bearer challenge followed by a Basic one, with spaces around = and commas', () => {
    expect(parseChallenges('Bearer realm = "https://t/x" , service=reg ,  Basic realm="r"')).toEqual([
      { scheme: 'bearer', params: { realm: 'https://t/x', service: 'reg' } },
      { scheme: 'basic', params: { realm: 'r' } },
    ]);
  });

  it('joins header arrays (several WWW-Authenticate lines)', () => {
    expect(parseChallenges(['Basic realm="a"', 'Bearer realm="b"'])).toEqual([
      { scheme: 'basic', params: { realm: 'a' } },
      { scheme: 'bearer', params: { realm: 'b' } },
    ]);
  });

  it('keeps commas inside quoted values and unescapes backslash escapes', () => {
    const [c] = parseChallenges('Bearer realm="https://auth.example/token",scope="repository:a/b:pull,push",error="say \\"hi\\", \\\\ok"');
    expect(c?.params).toEqual({ realm: 'https://auth.example/token', scope: 'repository:a/b:pull,push', error: 'say "hi", \\ok' });
  });

  it('keeps a scope holding several space-separated scopes intact', () => {
    const [c] = parseChallenges('Bearer realm="r",scope="repository:a:pull repository:b:pull,push"');
    expect(c?.params.scope).toBe('repository:a:pull repository:b:pull,push');
    expect(c?.params.scope?.split(' ')).toEqual(['repository:a:pull', 'repository:b:pull,push']);
  });

  it('lowercases the scheme and parameter names but not values', () => {
    expect(parseChallenges('bearer Realm="https://Auth.Example/Token",SERVICE="Reg"')).toEqual([
      { scheme: 'bearer', params: { realm: 'https://Auth.Example/Token', service: 'Reg' } },
    ]);
    expect(parseChallenges('BASIC realm="x"')[0]?.scheme).toBe('basic');
  });

  it('accepts unquoted token values (RFC 9110 token68-free form)', () => {
    expect(parseChallenges('Bearer service=reg.example,realm="https://auth.example/token",error=insufficient_scope')[0]?.params).toEqual({
      realm: 'https://auth.example/token',
      service: 'reg.example',
      error: 'insufficient_scope',
    });
  });

  it('returns no challenges for an empty or missing header', () => {
    expect(parseChallenges(undefined)).toEqual([]);
    expect(parseChallenges('')).toEqual([]);
    expect(parseChallenges('  ,  ')).toEqual([]);
  });

  it('takes a scheme without parameters', () => {
    expect(parseChallenges('Negotiate')).toEqual([{ scheme: 'negotiate', params: {} }]);
    expect(parseChallenges('Negotiate, Basic realm="x"')).toEqual([
      { scheme: 'negotiate', params: {} },
      { scheme: 'basic', params: { realm: 'x' } },
    ]);
  });

  it('survives an unterminated quoted value without looping', () => {
    const out = parseChallenges('Bearer realm="https://auth.example/tok');
    expect(out).toEqual([{ scheme: 'bearer', params: { realm: 'https://auth.example/tok' } }]);
  });
});
