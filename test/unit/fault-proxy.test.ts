import { randomBytes } from 'node:crypto';
import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startFaultProxy, type FaultProxy, type FaultRule } from '../testbed/fault-proxy.ts';

/** The upstream: GET /blob answers BODY, PUT /upload counts what it received, /where redirects. */
const BODY = randomBytes(64 * 1024);
let upstream: Server;
let origin: string;
let uploads: { bytes: number; complete: boolean }[] = [];
let hosts: (string | undefined)[] = [];

beforeAll(async () => {
  upstream = createServer((req, res) => {
    hosts.push(req.headers.host);
    if (req.url === '/where') return void res.writeHead(401, { 'www-authenticate': `Bearer realm="${origin}/token"`, location: `${origin}/next` }).end();
    if (req.method === 'PUT') {
      const u = { bytes: 0, complete: false };
      uploads.push(u);
      req.on('data', (c: Buffer) => (u.bytes += c.length));
      req.on('end', () => ((u.complete = true), res.writeHead(201, { 'content-length': '0' }).end()));
      return;
    }
    res.writeHead(200, { 'content-length': BODY.length }).end(BODY);
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  origin = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
});
afterAll(() => new Promise((r) => upstream.close(r)));

let proxy: FaultProxy;
afterEach(async () => {
  await proxy?.close();
  uploads = [];
  hosts = [];
});

interface Got {
  status: number;
  headers: IncomingMessage['headers'];
  body: Buffer;
  error?: string;
  ms: number;
}

/** One request through the proxy with Node's own client, keeping what arrived before an error. */
function send(path: string, opts: { method?: string; body?: Buffer } = {}): Promise<Got> {
  const started = Date.now();
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let got: Omit<Got, 'body' | 'ms'> = { status: 0, headers: {} };
    const done = (error?: string) => resolve({ ...got, body: Buffer.concat(chunks), ms: Date.now() - started, ...(error ? { error } : {}) });
    const req = request(`${proxy.origin}${path}`, { method: opts.method ?? 'GET', agent: false, headers: opts.body ? { 'content-length': opts.body.length } : {} }, (res) => {
      got = { status: res.statusCode ?? 0, headers: res.headers };
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => done());
      res.on('error', (e: NodeJS.ErrnoException) => done(e.code ?? e.message));
    });
    req.on('error', (e: NodeJS.ErrnoException) => done(e.code ?? e.message));
    req.end(opts.body);
  });
}

const start = async (rules: FaultRule[], rewrite?: Record<string, string>) => {
  proxy = await startFaultProxy({ name: 'test', upstream: origin, rules, seed: 7, ...(rewrite ? { rewrite } : {}) });
};

describe('fault proxy', () => {
  it('passes answers through byte for byte, keeps Host, and points configured absolute URLs at proxies', async () => {
    await start([], { [origin]: 'http://proxy.example' });
    const r = await send('/blob');
    expect(r.status).toBe(200);
    expect(r.body.equals(BODY)).toBe(true);
    expect(hosts.at(-1)).toBe(proxy.host);
    const w = await send('/where');
    expect(w.headers['www-authenticate']).toBe('Bearer realm="http://proxy.example/token"');
    expect(w.headers.location).toBe('http://proxy.example/next');
    expect(proxy.seen.map((s) => [s.method, s.path, s.status])).toEqual([['GET', '/blob', 200], ['GET', '/where', 401]]);
    expect(proxy.injected).toEqual([]);
  });

  it('resets in the middle of a body after a seeded number of bytes in range, `limit` times, then passes through', async () => {
    await start([{ name: 'reset', fault: { kind: 'reset-body', at: { min: 1000, max: 9000 } }, path: /^\/blob$/, minBytes: 1024, limit: 2 }]);
    const [a, b, c] = [await send('/blob'), await send('/blob'), await send('/blob')];
    for (const r of [a, b]) {
      expect(r.error).toBe('ECONNRESET');
      expect(r.body.length).toBeGreaterThanOrEqual(1000);
      expect(r.body.length).toBeLessThan(9000);
      expect(r.body.equals(BODY.subarray(0, r.body.length))).toBe(true);
    }
    expect(proxy.injected.map((i) => i.detail)).toEqual([a.body.length, b.body.length]);
    expect(c.error).toBeUndefined();
    expect(c.body.equals(BODY)).toBe(true);
    expect(proxy.counts()).toEqual({ reset: 2 });
  });

  it('answers a burst of 500, 502, 503 after `skip` matches, then 429 with Retry-After, without asking the server', async () => {
    await start([
      { name: '5xx', fault: { kind: 'status', statuses: [500, 502, 503] }, method: 'GET', skip: 1, limit: 3 },
      { name: '429', fault: { kind: 'throttle', retryAfterSeconds: 3 }, method: 'GET', limit: 1 },
    ]);
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await send('/blob')).status);
    // The first GET is skipped by 5xx but taken by 429; then the burst; then everything passes.
    expect(statuses).toEqual([429, 500, 502, 503, 200, 200]);
    expect(proxy.seen.filter((s) => s.status === 200)).toHaveLength(2);
    expect(hosts).toHaveLength(2);
    proxy.setRules([{ name: '429', fault: { kind: 'throttle', retryAfterSeconds: 3 }, limit: 1 }]);
    const t = await send('/blob');
    expect([t.status, t.headers['retry-after']]).toEqual([429, '3']);
    expect(proxy.seen).toHaveLength(1); // setRules cleared the record
  });

  it('stalls a body after some bytes, then delivers all of it; or holds the headers', async () => {
    await start([
      { name: 'stall', fault: { kind: 'stall', at: { min: 2000, max: 3000 }, ms: 400 }, path: /^\/blob$/, limit: 1 },
      { name: 'hold', fault: { kind: 'stall', at: 'headers', ms: 300 }, method: 'PUT', limit: 1 },
    ]);
    const r = await send('/blob');
    expect(r.body.equals(BODY)).toBe(true);
    expect(r.ms).toBeGreaterThanOrEqual(400);
    const p = await send('/upload', { method: 'PUT', body: randomBytes(100) });
    expect(p.status).toBe(201);
    expect(p.ms).toBeGreaterThanOrEqual(300);
    expect(proxy.injected.map((i) => [i.rule, i.kind])).toEqual([['stall', 'stall'], ['hold', 'stall']]);
  });

  it('cuts an upload after a seeded number of bytes: the server sees a partial body, the client a reset', async () => {
    await start([{ name: 'cut', fault: { kind: 'cut-upload', at: { min: 10_000, max: 20_000 } }, method: 'PUT', minBytes: 30_000, limit: 1 }]);
    const small = await send('/upload', { method: 'PUT', body: randomBytes(1000) }); // under minBytes: untouched
    expect(small.status).toBe(201);
    const cut = await send('/upload', { method: 'PUT', body: randomBytes(50_000) });
    expect(cut.error).toMatch(/ECONNRESET|EPIPE/);
    await new Promise((r) => setTimeout(r, 100));
    const sent = proxy.injected[0]!.detail;
    expect(sent).toBeGreaterThanOrEqual(10_000);
    expect(sent).toBeLessThan(20_000);
    expect(uploads[1]).toEqual({ bytes: sent, complete: false });
  });
});
