import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, inject, it } from 'vitest';
import { makeServiceAccountKey } from '../testbed/pki.ts';
import { SOURCE_SERVICE } from '../testbed/testbed.ts';
import { authFile, basic, fetchRaw, sha256, skopeo } from './helpers.ts';

const bed = inject('testbed');
const fixture = inject('fixture');
const layout = join(bed.root, 'fixture', 'layout');
const api = fixture.images.find((i) => i.repository.endsWith('/cartesia-api'))!;

async function token(authorization: string | undefined, scope: string): Promise<{ status: number; token?: string }> {
  const url = `${bed.source.tokenUrl}?service=${SOURCE_SERVICE}&scope=${encodeURIComponent(scope)}`;
  const res = await fetchRaw(url, { ca: await readFile(bed.caFile), headers: authorization ? { authorization } : {} });
  return { status: res.status, token: res.status === 200 ? (JSON.parse(res.body.toString()) as { token: string }).token : undefined };
}

describe('source registry (Artifact Registry stand-in, token auth)', () => {
  it('answers an anonymous /v2/ with a Bearer challenge naming our realm and service', async () => {
    const res = await fetchRaw(`https://${bed.source.host}/v2/`, { ca: await readFile(bed.caFile) });
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toBe(`Bearer realm="${bed.source.tokenUrl}",service="${SOURCE_SERVICE}"`);
  });

  it('accepts a push with `_json_key` and the full key, keeping the digest', async () => {
    const key = (await readFile(bed.saKeyFile, 'utf8')).trim();
    const auth = await authFile(bed.source.host, '_json_key', key);
    const dest = `docker://${bed.source.host}/${bed.source.prefix}/pushed-by-test:${api.tag}`;
    const copied = await skopeo(['copy', '--all', '--preserve-digests', '--quiet', '--dest-cert-dir', bed.certDir, '--dest-authfile', auth, `oci:${layout}:${api.repository}:${api.tag}`, dest]);
    expect(copied).toMatchObject({ ok: true });
    const raw = await skopeo(['inspect', '--raw', '--cert-dir', bed.certDir, '--authfile', auth, dest]);
    expect(raw.ok && sha256(raw.stdout)).toBe(api.digest.slice('sha256:'.length));
  });

  it('accepts `_json_key_base64` and `oauth2accesstoken` for pulls', async () => {
    const key = (await readFile(bed.saKeyFile, 'utf8')).trim();
    const ref = `docker://${bed.source.host}/${api.repository}:${api.tag}`;
    for (const auth of [await authFile(bed.source.host, '_json_key_base64', Buffer.from(key).toString('base64')), await authFile(bed.source.host, 'oauth2accesstoken', bed.accessToken)]) {
      const raw = await skopeo(['inspect', '--raw', '--cert-dir', bed.certDir, '--authfile', auth, ref]);
      expect(raw.ok && sha256(raw.stdout)).toBe(api.digest.slice('sha256:'.length));
    }
  });

  it('refuses a wrong key, and a key that differs from the right one only after byte 72', async () => {
    const right = await readFile(bed.saKeyFile, 'utf8');
    const wrong = makeServiceAccountKey('cartesia-airgap-testbed', 'customer');
    // bcrypt-based htpasswd would accept this one: only the first 72 bytes count there.
    const tail = right.replace(/"universe_domain": "googleapis.com"/, '"universe_domain": "googleapis.org"');
    expect(tail.slice(0, 72)).toBe(right.slice(0, 72));
    expect(tail).not.toBe(right);
    for (const key of [wrong, tail]) {
      expect((await token(basic('_json_key', key.trim()), `repository:${api.repository}:pull`)).status).toBe(401);
      const auth = await authFile(bed.source.host, '_json_key', key.trim());
      const res = await skopeo(['inspect', '--raw', '--cert-dir', bed.certDir, '--authfile', auth, `docker://${bed.source.host}/${api.repository}:${api.tag}`]);
      expect(res.ok).toBe(false);
      expect(!res.ok && res.error).toMatch(/invalid username\/password|unauthorized/i);
    }
  });

  it('denies anonymous pulls of Cartesia images but serves library/ (Docker Hub) images anonymously', async () => {
    const cartesia = await skopeo(['inspect', '--raw', '--cert-dir', bed.certDir, '--no-creds', `docker://${bed.source.host}/${api.repository}:${api.tag}`]);
    expect(cartesia.ok).toBe(false);
    const nats = fixture.images.find((i) => i.repository === 'library/nats')!;
    const pub = await skopeo(['inspect', '--raw', '--cert-dir', bed.certDir, '--no-creds', `docker://${bed.source.host}/${nats.repository}:${nats.tag}`]);
    expect(pub.ok && sha256(pub.stdout)).toBe(nats.digest.slice('sha256:'.length));
  });

  it('enforces scopes: a pull-only token cannot start an upload, a push token can', async () => {
    const key = (await readFile(bed.saKeyFile, 'utf8')).trim();
    const repo = `${bed.source.prefix}/scope-test`;
    const upload = async (tok: string) =>
      (await fetchRaw(`https://${bed.source.host}/v2/${repo}/blobs/uploads/`, { method: 'POST', ca: await readFile(bed.caFile), headers: { authorization: `Bearer ${tok}`, 'content-length': '0' } })).status;
    const pullOnly = await token(basic('_json_key', key), `repository:${repo}:pull`);
    expect(pullOnly.status).toBe(200);
    expect(await upload(pullOnly.token!)).toBe(401);
    const push = await token(basic('_json_key', key), `repository:${repo}:pull,push`);
    expect(await upload(push.token!)).toBe(202);
  });

  it('grants a pull-only account no push, even when it asks for push', async () => {
    const reader = (await readFile(bed.readerKeyFile, 'utf8')).trim();
    const auth = await authFile(bed.source.host, '_json_key', reader);
    const pull = await skopeo(['inspect', '--raw', '--cert-dir', bed.certDir, '--authfile', auth, `docker://${bed.source.host}/${api.repository}:${api.tag}`]);
    expect(pull.ok).toBe(true);
    const push = await skopeo(['copy', '--all', '--quiet', '--dest-cert-dir', bed.certDir, '--dest-authfile', auth, `oci:${layout}:${api.repository}:${api.tag}`, `docker://${bed.source.host}/${bed.source.prefix}/reader-push:${api.tag}`]);
    expect(push.ok).toBe(false);
    expect(!push.ok && push.error).toMatch(/denied|unauthorized/i);
  });
});
