/**
 * A fault-injecting HTTP(S) proxy for the test bed: it stands in front of one server (a registry,
 * the token issuer, GCS, S3), forwards every request to it, and on a fixed schedule breaks some of
 * them the ways networks and servers do: a reset in the middle of a response body, a burst of
 * 500/502/503, a 429 with Retry-After, a stall in the middle of a body, an upload cut after N bytes.
 *
 * It terminates HTTP (and TLS, with a certificate the bed's CA signed), because status faults need
 * to answer in HTTP; bodies pass through byte for byte, and the Host header is kept, so servers that
 * build absolute URLs from it (the registry's upload Location) point back at the proxy. Absolute
 * URLs a server takes from its configuration (the registry's token realm) are rewritten through
 * `rewrite`. Loopback only; every schedule is bounded (`limit`), then everything passes through.
 * Each fault and each request is recorded, so a test can prove the faults really happened.
 */
import { request as httpRequest, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import { Agent as HttpsAgent, createServer as createHttpsServer, request as httpsRequest } from 'node:https';
import { Agent as HttpAgent, createServer as createHttpServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export type FaultKind = 'reset-body' | 'status' | 'throttle' | 'stall' | 'cut-upload';

export type Fault =
  /** Forwards the status, headers and `at` bytes of the body, then resets the TCP connection. */
  | { kind: 'reset-body'; at: ByteRange }
  /** Answers instead of asking the server: the n-th time with statuses[n % length] (a burst of 500, 502, 503). */
  | { kind: 'status'; statuses: readonly number[] }
  /** Answers 429 with `Retry-After: seconds`. */
  | { kind: 'throttle'; retryAfterSeconds: number }
  /** Forwards `at` bytes of the body, then sends nothing for `ms`, then the rest; 'headers': holds the whole answer. */
  | { kind: 'stall'; at: ByteRange | 'headers'; ms: number }
  /** Passes `at` bytes of the request body to the server, then resets both connections. */
  | { kind: 'cut-upload'; at: ByteRange };

/** A byte offset drawn (seeded) from [min, max), kept inside the body it applies to. */
export interface ByteRange {
  min: number;
  max: number;
}

export interface FaultRule {
  /** Names the rule in the record and in reports. */
  name: string;
  fault: Fault;
  method?: string | string[];
  path?: RegExp;
  /** Only bodies (response for reset/stall, request for cut-upload) of at least this many bytes. */
  minBytes?: number;
  /** Injects on the 1st matching request after `skip`, then every `every`-th one, `limit` times in all. */
  skip?: number;
  every?: number;
  limit: number;
}

export interface Injected {
  rule: string;
  kind: FaultKind;
  method: string;
  path: string;
  /**
   * Where a reset or a stall happened, as a byte position in the content (a 206 counts from its
   * range start), or how many bytes of an upload went through before the cut; the status sent
   * for status faults; 0 for a stall of the headers.
   */
  detail: number;
  at: number;
}

export interface Seen {
  method: string;
  path: string;
  range?: string;
  status?: number;
  at: number;
}

export interface FaultProxyOptions {
  /** Names the server in records (e.g. "source registry"). */
  name: string;
  /** The real server, e.g. https://127.0.0.1:5000. */
  upstream: string;
  /** Terminate TLS with this certificate (PEM); `ca` verifies the upstream's certificate. */
  tls?: { cert: string | Buffer; key: string | Buffer; ca: string | Buffer };
  /** Default: none (pass everything through). */
  rules?: FaultRule[];
  /** Seeds the byte offsets faults happen at. */
  seed?: number;
  /** Origin → origin replacements in Location and WWW-Authenticate (e.g. the token realm). */
  rewrite?: Record<string, string>;
}

export interface FaultProxy {
  name: string;
  /** http(s)://127.0.0.1:PORT */
  origin: string;
  /** 127.0.0.1:PORT */
  host: string;
  injected: Injected[];
  seen: Seen[];
  /** Faults injected so far per rule name (rules with none are listed with 0). */
  counts(): Record<string, number>;
  /**
   * A new schedule, with counts and records cleared; `[]` passes everything through. The address
   * stays the same, so a clean run and a faulted run can name the same server (bundle.json does).
   */
  setRules(rules: FaultRule[], seed?: number): void;
  close(): Promise<void>;
}

/** mulberry32: a tiny seeded PRNG, so a run's cut points can be replayed. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Hop-by-hop headers (RFC 9110 §7.6.1) and Expect, which Node's server has already answered.
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'expect']);
const REQUEST_PHASE = new Set<FaultKind>(['status', 'throttle', 'cut-upload']);

/** The TCP socket under a TLS one (what a reset must go to). */
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Writes and waits for room (or for the bytes to be flushed), or for the client to go away. */
function write(res: ServerResponse, chunk: Buffer, flushed = false): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('close', done);
      res.off('drain', done);
      resolve();
    };
    res.once('close', done);
    if (flushed) return void res.write(chunk, done);
    if (res.write(chunk)) done();
    else res.once('drain', done);
  });
}

