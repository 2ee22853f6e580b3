import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, inject, it } from 'vitest';
import { Transport } from '../../src/oci/http/transport.ts';
import { uploadBlob } from '../../src/oci/registry/upload.ts';
import { registryClient } from '../../src/oci/stores.ts';
import { authFile, basic, fetchRaw, sha256, skopeo } from './helpers.ts';

const bed = inject('testbed');
const fixture = inject('fixture');
const layout = join(bed.root, 'fixture', 'layout');
const worker = fixture.images.find((i) => i.repository.endsWith('/cartesia-sonic-rosy-dragon'))!;

describe('private registry (TLS from a throwaway CA, htpasswd)', () => {
  it('refuses a client that does not trust the CA', async () => {
    await expect(fetchRaw(`https://${bed.private.host}/v2/`)).rejects.toThrow(/self-signed|unable to verify|certificate/i);
    const res = await skopeo(['inspect', '--raw', '--creds', `${bed.private.username}:${bed.private.password}`, `docker://${bed.private.host}/anything:1`]);
    expect(res.ok).toBe(false);
    expect(!res.ok && res.error).toMatch(/x509|certificate/i);
  });

  it('answers 401 with a Basic challenge without credentials, 401 with a wrong password, 200 with the right one', async () => {
    const ca = await readFile(bed.caFile);
    const anon = await fetchRaw(`https://${bed.private.host}/v2/`, { ca });
    expect(anon.status).toBe(401);
    expect(anon.headers['www-authenticate']).toMatch(/^Basic realm=/);
    expect((await fetchRaw(`https://${bed.private.host}/v2/`, { ca, headers: { authorization: basic(bed.private.username, 'wrong') } })).status).toBe(401);
    expect((await fetchRaw(`https://${bed.private.host}/v2/`, { ca, headers: { authorization: basic(bed.private.username, bed.private.password) } })).status).toBe(200);
  });

  it('takes a multi-arch image from skopeo with the CA and credentials, digests unchanged', async () => {
    const auth = await authFile(bed.private.host, bed.private.username, bed.private.password);
    const dest = `docker://${bed.private.host}/mirror/cartesia-sonic-rosy-dragon:${worker.tag}`;
    expect(await skopeo(['copy', '--all', '--preserve-digests', '--quiet', '--dest-cert-dir', bed.certDir, '--dest-authfile', auth, `oci:${layout}:${worker.repository}:${worker.tag}`, dest])).toMatchObject({ ok: true });
    const raw = await skopeo(['inspect', '--raw', '--cert-dir', bed.certDir, '--authfile', auth, dest]);
    expect(raw.ok && sha256(raw.stdout)).toBe(worker.digest.slice('sha256:'.length));
    // And the arm64 manifest is served by digest, byte for byte.
    const arm = worker.platforms.find((p) => p.architecture === 'arm64')!;
    const byDigest = await skopeo(['inspect', '--raw', '--cert-dir', bed.certDir, '--authfile', auth, `docker://${bed.private.host}/mirror/cartesia-sonic-rosy-dragon@${arm.digest}`]);
    expect(byDigest.ok && `sha256:${sha256(byDigest.stdout)}`).toBe(arm.digest);
  });
});

describe('plain-HTTP registry without auth', () => {
  it('serves /v2/ over plain HTTP and round-trips an image', async () => {
    expect((await fetchRaw(`http://${bed.plain.host}/v2/`)).status).toBe(200);
    const dest = `docker://${bed.plain.host}/plain/cartesia-sonic-rosy-dragon:${worker.tag}`;
    expect(await skopeo(['copy', '--all', '--preserve-digests', '--quiet', '--dest-tls-verify=false', `oci:${layout}:${worker.repository}:${worker.tag}`, dest])).toMatchObject({ ok: true });
    const raw = await skopeo(['inspect', '--raw', '--tls-verify=false', dest]);
    expect(raw.ok && sha256(raw.stdout)).toBe(worker.digest.slice('sha256:'.length));
  });

  // install pushes blobs it hashed moments before without hashing them again: this registry's
  // own digest check is then what stands between a bundle changed since and a stored blob.
  it('checks the digest itself: a blob whose bytes differ from the digest pushed unhashed (verified: true) is refused and not stored', async () => {
    const transport = await Transport.create({}, {});
    try {
      const client = await registryClient(bed.private.host, transport, { login: { credential: { username: bed.private.username, password: bed.private.password } }, endpoint: { caFile: bed.caFile } });
      const good = Buffer.from(`good bytes ${Date.now()}`);
      const bad = Buffer.from(good).fill(0x41, 0, 4);
      const desc = { mediaType: 'application/octet-stream', digest: `sha256:${createHash('sha256').update(good).digest('hex')}`, size: good.length };
      await expect(uploadBlob(client, 'verified/blob', desc, async () => Readable.from([bad]), { verified: true })).rejects.toThrow(/digest|400|invalid/i);
      const head = await fetchRaw(`https://${bed.private.host}/v2/verified/blob/blobs/${desc.digest}`, { ca: await readFile(bed.caFile), method: 'HEAD', headers: { authorization: basic(bed.private.username, bed.private.password) } });
      expect(head.status).toBe(404);
      await expect(uploadBlob(client, 'verified/blob', desc, async () => Readable.from([good]), { verified: true })).resolves.toMatchObject({ how: 'uploaded' });
    } finally {
      await transport.close();
    }
  });
});
