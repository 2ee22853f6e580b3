import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { MockAgent } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Authorizer } from '../../src/oci/auth/authorizer.ts';
import type { Credential } from '../../src/oci/auth/docker-config.ts';
import { isOciError } from '../../src/oci/errors.ts';
import { drain, Transport } from '../../src/oci/http/transport.ts';
import { RegistryClient } from '../../src/oci/registry/client.ts';
import { plainHeaders, rejection } from './helpers.ts';

const REG = 'reg.example';
const REALM = 'https://auth.example/token';
const PULL = 'repository:r:pull';
const PASSWORD = 'hunter2-very-secret';

interface Seen {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: string;
}

async function bodyText(body: unknown): Promise<string> {
  if (body == null) return '';
  if (typeof body === 'string') return body;
  if (Buffer.isBuffer(body) || body instanceof Uint8Array) return Buffer.from(body).toString('utf8');
  const chunks: Buffer[] = [];
  for await (const c of body as AsyncIterable<Uint8Array | string>) chunks.push(Buffer.from(c));
  return Buffer.concat(chunks).toString('utf8');
}

interface Bed {
  agent: MockAgent;
  transport: Transport;
  client: RegistryClient;
  registryCalls: Seen[];
  tokenCalls: Seen[];
  /** Tokens the registry accepts; remove one to revoke it. */
  valid: Set<string>;
}

interface BedOptions {
  credential?: Credential;
  registry?: string;
  /** What the registry origin is (Docker Hub's API host differs from its name). */
  apiOrigin?: string;
  challenge?: string;
  tokenStatus?: number;
  tokenBody?: (n: number) => Record<string, unknown>;
  tokenDelayMs?: number;
}

let beds: Bed[] = [];
afterEach(async () => {
  for (const b of beds) await b.agent.close();
  beds = [];
});

