import { OciError } from '../errors.ts';
import { apiHost } from '../reference.ts';
import { drain, type Response, type Transport } from '../http/transport.ts';
import { parseChallenges, type Challenge } from './challenge.ts';
import type { Credential } from './docker-config.ts';

/** Finds the login for a registry host (flags, service-account key, Docker config…). */
export type CredentialProvider = (registry: string) => Promise<Credential | undefined>;

interface CachedToken {
  token: string;
  expiresAt: number;
}

const IDENTITY_TOKEN_USER = '<token>';
const basicHeader = (c: Credential) => `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;

/** A scope list as one stable key: sorted, so the same set always hits the same cache entry. */
const scopeKey = (registry: string, scopes: readonly string[]) => `${registry}|${[...new Set(scopes)].sort().join(' ')}`;

/**
 * Docker token-auth (distribution `docs/spec/auth/token.md`) and Basic auth, per registry host.
 * Learns each host's scheme from its first challenge, then authorizes requests up front; tokens
 * are cached per host and scope set and refreshed before they expire or when a 401 says so.
 */
export class Authorizer {
  readonly #transport: Transport;
  readonly #credentials: CredentialProvider;
  readonly #challenges = new Map<string, Challenge>();
  readonly #tokens = new Map<string, CachedToken>();
  readonly #pending = new Map<string, Promise<CachedToken>>();
  /** Tokens fetched so far (tests and progress read it). */
  tokensFetched = 0;

  constructor(transport: Transport, credentials: CredentialProvider) {
    this.#transport = transport;
    this.#credentials = credentials;
  }

  // Providers cache (and refresh, for access tokens) on their own: asked only when needed.
  #login(registry: string): Promise<Credential | undefined> {
    return this.#credentials(registry);
  }

  /** The Authorization value for a request, or undefined while the host's scheme is unknown. */
  async authorization(registry: string, scopes: readonly string[]): Promise<string | undefined> {
    const challenge = this.#challenges.get(registry);
    if (!challenge) return undefined;
    if (challenge.scheme === 'basic') {
      const login = await this.#login(registry);
      return login ? basicHeader(login) : undefined;
    }
    const token = await this.#token(registry, challenge, scopes, false);
    return `Bearer ${token.token}`;
  }

  /**
   * Handles a 401: learns the challenge and gets fresh authorization for the retry. Throws when
   * there is nothing new to try (no login for a Basic host, a token refused).
   */
  async challenged(registry: string, wwwAuthenticate: string | string[] | undefined, scopes: readonly string[], sent: string | undefined): Promise<string> {
    const challenges = parseChallenges(wwwAuthenticate);
    const challenge = challenges.find((c) => c.scheme === 'bearer') ?? challenges.find((c) => c.scheme === 'basic');
    if (!challenge) throw new OciError('UNAUTHORIZED', `registry ${registry} asked for authentication with an unsupported scheme (${String(wwwAuthenticate).slice(0, 80)})`);
    if (challenge.scheme === 'bearer') await this.#trustRealmLikeRegistry(registry, challenge);
    this.#challenges.set(registry, challenge);
    if (challenge.scheme === 'basic') {
      const login = await this.#login(registry);
      if (!login) throw new OciError('UNAUTHORIZED', `registry ${registry} requires a login and none was given; pass credentials or log in with docker/skopeo`);
      const value = basicHeader(login);
      if (value === sent) throw new OciError('UNAUTHORIZED', `registry ${registry} refused the credentials for user "${login.username}"; check the username and password`);
      return value;
    }
    // Scopes the registry names (e.g. for a repository we did not expect) are added to ours.
    const wanted = [...scopes, ...(challenge.params.scope ? challenge.params.scope.split(' ') : [])];
    const token = await this.#token(registry, challenge, wanted, true);
    const value = `Bearer ${token.token}`;
    if (value === sent) throw new OciError('UNAUTHORIZED', `registry ${registry} refused a fresh token for ${wanted.join(' ')}`);
    return value;
  }

  /** A CA or skip-verify given for a registry also covers the token realm it sends us to. */
  async #trustRealmLikeRegistry(registry: string, challenge: Challenge): Promise<void> {
    const realm = challenge.params.realm;
    if (!realm) throw new OciError('UNAUTHORIZED', `registry ${registry} sent a Bearer challenge without a realm`);
    let realmHost: string;
    try {
      realmHost = new URL(realm).host;
    } catch {
      throw new OciError('UNAUTHORIZED', `registry ${registry} sent an invalid token realm "${realm.slice(0, 120)}"`);
    }
    // Endpoints are configured under the API host (registry-1.docker.io for docker.io).
    const host = apiHost(registry);
    const mine = this.#transport.endpoint(host);
    if (realmHost !== host && !this.#transport.endpoint(realmHost) && mine) {
      await this.#transport.configure(realmHost, { ...(mine.caFile ? { caFile: mine.caFile } : {}), ...(mine.insecureSkipVerify ? { insecureSkipVerify: true } : {}) });
    }
  }

  async #token(registry: string, challenge: Challenge, scopes: readonly string[], force: boolean): Promise<CachedToken> {
    const key = scopeKey(registry, scopes);
    const cached = this.#tokens.get(key);
    if (!force && cached && Date.now() < cached.expiresAt) return cached;
    let pending = this.#pending.get(key);
    if (!pending) {
      pending = this.#fetchToken(registry, challenge, [...new Set(scopes)].sort()).finally(() => this.#pending.delete(key));
      this.#pending.set(key, pending);
    }
    const token = await pending;
    this.#tokens.set(key, token);
    return token;
  }

  async #fetchToken(registry: string, challenge: Challenge, scopes: string[]): Promise<CachedToken> {
    const realm = new URL(challenge.params.realm!);
    const service = challenge.params.service;
    const login = await this.#login(registry);
    let send: () => Promise<Response>;
    if (login?.username === IDENTITY_TOKEN_USER) {
      // An identity token from `docker login` is an OAuth2 refresh token (token spec, oauth.md).
      const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: login.password, client_id: 'cartesia-airgap', ...(service ? { service } : {}), scope: scopes.join(' ') });
      send = () => this.#transport.send({ url: realm.toString(), method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form.toString(), idempotent: true });
    } else {
      if (service) realm.searchParams.set('service', service);
      for (const s of scopes) realm.searchParams.append('scope', s);
      send = () => this.#transport.send({ url: realm.toString(), method: 'GET', headers: login ? { authorization: basicHeader(login) } : {}, idempotent: true });
    }
    // The token is read whole: asked again if the connection drops in the middle of it.
    const { res, body } = await this.#transport.whole(realm.toString(), async () => {
      const r = await send();
      return { res: r, body: r.statusCode === 200 ? ((await r.body.json()) as { token?: string; access_token?: string; expires_in?: number; issued_at?: string }) : undefined };
    });
    if (res.statusCode === 401 || res.statusCode === 403) {
      await drain(res);
      const who = login ? `the credentials for user "${login.username === IDENTITY_TOKEN_USER ? 'identity token' : login.username}"` : 'anonymous access';
      throw new OciError('UNAUTHORIZED', `registry ${registry} refused ${who} (token service answered ${res.statusCode}); check the login or key`);
    }
    if (!body) {
      await drain(res);
      throw new OciError('REGISTRY', `token service ${realm.origin} for ${registry} answered ${res.statusCode}`, { retryable: res.statusCode >= 500 });
    }
    const token = body.token ?? body.access_token;
    if (!token) throw new OciError('REGISTRY', `token service ${realm.origin} for ${registry} answered without a token`);
    // The spec's default lifetime is 60 s; refresh a quarter early (at most 30 s) so a request
    // never starts with a token about to lapse.
    const ttl = (typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : 60) * 1000;
    // Counted from receipt, not the server's issued_at: an air-gapped clock may be minutes off.
    this.tokensFetched++;
    return { token, expiresAt: Date.now() + ttl - Math.min(30_000, ttl / 4) };
  }
}
