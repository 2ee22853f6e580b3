import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startProcess, type ServerProcess } from './process.ts';

export const REGISTRY_BIN = '/usr/bin/docker-registry';
// The Debian package, never the pyenv shim of the same name that may be first on PATH.
export const MOTO_BIN = '/usr/bin/moto_server';

export interface RegistryOptions {
  dir: string;
  tls?: { certificate: string; key: string };
  auth?: { htpasswd: { realm: string; path: string } } | { token: { realm: string; service: string; issuer: string; rootcertbundle: string } };
}

/** docker-registry 2.8 on 127.0.0.1:0 with its own config (never the packaged one). */
export async function startRegistry(name: string, opts: RegistryOptions): Promise<ServerProcess> {
  await mkdir(join(opts.dir, 'data'), { recursive: true });
  // JSON is YAML; the registry reads it as its config.
  const config = {
    version: 0.1,
    log: { level: 'info', accesslog: { disabled: true } }, // "listening on" is an info line
    storage: { filesystem: { rootdirectory: join(opts.dir, 'data') }, delete: { enabled: true } },
    http: { addr: '127.0.0.1:0', secret: 'testbed-http-secret', ...(opts.tls ? { tls: opts.tls } : {}) },
    ...(opts.auth ? { auth: opts.auth } : {}),
  };
  const file = join(opts.dir, 'config.yml');
  await writeFile(file, JSON.stringify(config, null, 2));
  return startProcess(name, REGISTRY_BIN, ['serve', file], { ready: /listening on 127\.0\.0\.1:(\d+)/ });
}

export function startMoto(dir: string): Promise<ServerProcess> {
  return startProcess('s3 (moto)', MOTO_BIN, ['-H', '127.0.0.1', '-p', '0'], {
    cwd: dir,
    ready: /Running on http:\/\/127\.0\.0\.1:(\d+)/,
  });
}

const gcsScript = join(dirname(fileURLToPath(import.meta.url)), 'gcs-emulator.cjs');

/** The Node part of firebase-tools' Storage emulator; its blobs go under `dir`. */
export function startGcs(dir: string): Promise<ServerProcess> {
  return startProcess('gcs (firebase storage emulator)', process.execPath, [gcsScript, '0', 'cartesia-airgap-testbed'], {
    env: { TMPDIR: dir },
    ready: /LISTENING 127\.0\.0\.1:(\d+)/,
  });
}