async function bed(opts: BedOptions = {}): Promise<Bed> {
  const agent = new MockAgent();
  agent.disableNetConnect();
  const transport = await Transport.create({}, { dispatcher: agent, retry: { baseDelayMs: 1, maxDelayMs: 5 } });
  const registry = opts.registry ?? REG;
  const client = new RegistryClient(registry, transport, new Authorizer(transport, async () => opts.credential));
  const b: Bed = { agent, transport, client, registryCalls: [], tokenCalls: [], valid: new Set() };
  const challenge = opts.challenge ?? `Bearer realm="${REALM}",service="${REG}",scope="${PULL}"`;
  agent
    .get(opts.apiOrigin ?? `https://${registry}`)
    .intercept({ path: () => true, method: () => true })
    .reply(async (req) => {
      const headers = plainHeaders(req.headers);
      b.registryCalls.push({ method: req.method, path: req.path, headers, body: await bodyText(req.body) });
      const auth = headers.authorization ?? '';
      const ok = challenge.startsWith('Basic') ? auth === `Basic ${Buffer.from(`alice:${PASSWORD}`).toString('base64')}` : b.valid.has(auth.replace(/^Bearer /, ''));
      return ok ? { statusCode: 200, data: 'ok' } : { statusCode: 401, data: '', responseOptions: { headers: { 'www-authenticate': challenge } } };
    })
    .persist();
  agent
    .get(new URL(challenge.startsWith('Bearer') ? (/realm="([^"]+)"/.exec(challenge)?.[1] ?? REALM) : REALM).origin)
    .intercept({ path: (p) => p.startsWith('/token'), method: () => true })
    .reply(async (req) => {
      b.tokenCalls.push({ method: req.method, path: req.path, headers: plainHeaders(req.headers), body: await bodyText(req.body) });
      if (opts.tokenDelayMs) await sleep(opts.tokenDelayMs);
      const n = b.tokenCalls.length;
      if (opts.tokenStatus && opts.tokenStatus !== 200) return { statusCode: opts.tokenStatus, data: '{"details":"no"}' };
      const token = `tok-${n}`;
      b.valid.add(token);
      return { statusCode: 200, data: JSON.stringify(opts.tokenBody?.(n) ?? { token, expires_in: 300 }), responseOptions: { headers: { 'content-type': 'application/json' } } };
    })
    .persist();
  beds.push(b);
  return b;
}

async function get(b: Bed, scopes: string[] = [PULL]): Promise<number> {
  const res = await b.client.send({ method: 'GET', path: '/v2/r/manifests/t', scopes, idempotent: true });
  await drain(res);
  return res.statusCode;
}

const query = (s: Seen) => new URL(s.path, 'https://x').searchParams;
const alice: Credential = { username: 'alice', password: PASSWORD };

describe('Authorizer: Bearer token flow', () => {
  it('answers a 401 with a token fetched with service, scope and Basic credentials, then retries with it', async () => {
    const b = await bed({ credential: alice });
    expect(await get(b)).toBe(200);
    expect(b.registryCalls.map((c) => c.headers.authorization)).toEqual([undefined, 'Bearer tok-1']);
    expect(b.tokenCalls).toHaveLength(1);
    const t = b.tokenCalls[0]!;
    expect(t.method).toBe('GET');
    expect(query(t).get('service')).toBe(REG);
    // Our scope and the challenge's are the same set: asked for once.
    expect(query(t).getAll('scope')).toEqual([PULL]);
    expect(t.headers.authorization).toBe(`Basic ${Buffer.from(`alice:${PASSWORD}`).toString('base64')}`);
  });

  it('adds the scopes the challenge names to the ones asked for', async () => {
    const b = await bed({ challenge: `Bearer realm="${REALM}",service="${REG}",scope="repository:r:pull,push"` });
    expect(await get(b)).toBe(200);
    expect(query(b.tokenCalls[0]!).getAll('scope').sort()).toEqual([PULL, 'repository:r:pull,push']);
    expect(b.tokenCalls[0]!.headers.authorization).toBeUndefined();
  });

  it('reuses the cached token for the same scopes and fetches another for a different scope set', async () => {
    const b = await bed({ credential: alice });
    await get(b);
    await get(b);
    await get(b, [PULL, PULL]);
    expect(b.tokenCalls).toHaveLength(1);
    // Known challenge: the next requests are authorized up front, with no 401 round trip.
    expect(b.registryCalls.slice(2).map((c) => c.headers.authorization)).toEqual(['Bearer tok-1', 'Bearer tok-1']);
    expect(await get(b, ['repository:other:pull'])).toBe(200);
    expect(b.tokenCalls).toHaveLength(2);
    expect(query(b.tokenCalls[1]!).getAll('scope')).toEqual(['repository:other:pull']);
    expect(b.registryCalls.at(-1)!.headers.authorization).toBe('Bearer tok-2');
  });

  it('shares one token fetch between concurrent requests for the same new scope', async () => {
    const b = await bed({ tokenDelayMs: 30 });
    await get(b);
    const codes = await Promise.all(Array.from({ length: 5 }, () => get(b, ['repository:x:pull'])));
    expect(codes).toEqual([200, 200, 200, 200, 200]);
    expect(b.tokenCalls).toHaveLength(2);
  });

  it('refreshes a token before it expires (expires_in 1 → refreshed after 750 ms)', async () => {
    const b = await bed({ tokenBody: (n) => ({ token: `tok-${n}`, expires_in: 1 }) });
    await get(b);
    await get(b);
    expect(b.tokenCalls).toHaveLength(1);
    // ttl 1000 ms minus min(30 s, ttl/4) = 750 ms of use.
    await sleep(800);
    await get(b);
    expect(b.tokenCalls).toHaveLength(2);
    expect(b.registryCalls.at(-1)!.headers.authorization).toBe('Bearer tok-2');
  });

  it('refetches exactly once when a cached token is refused (revoked), then succeeds', async () => {
    const b = await bed({ credential: alice });
    await get(b);
    b.valid.delete('tok-1');
    const before = b.registryCalls.length;
    expect(await get(b)).toBe(200);
    expect(b.tokenCalls).toHaveLength(2);
    expect(b.registryCalls.slice(before).map((c) => c.headers.authorization)).toEqual(['Bearer tok-1', 'Bearer tok-2']);
  });

  it('fails with UNAUTHORIZED when even the fresh token is refused', async () => {
    const b = await bed();
    b.valid.add = () => b.valid; // the registry never accepts what the token service issues
    const err = await rejection(get(b));
    expect(isOciError(err, 'UNAUTHORIZED'), String(err)).toBe(true);
    expect(err.message).toContain('pull on r');
    expect(b.tokenCalls).toHaveLength(1);
    expect(b.registryCalls).toHaveLength(2);
  });

  it('reports a token-endpoint 401 as UNAUTHORIZED naming the user, never the password', async () => {
    const b = await bed({ credential: alice, tokenStatus: 401 });
    const err = await rejection(get(b));
    expect(isOciError(err, 'UNAUTHORIZED'), String(err)).toBe(true);
    expect(err.message).toContain('"alice"');
    expect(err.message).toContain(REG);
    expect(err.message).not.toContain(PASSWORD);
    expect(err.message).not.toContain(Buffer.from(`alice:${PASSWORD}`).toString('base64'));
    expect(err.message).not.toContain('\n');
  });

  it('retries a token endpoint answering 503, and gives REGISTRY (retryable) when it keeps failing', async () => {
    const b = await bed({ tokenStatus: 503 });
    const err = await rejection(get(b));
    expect(isOciError(err, 'REGISTRY'), String(err)).toBe(true);
    expect((err as { retryable?: boolean }).retryable).toBe(true);
    expect(b.tokenCalls.length).toBe(b.transport.retry.retries + 1);
  });

  it('sends an identity token as an OAuth2 refresh_token grant (POST form)', async () => {
    const b = await bed({ credential: { username: '<token>', password: 'refresh-abc' }, tokenBody: (n) => ({ access_token: `tok-${n}`, expires_in: 300 }) });
    expect(await get(b)).toBe(200);
    const t = b.tokenCalls[0]!;
    expect(t.method).toBe('POST');
    expect(t.headers['content-type']).toBe('application/x-www-form-urlencoded');
    expect(t.headers.authorization).toBeUndefined();
    const form = new URLSearchParams(t.body);
    expect(form.get('grant_type')).toBe('refresh_token');
    expect(form.get('refresh_token')).toBe('refresh-abc');
    expect(form.get('service')).toBe(REG);
    expect(form.get('scope')).toBe(PULL);
    expect(form.get('client_id')).toBeTruthy();
  });

  it('never names the identity token in a refusal', async () => {
    const b = await bed({ credential: { username: '<token>', password: 'refresh-abc' }, tokenStatus: 401 });
    const err = await rejection(get(b));
    expect(isOciError(err, 'UNAUTHORIZED')).toBe(true);
    expect(err.message).not.toContain('refresh-abc');
  });

  // Air-gapped hosts often lack NTP: a token's lifetime counts from receipt, not issued_at.
  it('keeps using a token whose issued_at is behind the local clock', async () => {
    const b = await bed({ tokenBody: (n) => ({ token: `tok-${n}`, expires_in: 300, issued_at: new Date(Date.now() - 600_000).toISOString() }) });
    await get(b);
    await get(b);
    expect(b.tokenCalls).toHaveLength(1);
  });
});

describe('Authorizer: Basic', () => {
  const challenge = 'Basic realm="Registry Realm"';

  it('answers a Basic challenge with the login, then sends it up front', async () => {
    const b = await bed({ credential: alice, challenge });
    expect(await get(b)).toBe(200);
    expect(await get(b)).toBe(200);
    const basic = `Basic ${Buffer.from(`alice:${PASSWORD}`).toString('base64')}`;
    expect(b.registryCalls.map((c) => c.headers.authorization)).toEqual([undefined, basic, basic]);
    expect(b.tokenCalls).toHaveLength(0);
  });

  it('fails with a one-line UNAUTHORIZED when no login is given', async () => {
    const b = await bed({ challenge });
    const err = await rejection(get(b));
    expect(isOciError(err, 'UNAUTHORIZED'), String(err)).toBe(true);
    expect(err.message).toContain(REG);
    expect(err.message).toMatch(/login/);
    expect(err.message).not.toContain('\n');
    expect(b.registryCalls).toHaveLength(1);
  });

  it('fails with UNAUTHORIZED, without the password, when the login is refused', async () => {
    const b = await bed({ credential: { username: 'alice', password: 'wrong-pass-123' }, challenge });
    const first = await rejection(get(b));
    expect(isOciError(first, 'UNAUTHORIZED')).toBe(true);
    const second = await rejection(get(b));
    expect(isOciError(second, 'UNAUTHORIZED')).toBe(true);
    for (const e of [first, second]) expect(e.message).not.toContain('wrong-pass-123');
  });
});

describe('Authorizer: token realm trust', () => {
  let dir: string;
  let caFile: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'oci-auth-'));
    caFile = join(dir, 'ca.pem');
    await writeFile(caFile, '-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n');
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it("gives the realm host the registry's CA file and skip-verify", async () => {
    const b = await bed();
    await b.transport.configure(REG, { caFile, insecureSkipVerify: true });
    expect(b.transport.endpoint('auth.example')).toBeUndefined();
    await get(b);
    expect(b.transport.endpoint('auth.example')).toMatchObject({ caFile, insecureSkipVerify: true });
  });

  it('leaves a realm host that has its own settings alone', async () => {
    const b = await bed();
    await b.transport.configure(REG, { caFile });
    await b.transport.configure('auth.example', { insecureSkipVerify: true });
    await get(b);
    expect(b.transport.endpoint('auth.example')).toEqual({ insecureSkipVerify: true });
  });

  // Endpoints are keyed by API host (registry-1.docker.io), not the registry name (docker.io).
  it('gives the realm host the CA configured for Docker Hub under its API host', async () => {
    const b = await bed({ registry: 'docker.io', apiOrigin: 'https://registry-1.docker.io', challenge: 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io"' });
    await b.transport.configure('registry-1.docker.io', { caFile });
    expect(await get(b)).toBe(200);
    expect(b.transport.endpoint('auth.docker.io')?.caFile).toBe(caFile);
  });
});
