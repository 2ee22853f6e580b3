import { createHash, createPrivateKey, randomUUID, sign, timingSafeEqual, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';

/**
 * The token half of an Artifact Registry stand-in (Docker token-auth spec): docker-registry runs
 * with `auth: token` and sends clients here. Logins are the ones Artifact Registry accepts:
 * `_json_key` + the full service-account JSON, `_json_key_base64` + its base64, and
 * `oauth2accesstoken` + an access token; plus plain user/password accounts.
 */
export type Login =
  | { kind: 'json_key'; key: string }
  | { kind: 'access_token'; token: string }
  | { kind: 'basic'; username: string; password: string };

export interface Account {
  name: string;
  login: Login;
  /** Actions this account may be granted on any repository, e.g. ['pull'] or ['pull', 'push']. */
  actions: string[];
}

export interface TokenIssuerOptions {
  keyFile: string;
  certFile: string;
  tlsCertFile: string;
  tlsKeyFile: string;
  issuer: string;
  service: string;
  accounts: Account[];
  /** Repositories anyone may pull without logging in (as Docker Hub's library/ images). */
  publicRepository?: RegExp;
  ttlSeconds?: number;
}

export interface TokenIssuer {
  url: string;
  port: number;
  /** Tokens issued so far, per account name ('' = anonymous); tests read it. */
  issued: Map<string, number>;
  setTtl(seconds: number): void;
  close(): Promise<void>;
}

const digest = (s: string) => createHash('sha256').update(s).digest();
const same = (a: string, b: string) => timingSafeEqual(digest(a), digest(b));

function authenticate(header: string | undefined, accounts: Account[]): Account | null | 'denied' {
  if (!header) return null;
  if (!header.startsWith('Basic ')) return 'denied';
  const decoded = Buffer.from(header.slice(6), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return 'denied';
  const user = decoded.slice(0, colon);
  let secret = decoded.slice(colon + 1);
  if (user === '_json_key_base64') secret = Buffer.from(secret, 'base64').toString('utf8');
  // Compare every candidate in full (no early exit on the first byte that differs).
  const match = accounts.find(({ login }) => {
    switch (login.kind) {
      case 'json_key':
        return (user === '_json_key' || user === '_json_key_base64') && same(secret.trim(), login.key.trim());
      case 'access_token':
        return user === 'oauth2accesstoken' && same(secret, login.token);
      case 'basic':
        return user === login.username && same(secret, login.password);
    }
  });
  return match ?? 'denied';
}

export async function startTokenIssuer(opts: TokenIssuerOptions): Promise<TokenIssuer> {
  const key = createPrivateKey(await readFile(opts.keyFile));
  const x5c = [new X509Certificate(await readFile(opts.certFile)).raw.toString('base64')];
  const issued = new Map<string, number>();
  let ttl = opts.ttlSeconds ?? 300;
  const b64u = (b: string | Buffer) => Buffer.from(b).toString('base64url');

  const signJwt = (claims: object): string => {
    // ES256 signatures in JWS are raw r||s, not DER.
    const input = `${b64u(JSON.stringify({ typ: 'JWT', alg: 'ES256', x5c }))}.${b64u(JSON.stringify(claims))}`;
    return `${input}.${b64u(sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' }))}`;
  };

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'https://x');
    if (url.pathname !== '/v2/token') return void res.writeHead(404).end();
    const who = authenticate(req.headers.authorization, opts.accounts);
    if (who === 'denied') {
      res.writeHead(401, { 'content-type': 'application/json' });
      return void res.end('{"errors":[{"code":"UNAUTHORIZED","message":"invalid username/password"}]}');
    }
    const access = url.searchParams.getAll('scope').flatMap((scope) => {
      const first = scope.indexOf(':');
      const last = scope.lastIndexOf(':');
      if (first < 0 || last <= first) return [];
      const type = scope.slice(0, first);
      const name = scope.slice(first + 1, last);
      const wanted = scope.slice(last + 1).split(',');
      const allowed = who ? who.actions : type === 'repository' && opts.publicRepository?.test(name) ? ['pull'] : [];
      return [{ type, name, actions: wanted.filter((a) => allowed.includes(a)) }];
    });
    const now = Math.floor(Date.now() / 1000);
    const token = signJwt({
      iss: opts.issuer,
      sub: who?.name ?? '',
      aud: opts.service, // docker-registry 2.8 only accepts a string here
      exp: now + ttl,
      nbf: now - 5,
      iat: now,
      jti: randomUUID(),
      access,
    });
    issued.set(who?.name ?? '', (issued.get(who?.name ?? '') ?? 0) + 1);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token, access_token: token, expires_in: ttl, issued_at: new Date(now * 1000).toISOString() }));
  };

  const server = createServer({ cert: await readFile(opts.tlsCertFile), key: await readFile(opts.tlsKeyFile) }, handle);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `https://127.0.0.1:${port}/v2/token`,
    port,
    issued,
    setTtl: (s) => void (ttl = s),
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
