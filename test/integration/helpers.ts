import { createHash } from 'node:crypto';
import { request } from 'node:https';
import { request as httpRequest } from 'node:http';
import { inject } from 'vitest';
import { run } from '../testbed/run.ts';
import { skopeoAuthFile } from '../testbed/skopeo-auth.ts';

export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** One HTTP(S) request with Node's own client: an oracle independent of the engine under test. */
export function fetchRaw(url: string, opts: { method?: string; headers?: Record<string, string>; ca?: string | Buffer; body?: Buffer } = {}): Promise<Reply> {
  const u = new URL(url);
  const send = u.protocol === 'https:' ? request : httpRequest;
  return new Promise((resolve, reject) => {
    const req = send(u, { method: opts.method ?? 'GET', headers: opts.headers, ...(opts.ca ? { ca: opts.ca } : {}) }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

export const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
export const basic = (user: string, secret: string) => `Basic ${Buffer.from(`${user}:${secret}`).toString('base64')}`;

/** A skopeo auth file under the bed's root, removed with the bed. */
export const authFile = (host: string, username: string, secret: string) => skopeoAuthFile(inject('testbed').root, host, username, secret);

/** Runs skopeo and reports success or its stderr, so a test can assert on refusals. */
export async function skopeo(args: string[]): Promise<{ ok: true; stdout: string } | { ok: false; error: string }> {
  try {
    return { ok: true, stdout: await run('skopeo', args) };
  } catch (err) {
    return { ok: false, error: (err as Error).message };
  }
}
