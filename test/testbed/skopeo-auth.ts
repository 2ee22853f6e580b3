import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A containers-auth.json for skopeo holding base64("user:secret") for one registry host, mode
 * 0600 in a fresh temp dir: secrets stay out of argv and out of any shared auth file.
 */
export async function skopeoAuthFile(host: string, username: string, secret: string): Promise<string> {
  const file = join(await mkdtemp(join(tmpdir(), 'airgap-auth-')), 'auth.json');
  await writeFile(file, JSON.stringify({ auths: { [host]: { auth: Buffer.from(`${username}:${secret}`).toString('base64') } } }), { mode: 0o600 });
  return file;
}
