import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from './run.ts';

/** Throwaway PKI for one test bed: a CA, a server cert for 127.0.0.1, and a token-signing cert. */
export interface Pki {
  caCert: string;
  serverCert: string;
  serverKey: string;
  tokenCert: string;
  tokenKey: string;
  /** A directory holding only ca.crt: what skopeo's --*-cert-dir expects. */
  certDir: string;
}

export async function makePki(dir: string): Promise<Pki> {
  await mkdir(dir, { recursive: true });
  const p = (f: string) => join(dir, f);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  await Promise.all([
    run('openssl', ['req', '-x509', ...ec, '-days', '2', '-subj', '/CN=cartesia-airgap test CA', '-keyout', p('ca.key'), '-out', p('ca.crt')]),
    run('openssl', ['req', ...ec, '-subj', '/CN=127.0.0.1', '-keyout', p('server.key'), '-out', p('server.csr')]),
    run('openssl', ['req', '-x509', ...ec, '-days', '2', '-subj', '/CN=cartesia-airgap token signer', '-keyout', p('token.key'), '-out', p('token.crt')]),
  ]);
  await writeFile(
    p('server.ext'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n',
  );
  await run('openssl', ['x509', '-req', '-in', p('server.csr'), '-CA', p('ca.crt'), '-CAkey', p('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', p('server.ext'), '-out', p('server.crt')]);
  const certDir = p('certs.d');
  await mkdir(certDir, { recursive: true });
  await run('cp', [p('ca.crt'), join(certDir, 'ca.crt')]);
  return { caCert: p('ca.crt'), serverCert: p('server.crt'), serverKey: p('server.key'), tokenCert: p('token.crt'), tokenKey: p('token.key'), certDir };
}

/**
 * A service-account key shaped like the ones Google issues (pretty-printed JSON, real RSA key), so
 * that key-parsing code and the `_json_key` login see realistic input.
 */
export function makeServiceAccountKey(project: string, account: string): string {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const email = `${account}@${project}.iam.gserviceaccount.com`;
  const key = {
    type: 'service_account',
    project_id: project,
    private_key_id: randomBytes(20).toString('hex'),
    private_key: privateKey.export({ type: 'pkcs8', format: 'pem' }),
    client_email: email,
    client_id: String(BigInt(`0x${randomBytes(8).toString('hex')}`)),
    auth_uri: 'https://accounts.google.com/o/oauth2/auth',
    token_uri: 'https://oauth2.googleapis.com/token',
    auth_provider_x509_cert_url: 'https://www.googleapis.com/oauth2/v1/certs',
    client_x509_cert_url: `https://www.googleapis.com/robot/v1/metadata/x509/${encodeURIComponent(email)}`,
    universe_domain: 'googleapis.com',
  };
  return `${JSON.stringify(key, null, 2)}\n`;
}
