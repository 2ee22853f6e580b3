import { MockAgent } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { isOciError } from '../../src/oci/errors.ts';
import { describeNetworkError, drain, Transport, type RetryPolicy } from '../../src/oci/http/transport.ts';
import { plainHeaders } from './helpers.ts';

const ORIGIN = 'https://reg.example';
const URL_ = `${ORIGIN}/v2/r/blobs/sha256:abc`;

const netError = (code: string) => Object.assign(new Error(`simulated ${code}`), { code });

let agents: MockAgent[] = [];
afterEach(async () => {
  for (const a of agents) await a.close();
  agents = [];
});

async function setup(retry: Partial<RetryPolicy> = {}) {
  const agent = new MockAgent();
  agent.disableNetConnect();
  agents.push(agent);
  const transport = await Transport.create({}, { dispatcher: agent, retry: { baseDelayMs: 1, maxDelayMs: 5, ...retry } });
  return { agent, transport, reg: agent.get(ORIGIN) };
}

describe('Transport.send retries', () => {
  it('retries an idempotent GET on 503 until it gets 200', async () => {
    const { transport, reg } = await setup();
    let calls = 0;
    reg.intercept({ path: '/v2/r/blobs/sha256:abc' }).reply(() => ({ statusCode: ++calls < 3 ? 503 : 200, data: `attempt ${calls}` })).persist();
    const res = await transport.send({ url: URL_, method: 'GET', idempotent: true });
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe('attempt 3');
    expect(calls).toBe(3);
  });

  it('honours Retry-After: 0 on a 429 instead of its own (long) backoff', async () => {
    const { transport, reg } = await setup({ baseDelayMs: 20_000, maxDelayMs: 20_000 });
    reg.intercept({ path: '/v2/r/blobs/sha256:abc' }).reply(429, 'slow down', { headers: { 'retry-after': '0' } });
    reg.intercept({ path: '/v2/r/blobs/sha256:abc' }).reply(200, 'ok');
    const started = Date.now();
    const res = await transport.send({ url: URL_, method: 'GET', idempotent: true });
    expect(res.statusCode).toBe(200);
    await drain(res);
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it('waits the seconds a Retry-After asks for', async () => {
    const { transport, reg } = await setup();
    reg.intercept({ path: '/v2/r/blobs/sha256:abc' }).reply(503, '', { headers: { 'retry-after': '1' } });
    reg.intercept({ path: '/v2/r/blobs/sha256:abc' }).reply(200, 'ok');
    const started = Date.now();
    const res = await transport.send({ url: URL_, method: 'GET', idempotent: true });
    await drain(res);
    expect(res.statusCode).toBe(200);
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
  });

  it('returns the last 503 when the retries are used up', async () => {
    const { transport, reg } = await setup({ retries: 2 });
    let calls = 0;
    reg.intercept({ path: '/v2/r/blobs/sha256:abc' }).reply(() => ({ statusCode: 503, data: `attempt ${++calls}` })).persist();
    const res = await transport.send({ url: URL_, method: 'GET', idempotent: true });
    expect(res.statusCode).toBe(503);
    expect(await res.body.text()).toBe('attempt 3');
    expect(calls).toBe(3);
  });

  it('does not retry a non-idempotent POST on 503', async () => {
    const { transport, reg } = await setup();
    let calls = 0;
    reg.intercept({ path: '/v2/r/blobs/uploads/', method: 'POST' }).reply(() => ({ statusCode: 503, data: String(++calls) })).persist();
    const res = await transport.send({ url: `${ORIGIN}/v2/r/blobs/uploads/`, method: 'POST', body: '' });
    expect(res.statusCode).toBe(503);
    await drain(res);
    expect(calls).toBe(1);
  });

  it('does not retry a 4xx other than 429', async () => {
    const { transport, reg } = await setup();
    let calls = 0;
    reg.intercept({ path: '/v2/r/blobs/sha256:abc' }).reply(() => ({ statusCode: 404, data: String(++calls) })).persist();
    const res = await transport.send({ url: URL_, method: 'GET', idempotent: true });
    await drain(res);
    expect(res.statusCode).toBe(404);
    expect(calls).toBe(1);
  });

  it('retries a GET after a connection reset', async () => {
    const { transport, reg } = await setup();
    reg.intercept({ path: '/v2/r/blobs/sha256:abc' }).replyWithError(netError('ECONNRESET'));
    reg.intercept({ path: '/v2/r/blobs/sha256:abc' }).reply(200, 'ok');
    const res = await transport.send({ url: URL_, method: 'GET', idempotent: true });
    expect(await res.body.text()).toBe('ok');
  });

  it('turns a reset on a POST into a one-line retryable NETWORK error naming the origin', async () => {
    const { transport, reg } = await setup();
    reg.intercept({ path: '/v2/r/blobs/uploads/', method: 'POST' }).replyWithError(netError('ECONNRESET'));
    reg.intercept({ path: '/v2/r/blobs/uploads/', method: 'POST' }).reply(202, '');
    const err = await transport.send({ url: `${ORIGIN}/v2/r/blobs/uploads/`, method: 'POST', body: '' }).then(() => undefined, (e: unknown) => e);
    expect(isOciError(err, 'NETWORK'), String(err)).toBe(true);
    expect((err as Error).message).toContain(ORIGIN);
    expect((err as Error).message).toContain('ECONNRESET');
    expect((err as { retryable: boolean }).retryable).toBe(true);
  });

  it('does not retry a TLS refusal and names the fix', async () => {
    const { transport, reg } = await setup();
    let calls = 0;
    reg.intercept({ path: '/v2/r/blobs/sha256:abc' }).reply(() => {
      calls++;
      throw netError('UNABLE_TO_VERIFY_LEAF_SIGNATURE');
    }).persist();
    const err = await transport.send({ url: URL_, method: 'GET', idempotent: true }).then(() => undefined, (e: unknown) => e);
    expect(isOciError(err, 'TLS'), String(err)).toBe(true);
    expect((err as Error).message).toMatch(/CA certificate/);
    expect(calls).toBe(1);
  });
});

describe('describeNetworkError', () => {
  it("drops Node's --use-system-ca advice and hints at plain HTTP for a wrong TLS version", () => {
    const ca = describeNetworkError(
      Object.assign(new Error('unable to verify the first certificate; if the root CA is installed locally, try running Node.js with --use-system-ca'), { code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' }),
      'https://reg.example:5000/v2/',
    );
    expect(ca.code).toBe('TLS');
    expect(ca.message).not.toContain('use-system-ca');
    expect(ca.message).toContain('https://reg.example:5000');
    const plain = describeNetworkError(Object.assign(new Error('wrong version number'), { code: 'ERR_SSL_WRONG_VERSION_NUMBER' }), 'https://reg.example/v2/');
    expect(plain.message).toMatch(/plain HTTP/);
  });
});

describe('Transport.send redirects', () => {
  async function redirectBed(location: string, status = 307) {
    const b = await setup();
    const seen: { origin: string; path: string; headers: Record<string, string> }[] = [];
    b.reg.intercept({ path: '/v2/r/blobs/sha256:abc' }).reply((req) => {
      seen.push({ origin: ORIGIN, path: req.path, headers: plainHeaders(req.headers) });
      return { statusCode: status, data: '', responseOptions: { headers: { location } } };
    });
    const target = new URL(location, ORIGIN);
    b.agent.get(target.origin).intercept({ path: (p) => p.startsWith(target.pathname) }).reply((req) => {
      seen.push({ origin: target.origin, path: req.path, headers: plainHeaders(req.headers) });
      return { statusCode: 200, data: 'blob bytes' };
    });
    return { ...b, seen };
  }
  const headers = { authorization: 'Bearer registry-token', accept: '*/*' };

  it.each([301, 302, 303, 307, 308])('drops Authorization when a %i goes to another origin', async (status) => {
    const { transport, seen } = await redirectBed('https://storage.example/bucket/blob?X-Goog-Signature=abc', status);
    const res = await transport.send({ url: URL_, method: 'GET', headers, idempotent: true, followRedirects: true });
    expect(await res.body.text()).toBe('blob bytes');
    expect(seen.map((s) => s.origin)).toEqual([ORIGIN, 'https://storage.example']);
    expect(seen[0]!.headers.authorization).toBe('Bearer registry-token');
    expect(seen[1]!.headers.authorization).toBeUndefined();
    expect(seen[1]!.headers.accept).toBe('*/*');
    expect(seen[1]!.path).toContain('X-Goog-Signature=abc');
  });

  it('keeps Authorization on a same-origin (relative) redirect', async () => {
    const { transport, seen } = await redirectBed('/v2/r/blobs/elsewhere');
    const res = await transport.send({ url: URL_, method: 'GET', headers, idempotent: true, followRedirects: true });
    expect(await res.body.text()).toBe('blob bytes');
    expect(seen.map((s) => s.headers.authorization)).toEqual(['Bearer registry-token', 'Bearer registry-token']);
  });

  it('treats another port of the same host as another origin', async () => {
    const { transport, seen } = await redirectBed('https://reg.example:8443/v2/r/blobs/x');
    await drain(await transport.send({ url: URL_, method: 'GET', headers, idempotent: true, followRedirects: true }));
    expect(seen[1]!.headers.authorization).toBeUndefined();
  });

  it('returns the redirect itself when not asked to follow', async () => {
    const { transport, seen } = await redirectBed('https://storage.example/b');
    const res = await transport.send({ url: URL_, method: 'GET', headers, idempotent: true });
    await drain(res);
    expect(res.statusCode).toBe(307);
    expect(seen).toHaveLength(1);
  });

  it('stops a redirect loop with a REGISTRY error', async () => {
    const { transport, reg } = await setup();
    let hops = 0;
    reg.intercept({ path: () => true }).reply(() => ({ statusCode: 302, data: '', responseOptions: { headers: { location: `/loop/${++hops}` } } })).persist();
    const err = await transport.send({ url: URL_, method: 'GET', idempotent: true, followRedirects: true }).then(() => undefined, (e: unknown) => e);
    expect(isOciError(err, 'REGISTRY'), String(err)).toBe(true);
    expect((err as Error).message).toMatch(/too many redirects/);
    expect(hops).toBe(6);
  });
});

describe('Transport endpoints', () => {
  it('uses https unless plain HTTP was configured for that exact host', async () => {
    const { transport } = await setup();
    await transport.configure('127.0.0.1:5000', { plainHttp: true });
    expect(transport.origin('127.0.0.1:5000')).toBe('http://127.0.0.1:5000');
    expect(transport.origin('127.0.0.1:5001')).toBe('https://127.0.0.1:5001');
  });

  it('fails with TLS naming the file when a CA file cannot be read', async () => {
    const { transport } = await setup();
    const err = await transport.configure('reg.example', { caFile: '/nonexistent/ca.pem' }).then(() => undefined, (e: unknown) => e);
    expect(isOciError(err, 'TLS'), String(err)).toBe(true);
    expect((err as Error).message).toContain('/nonexistent/ca.pem');
  });

  it('keeps backoff within [exp/2, exp] and under maxDelayMs', async () => {
    const { transport } = await setup({ baseDelayMs: 100, maxDelayMs: 1_000 });
    for (let i = 0; i < 50; i++) {
      const b1 = transport.backoff(1);
      expect(b1).toBeGreaterThanOrEqual(50);
      expect(b1).toBeLessThanOrEqual(100);
      expect(transport.backoff(10)).toBeLessThanOrEqual(1_000);
      expect(transport.backoff(10)).toBeGreaterThanOrEqual(500);
    }
  });
});
