import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makePki, makeServiceAccountKey } from './pki.ts';
import type { ServerProcess } from './process.ts';
import { run } from './run.ts';
import { startGcs, startMoto, startRegistry } from './servers.ts';
import { startTokenIssuer, type TokenIssuer } from './token-issuer.ts';

export const SOURCE_PREFIX = 'cartesia-external/self-serve';
export const SOURCE_SERVICE = 'cartesia-source-registry';

/** Everything a client needs to reach the bed; plain data, so it crosses process boundaries. */
export interface TestbedInfo {
  root: string;
  caFile: string;
  /** Holds only ca.crt, for skopeo's --*-cert-dir. */
  certDir: string;
  source: { host: string; prefix: string; tokenUrl: string };
  /** Service-account key (pull + push) accepted as `_json_key`: the customer's key. */
  saKeyFile: string;
  /** A second key that may only pull. */
  readerKeyFile: string;
  /** Accepted as `oauth2accesstoken` (pull only). */
  accessToken: string;
  private: { host: string; username: string; password: string };
  plain: { host: string };
  s3: { endpoint: string; region: string; accessKeyId: string; secretAccessKey: string };
  gcs: { endpoint: string };
  pids: number[];
}

export interface Testbed extends TestbedInfo {
  issuer: TokenIssuer;
  stop(): Promise<void>;
}

export async function startTestbed(opts: { root?: string; tokenTtlSeconds?: number } = {}): Promise<Testbed> {
  const root = opts.root ?? (await mkdtemp(join(tmpdir(), 'airgap-testbed-')));
  const pki = await makePki(join(root, 'pki'));
  const saKey = makeServiceAccountKey('cartesia-airgap-testbed', 'customer');
  const readerKey = makeServiceAccountKey('cartesia-airgap-testbed', 'reader');
  const saKeyFile = join(root, 'sa-key.json');
  const readerKeyFile = join(root, 'reader-key.json');
  const accessToken = `ya29.testbed-${randomBytes(24).toString('base64url')}`;
  const privateUser = 'airgap';
  const privatePassword = `pw-${randomBytes(12).toString('hex')}`;
  await Promise.all([
    writeFile(saKeyFile, saKey, { mode: 0o600 }),
    writeFile(readerKeyFile, readerKey, { mode: 0o600 }),
    run('htpasswd', ['-Bbc', join(root, 'htpasswd'), privateUser, privatePassword]),
  ]);

  const issuer = await startTokenIssuer({
    keyFile: pki.tokenKey,
    certFile: pki.tokenCert,
    tlsCertFile: pki.serverCert,
    tlsKeyFile: pki.serverKey,
    issuer: 'cartesia-airgap-testbed',
    service: SOURCE_SERVICE,
    accounts: [
      { name: 'customer', login: { kind: 'json_key', key: saKey }, actions: ['pull', 'push'] },
      { name: 'reader', login: { kind: 'json_key', key: readerKey }, actions: ['pull'] },
      { name: 'oauth2', login: { kind: 'access_token', token: accessToken }, actions: ['pull'] },
    ],
    publicRepository: /^library\//,
    ttlSeconds: opts.tokenTtlSeconds,
  });

  const tls = { certificate: pki.serverCert, key: pki.serverKey };
  const started: ServerProcess[] = [];
  const track = async (p: Promise<ServerProcess>) => {
    const s = await p;
    started.push(s);
    return s;
  };
  const stopAll = async () => {
    await Promise.all(started.map((s) => s.stop()));
    await issuer.close();
  };
  try {
    const [source, priv, plain, s3, gcs] = await Promise.all([
      track(
        startRegistry('source registry', {
          dir: join(root, 'source'),
          tls,
          auth: { token: { realm: issuer.url, service: SOURCE_SERVICE, issuer: 'cartesia-airgap-testbed', rootcertbundle: pki.tokenCert } },
        }),
      ),
      track(startRegistry('private registry (TLS)', { dir: join(root, 'private'), tls, auth: { htpasswd: { realm: 'private', path: join(root, 'htpasswd') } } })),
      track(startRegistry('plain registry', { dir: join(root, 'plain') })),
      track(startMoto(root)),
      track(startGcs(join(root, 'gcs'))),
    ]);
    return {
      root,
      caFile: pki.caCert,
      certDir: pki.certDir,
      source: { host: `127.0.0.1:${source.port}`, prefix: SOURCE_PREFIX, tokenUrl: issuer.url },
      saKeyFile,
      readerKeyFile,
      accessToken,
      private: { host: `127.0.0.1:${priv.port}`, username: privateUser, password: privatePassword },
      plain: { host: `127.0.0.1:${plain.port}` },
      s3: { endpoint: `http://127.0.0.1:${s3.port}`, region: 'us-east-1', accessKeyId: 'testbed-access-key', secretAccessKey: `testbed-secret-${randomBytes(8).toString('hex')}` },
      gcs: { endpoint: `http://127.0.0.1:${gcs.port}` },
      pids: started.map((s) => s.pid),
      issuer,
      stop: async () => {
        await stopAll();
        if (!opts.root) await rm(root, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

/** The plain-data part of a bed (what globalSetup provides to tests). */
export function testbedInfo(bed: Testbed): TestbedInfo {
  const { issuer: _issuer, stop: _stop, ...info } = bed;
  return info;
}
