import { OciError } from '../errors.ts';
import { loadServiceAccountKey } from '../../util/service-account.ts';
import type { CredentialProvider } from './authorizer.ts';
import { dockerConfigCredential, type Credential } from './docker-config.ts';

/** How one side of a copy logs in. Anything not given falls back to Docker's config. */
export interface LoginOptions {
  /** From `--src-creds USER:PASS` and the like: used for every registry of this side. */
  credential?: Credential;
  /** An Artifact Registry service-account key file. */
  serviceAccountKeyFile?: string;
  /**
   * `json_key` sends the key itself as the password of user `_json_key` (what Cartesia's own
   * instructions do); `access_token` exchanges it with Google for a one-hour token sent as
   * `oauth2accesstoken`, so the key never reaches the registry.
   */
  serviceAccountMode?: 'json_key' | 'access_token';
  /** A Docker config.json / containers auth.json to read instead of the default ones. */
  authFile?: string;
  env?: NodeJS.ProcessEnv;
  /** How to reach Google's token endpoint (the engine's transport, so proxies and CAs apply). */
  fetch?: typeof globalThis.fetch;
}

/** `USER:PASS` → a credential; split at the first colon so passwords may hold colons. */
export function parseUserPass(value: string, flag: string): Credential {
  const colon = value.indexOf(':');
  if (colon <= 0) throw new OciError('UNAUTHORIZED', `${flag} must be USER:PASSWORD (the value given has no user part)`);
  return { username: value.slice(0, colon), password: value.slice(colon + 1) };
}

/** A short-lived access token for the key, through google-auth-library (cached and refreshed by it). */
async function accessTokenSource(json: Record<string, unknown>, fetchImplementation?: typeof globalThis.fetch): Promise<() => Promise<string>> {
  const { GoogleAuth } = await import('google-auth-library');
  const auth = new GoogleAuth({
    credentials: json,
    scopes: ['https://www.googleapis.com/auth/cloud-platform'],
    ...(fetchImplementation ? { clientOptions: { transporterOptions: { fetchImplementation } } } : {}),
  });
  return async () => {
    try {
      const token = await (await auth.getClient()).getAccessToken();
      if (!token.token) throw new Error('no token in the answer');
      return token.token;
    } catch (err) {
      throw new OciError('UNAUTHORIZED', `Google refused to exchange the service-account key for an access token (${(err as Error).message.split('\n')[0]}); check the key, or use the default _json_key login`);
    }
  };
}

/** The credential provider for one side: explicit login, else the key, else Docker's config. */
export function loginProvider(opts: LoginOptions): CredentialProvider {
  let fromKey: Promise<() => Promise<Credential>> | undefined;
  const keyCredential = () => {
    fromKey ??= (async () => {
      const key = await loadServiceAccountKey(opts.serviceAccountKeyFile!);
      if (opts.serviceAccountMode === 'access_token') {
        const token = await accessTokenSource(key.json, opts.fetch);
        return async () => ({ username: 'oauth2accesstoken', password: await token() });
      }
      const fixed = { username: '_json_key', password: key.text };
      return async () => fixed;
    })();
    return fromKey;
  };
  const docker = new Map<string, Promise<Credential | undefined>>();
  return async (registry) => {
    if (opts.credential) return opts.credential;
    if (opts.serviceAccountKeyFile) return (await keyCredential())();
    let found = docker.get(registry);
    if (!found) {
      found = dockerConfigCredential(registry, { ...(opts.authFile ? { authFile: opts.authFile } : {}), ...(opts.env ? { env: opts.env } : {}) });
      docker.set(registry, found);
    }
    return found;
  };
}
