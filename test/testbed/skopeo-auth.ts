import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * A containers-auth.json for skopeo holding base64("user:secret") for one registry host, mode
 * 0600, under `dir` (a bed's root, so it goes when the bed stops): secrets stay out of argv, out of
 * any shared auth file, and out of /tmp after the run.
 */
export async function skopeoAuthFile(dir: string, host: string, username: string, secret: string): Promise<string> {
  const file = join(dir, `skopeo-auth-${randomBytes(6).toString('hex')}.json`);
  await writeFile(file, JSON.stringify({ auths: { [host]: { auth: Buffer.from(`${username}:${secret}`).toString('base64') } } }), { mode: 0o600, flag: 'wx' });
  return file;
}
