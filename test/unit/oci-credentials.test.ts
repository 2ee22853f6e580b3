import { generateKeyPairSync, verify } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MockAgent } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loginProvider, parseUserPass } from '../../src/oci/auth/credentials.ts';
import { isOciError } from '../../src/oci/errors.ts';
import { isCodedError } from '../../src/util/errors.ts';
import { Transport } from '../../src/oci/http/transport.ts';

let dir: string;
let keyFile: string;
let keyText: string;
const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const PRIVATE_PEM = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'oci-creds-'));
  keyText = JSON.stringify({ type: 'service_account', project_id: 'p', client_email: 'puller@p.iam.gserviceaccount.com', private_key: PRIVATE_PEM, token_uri: 'https://oauth2.googleapis.com/token' }, null, 2);
  keyFile = join(dir, 'key.json');
  await writeFile(keyFile, `${keyText}\n`);
});
afterAll(() => rm(dir, { recursive: true, force: true }));

/** A transport whose only reachable host is a mocked Google token endpoint. */
async function google(reply: (body: string) => { status: number; body: object }) {
  const agent = new MockAgent();
  agent.disableNetConnect();
  const bodies: string[] = [];
  agent
    .get('https://oauth2.googleapis.com')
    .intercept({ path: '/token', method: 'POST' })
    .reply((opts) => {
      const body = String(opts.body);
      bodies.push(body);
      const r = reply(body);
      return { statusCode: r.status, data: JSON.stringify(r.body), responseOptions: { headers: { 'content-type': 'application/json' } } };
    })
    .persist();
  return { transport: await Transport.create({}, { dispatcher: agent }), bodies };
}

const b64json = (s: string) => JSON.parse(Buffer.from(s, 'base64url').toString('utf8')) as Record<string, unknown>;

describe('service-account key logins', () => {
  it('json_key sends the key itself as user _json_key', async () => {
    const cred = await loginProvider({ serviceAccountKeyFile: keyFile })('us-docker.pkg.dev');
    expect(cred).toEqual({ username: '_json_key', password: keyText });
  });

  it('access_token exchanges a JWT signed by the key (RFC 7523) for a token sent as oauth2accesstoken', async () => {
    const { transport, bodies } = await google(() => ({ status: 200, body: { access_token: 'ya29.exchanged', expires_in: 3600, token_type: 'Bearer' } }));
    const login = loginProvider({ serviceAccountKeyFile: keyFile, serviceAccountMode: 'access_token', fetch: transport.fetch });
    expect(await login('us-docker.pkg.dev')).toEqual({ username: 'oauth2accesstoken', password: 'ya29.exchanged' });
    // Cached by google-auth-library: a second ask does not exchange again.
    await login('us-docker.pkg.dev');
    expect(bodies).toHaveLength(1);
    const form = new URLSearchParams(bodies[0]);
    expect(form.get('grant_type')).toBe('urn:ietf:params:oauth:grant-type:jwt-bearer');
    const [h, c, sig] = form.get('assertion')!.split('.');
    expect(verify('RSA-SHA256', Buffer.from(`${h}.${c}`), publicKey, Buffer.from(sig!, 'base64url'))).toBe(true);
    expect(b64json(c!)).toMatchObject({ iss: 'puller@p.iam.gserviceaccount.com', scope: 'https://www.googleapis.com/auth/cloud-platform' });
    expect(bodies[0]).not.toContain('PRIVATE KEY');
  });

  it('reports a refused exchange in one line without the key', async () => {
    const { transport } = await google(() => ({ status: 400, body: { error: 'invalid_grant', error_description: 'Invalid JWT Signature.' } }));
    const err = await loginProvider({ serviceAccountKeyFile: keyFile, serviceAccountMode: 'access_token', fetch: transport.fetch })('us-docker.pkg.dev').catch((e: unknown) => e as Error);
    expect(isOciError(err, 'UNAUTHORIZED')).toBe(true);
    expect((err as Error).message).toMatch(/^Google refused to exchange the service-account key/);
    expect((err as Error).message).not.toContain('\n');
    expect((err as Error).message).not.toContain(PRIVATE_PEM.split('\n')[1]!);
  });

  it('refuses a key file that is not a service-account JSON key, without echoing it', async () => {
    const notJson = join(dir, 'not-json.key');
    await writeFile(notJson, `SECRET-${'x'.repeat(40)}`);
    const wrongShape = join(dir, 'wrong.json');
    await writeFile(wrongShape, JSON.stringify({ type: 'authorized_user', refresh_token: 'SECRET-refresh' }));
    for (const [file, pattern] of [[notJson, /is not a service-account JSON key \(not JSON\)/], [wrongShape, /its type is "authorized_user", not "service_account"/], [join(dir, 'missing.json'), /cannot read the service-account key/]] as const) {
      const err = (await loginProvider({ serviceAccountKeyFile: file })('r.example').catch((e: unknown) => e)) as Error;
      expect(isCodedError(err, 'BAD_KEY')).toBe(true);
      expect(err.message).toMatch(pattern);
      expect(err.message).not.toContain('SECRET');
    }
  });
});

describe('login precedence and USER:PASS', () => {
  it('an explicit login beats the key, which beats the Docker config file', async () => {
    const authFile = join(dir, 'auth.json');
    await writeFile(authFile, JSON.stringify({ auths: { 'r.example': { auth: Buffer.from('fromfile:pw').toString('base64') } } }));
    const explicit = { username: 'u', password: 'p' };
    expect(await loginProvider({ credential: explicit, serviceAccountKeyFile: keyFile, authFile })('r.example')).toEqual(explicit);
    expect((await loginProvider({ serviceAccountKeyFile: keyFile, authFile })('r.example'))?.username).toBe('_json_key');
    expect(await loginProvider({ authFile })('r.example')).toEqual({ username: 'fromfile', password: 'pw' });
    expect(await loginProvider({ authFile })('other.example')).toBeUndefined();
  });

  it('parseUserPass splits at the first colon and refuses a value without a user', () => {
    expect(parseUserPass('oauth2accesstoken:ya29.a:b:c', '--src-creds')).toEqual({ username: 'oauth2accesstoken', password: 'ya29.a:b:c' });
    expect(() => parseUserPass(':only-secret', '--src-creds')).toThrow(/--src-creds must be USER:PASSWORD/);
    expect(() => parseUserPass('no-colon-secret', '--dest-creds')).toThrow(/--dest-creds must be USER:PASSWORD/);
    try {
      parseUserPass('no-colon-secret', '--dest-creds');
    } catch (err) {
      expect((err as Error).message).not.toContain('no-colon-secret');
    }
  });
});