const tcp = (s: Socket): Socket => ((s as Socket & { _parent?: Socket })._parent ?? s);

/** Sends an RST (not a FIN): what a crashed middlebox or a dropped NAT entry looks like. */
function reset(s: Socket): void {
  const raw = tcp(s);
  try {
    raw.resetAndDestroy();
  } catch {
    raw.destroy();
  }
  s.destroy();
}

export async function startFaultProxy(opts: FaultProxyOptions): Promise<FaultProxy> {
  const upstream = new URL(opts.upstream);
  const secureUpstream = upstream.protocol === 'https:';
  const agent = secureUpstream ? new HttpsAgent({ keepAlive: true, ca: opts.tls?.ca }) : new HttpAgent({ keepAlive: true });
  let rules = opts.rules ?? [];
  let random = seeded(opts.seed ?? 1);
  const injected: Injected[] = [];
  const seen: Seen[] = [];
  const matched = new Map<FaultRule, number>();
  const fired = new Map<FaultRule, number>();
  const rewrite = Object.entries(opts.rewrite ?? {});

  const offset = (r: ByteRange, size: number) => Math.max(1, Math.min(size - 1, Math.floor(r.min + random() * (r.max - r.min))));

  /** Counts a match for `rule` and says whether this one is to be broken. */
  const due = (rule: FaultRule): boolean => {
    const n = (matched.get(rule) ?? 0) + 1;
    matched.set(rule, n);
    const k = n - 1 - (rule.skip ?? 0);
    if (k < 0 || k % (rule.every ?? 1) !== 0 || (fired.get(rule) ?? 0) >= rule.limit) return false;
    fired.set(rule, (fired.get(rule) ?? 0) + 1);
    return true;
  };

  const applies = (rule: FaultRule, req: IncomingMessage, bytes: number | undefined): boolean => {
    const methods = rule.method === undefined ? undefined : [rule.method].flat();
    if (methods && !methods.includes(req.method ?? '')) return false;
    if (rule.path && !rule.path.test(req.url ?? '')) return false;
    if (rule.minBytes !== undefined && (bytes === undefined || bytes < rule.minBytes)) return false;
    return true;
  };

  const record = (rule: FaultRule, req: IncomingMessage, detail: number) =>
    injected.push({ rule: rule.name, kind: rule.fault.kind, method: req.method ?? '', path: req.url ?? '', detail, at: Date.now() });

  const rewritten = (value: string): string => rewrite.reduce((v, [from, to]) => v.replaceAll(from, to), value);

  /** Response headers to pass on: no hop-by-hop ones, absolute URLs pointed at proxies. */
  function passHeaders(res: IncomingMessage): OutgoingHttpHeaders {
    const out: OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(res.headers)) {
      if (v === undefined || HOP.has(k)) continue;
      out[k] = k === 'location' || k === 'www-authenticate' ? (Array.isArray(v) ? v.map(rewritten) : rewritten(v)) : v;
    }
    return out;
  }

  /** Answers without asking the server, after reading the request body as a server would. */
  function answer(req: IncomingMessage, res: ServerResponse, status: number, headers: OutgoingHttpHeaders): void {
    const body = JSON.stringify({ errors: [{ code: 'UNAVAILABLE', message: `fault proxy: injected ${status}` }] });
    req.resume();
    req.once('end', () => res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers }).end(body));
  }

  function handle(req: IncomingMessage, res: ServerResponse): void {
    const entry: Seen = { method: req.method ?? '', path: req.url ?? '', ...(req.headers.range ? { range: req.headers.range } : {}), at: Date.now() };
    seen.push(entry);
    const requestBytes = req.headers['content-length'] === undefined ? undefined : Number(req.headers['content-length']);
    // A cut needs a declared length to cut inside of; the other request-phase faults need no body.
    const early = rules.find((r) => REQUEST_PHASE.has(r.fault.kind) && (r.fault.kind !== 'cut-upload' || requestBytes !== undefined) && applies(r, req, r.fault.kind === 'cut-upload' ? requestBytes : 0) && due(r));
    if (early?.fault.kind === 'status') {
      const status = early.fault.statuses[(fired.get(early)! - 1) % early.fault.statuses.length]!;
      record(early, req, status);
      entry.status = status;
      return answer(req, res, status, {});
    }
    if (early?.fault.kind === 'throttle') {
      record(early, req, 429);
      entry.status = 429;
      return answer(req, res, 429, { 'retry-after': String(early.fault.retryAfterSeconds) });
    }
    const cutAt = early?.fault.kind === 'cut-upload' ? offset(early.fault.at, requestBytes!) : undefined;

    const headers: OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(req.headers)) if (v !== undefined && !HOP.has(k)) headers[k] = v;
    const send = secureUpstream ? httpsRequest : httpRequest;
    const up = send({ protocol: upstream.protocol, hostname: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers, agent });
    up.on('error', () => reset(req.socket));
    // A client that went away takes its upstream request with it.
    res.on('close', () => !res.writableFinished && up.destroy());
    up.on('response', (ures) => {
      entry.status = ures.statusCode;
      const length = Number(ures.headers['content-length'] ?? NaN);
      const size = Number.isFinite(length) ? length : undefined;
      const hasBody = (ures.statusCode === 200 || ures.statusCode === 206) && req.method !== 'HEAD' && size !== 0;
      // A stall of the headers applies to any answer; the others need a body to break (of unknown
      // length, a chunked one, only when the rule asks no minimum).
      const held = (r: FaultRule) => r.fault.kind === 'stall' && r.fault.at === 'headers';
      const breakable = (r: FaultRule) => hasBody && (size !== undefined || r.minBytes === undefined) && applies(r, req, size);
      const late = rules.find((r) => !REQUEST_PHASE.has(r.fault.kind) && (held(r) ? applies(r, req, size ?? 0) : breakable(r)) && due(r));
      const pass = () => {
        res.writeHead(ures.statusCode ?? 502, passHeaders(ures));
        ures.pipe(res);
      };
      if (!late) return pass();
      const fault = late.fault as Extract<Fault, { kind: 'reset-body' | 'stall' }>;
      const at = fault.at;
      if (at === 'headers') {
        record(late, req, 0);
        ures.pause();
        return void setTimeout(() => (res.destroyed ? ures.destroy() : pass()), fault.kind === 'stall' ? fault.ms : 0);
      }
      res.writeHead(ures.statusCode ?? 502, passHeaders(ures));
      // (A body shorter than the offset drawn ends before the fault: nothing is recorded.)
      void breakBody(late, fault, req, res, ures, offset(at, size ?? Number.MAX_SAFE_INTEGER)).catch(() => reset(req.socket));
    });

    if (cutAt === undefined) return void req.pipe(up);
    let passed = 0;
    req.on('data', (chunk: Buffer) => {
      if (passed >= cutAt) return;
      const part = chunk.subarray(0, cutAt - passed);
      passed += part.length;
      if (passed < cutAt) return void up.write(part);
      record(early!, req, passed);
      entry.status = 0;
      req.pause();
      // The server gets part of the body and then a dead connection; so does the client.
      up.write(part, () => {
        up.destroy();
        reset(req.socket);
      });
    });
    req.on('end', () => up.end());
  }

  /** Passes the body through, with a reset or a stall once `at` bytes have gone out. */
  async function breakBody(rule: FaultRule, fault: Extract<Fault, { kind: 'reset-body' | 'stall' }>, req: IncomingMessage, res: ServerResponse, ures: IncomingMessage, at: number): Promise<void> {
    const start = Number(/^bytes (\d+)-/.exec(ures.headers['content-range'] ?? '')?.[1] ?? 0);
    let sent = 0;
    let done = false;
    for await (const c of ures as AsyncIterable<Buffer>) {
      let chunk = c;
      if (!done && sent + chunk.length >= at) {
        done = true;
        const head = chunk.subarray(0, at - sent);
        chunk = chunk.subarray(at - sent);
        sent += head.length;
        record(rule, req, start + sent);
        // What went before the fault reaches the client (it can resume from there) before it happens.
        await write(res, head, true);
        await sleep(fault.kind === 'stall' ? fault.ms : 50);
        if (fault.kind === 'reset-body' || res.destroyed) {
          reset(req.socket);
          ures.destroy();
          return;
        }
      }
      sent += chunk.length;
      await write(res, chunk);
      if (res.destroyed) return void ures.destroy();
    }
    res.end();
  }

  const server: Server = opts.tls ? createHttpsServer({ cert: opts.tls.cert, key: opts.tls.key }, handle) : createHttpServer(handle);
  server.on('clientError', (_err, socket) => socket.destroy());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    name: opts.name,
    origin: `${opts.tls ? 'https' : 'http'}://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    injected,
    seen,
    counts: () => Object.fromEntries(rules.map((r) => [r.name, injected.filter((i) => i.rule === r.name).length])),
    setRules: (next, seed) => {
      rules = next;
      random = seeded(seed ?? opts.seed ?? 1);
      matched.clear();
      fired.clear();
      injected.length = 0;
      seen.length = 0;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
        agent.destroy();
      }),
  };
}
