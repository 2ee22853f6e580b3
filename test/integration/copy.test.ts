import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, inject, it } from 'vitest';
import { errorLines, runCli } from './cli.ts';
import { run } from '../testbed/run.ts';
import { authFile, sha256, skopeo } from './helpers.ts';

const bed = inject('testbed');
const fixture = inject('fixture');
const ca = ['--src-ca-file', bed.caFile];
const fromSource = ['--src-sa-key', bed.saKeyFile, ...ca];
const privateCreds = `${bed.private.username}:${bed.private.password}`;
const api = fixture.images.find((i) => i.repository.endsWith('/cartesia-api'))!;
const worker = fixture.images.find((i) => i.repository.endsWith('/cartesia-sonic-azure-disco'))!;
const hex = (d: string) => d.slice('sha256:'.length);
const name = (repo: string) => repo.split('/').at(-1)!;
const tmp = (p: string) => mkdtemp(join(bed.root, `${p}-`));

interface CopyJson {
  digest: string;
  mediaType: string;
  blobs: { total: number; uploaded: number; mounted: number; existed: number };
  manifests: { total: number; pushed: number; existed: number };
  bytesTransferred: number;
  bytesTotal: number;
  platform?: string;
  indexDigest?: string;
}

async function copy(src: string, dst: string, flags: string[] = []): Promise<CopyJson> {
  const r = await runCli(['copy', src, dst, '--json', ...flags]);
  if (r.code !== 0) throw new Error(`copy ${src} ${dst} exited ${r.code}: ${errorLines(r).join(' | ')}`);
  return JSON.parse(r.stdout) as CopyJson;
}

/** skopeo's view of a reference: the sha256 of the exact manifest bytes it reads. */
async function rawDigest(ref: string, flags: string[] = []): Promise<string> {
  const r = await skopeo(['inspect', '--raw', ...flags, ref]);
  if (!r.ok) throw new Error(r.error);
  return `sha256:${sha256(r.stdout)}`;
}

describe('copy: source registry → OCI layout', () => {
  it('copies every fixture image (token auth, _json_key) into one layout, digests identical for skopeo', async () => {
    const dir = await tmp('layout-all');
    for (const img of fixture.images) {
      const out = await copy(`docker://${bed.source.host}/${img.repository}:${img.tag}`, `oci:${dir}`, fromSource);
      expect(out.digest).toBe(img.digest);
      expect(await rawDigest(`oci:${dir}:${name(img.repository)}:${img.tag}`)).toBe(img.digest);
    }
    // Shared base layers are stored once; skopeo can push our layout on.
    const pushed = await skopeo(['copy', '--all', '--preserve-digests', '--quiet', '--dest-tls-verify=false', `oci:${dir}:${name(worker.repository)}:${worker.tag}`, `docker://${bed.plain.host}/from-our-layout/w:${worker.tag}`]);
    expect(pushed).toMatchObject({ ok: true });
    expect(await rawDigest(`docker://${bed.plain.host}/from-our-layout/w:${worker.tag}`, ['--tls-verify=false'])).toBe(worker.digest);
  });

  it('logs in as oauth2accesstoken with an access token', async () => {
    const dir = await tmp('layout-token');
    const out = await copy(`docker://${bed.source.host}/${api.repository}:${api.tag}`, `oci:${dir}:api`, [...ca, '--src-creds', `oauth2accesstoken:${bed.accessToken}`]);
    expect(out.digest).toBe(api.digest);
    expect(await rawDigest(`oci:${dir}:api`)).toBe(api.digest);
  });

  it('--platform linux/amd64 copies exactly the amd64 manifest with its upstream digest, and says the index was dropped', async () => {
    const dir = await tmp('layout-amd64');
    const amd64 = api.platforms.find((p) => p.architecture === 'amd64')!;
    const out = await copy(`docker://${bed.source.host}/${api.repository}:${api.tag}`, `oci:${dir}:api-amd64`, [...fromSource, '--platform', 'linux/amd64']);
    expect(out).toMatchObject({ digest: amd64.digest, platform: 'linux/amd64', indexDigest: api.digest, mediaType: 'application/vnd.oci.image.manifest.v1+json' });
    expect(await rawDigest(`oci:${dir}:api-amd64`)).toBe(amd64.digest);
    const arm64 = api.platforms.find((p) => p.architecture === 'arm64')!;
    const layout = await skopeo(['inspect', '--raw', `oci:${dir}:api-amd64`]);
    expect(layout.ok && layout.stdout).not.toContain(hex(arm64.digest));
  });
});

describe('copy: other sources and logins', () => {
  it('reads a tar of a layout in place (oci-archive:), digests identical', async () => {
    const dir = await tmp('layout-for-tar');
    await copy(`docker://${bed.source.host}/${api.repository}:${api.tag}`, `oci:${dir}`, fromSource);
    const tar = `${dir}.tar`;
    await run('tar', ['-C', dir, '-cf', tar, '.']);
    const dest = `docker://${bed.plain.host}/from-tar/api:${api.tag}`;
    const out = await copy(`oci-archive:${tar}:${name(api.repository)}:${api.tag}`, dest, ['--dest-plain-http']);
    expect(out.digest).toBe(api.digest);
    expect(await rawDigest(dest, ['--tls-verify=false'])).toBe(api.digest);
  });

  it('pulls a public image anonymously (token flow without a login)', async () => {
    const nats = fixture.images.find((i) => i.repository === 'library/nats')!;
    const dir = await tmp('layout-anon');
    const out = await copy(`docker://${bed.source.host}/library/nats:${nats.tag}`, `oci:${dir}`, ca);
    expect(out.digest).toBe(nats.digest);
    expect(await rawDigest(`oci:${dir}:nats:${nats.tag}`)).toBe(nats.digest);
  });

  it('--src-tls-verify=false reaches a registry (and its token service) whose CA is unknown', async () => {
    const dir = await tmp('layout-noverify');
    const out = await copy(`docker://${bed.source.host}/${worker.repository}:${worker.tag}`, `oci:${dir}`, ['--src-sa-key', bed.saKeyFile, '--src-tls-verify=false']);
    expect(out.digest).toBe(worker.digest);
  });
});

describe('copy: into registries', () => {
  it('layout → TLS/htpasswd private registry keeps digests; a second copy uploads nothing', async () => {
    const dir = await tmp('layout-push');
    await copy(`docker://${bed.source.host}/${worker.repository}:${worker.tag}`, `oci:${dir}`, fromSource);
    const dest = `docker://${bed.private.host}/mirror-ours/${name(worker.repository)}:${worker.tag}`;
    const flags = ['--dest-creds', privateCreds, '--dest-ca-file', bed.caFile];
    const first = await copy(`oci:${dir}:${name(worker.repository)}:${worker.tag}`, dest, flags);
    expect(first.blobs.uploaded).toBe(first.blobs.total);
    expect(first.blobs.total).toBeGreaterThan(0);
    const auth = await authFile(bed.private.host, bed.private.username, bed.private.password);
    expect(await rawDigest(dest, ['--cert-dir', bed.certDir, '--authfile', auth])).toBe(worker.digest);
    const second = await copy(`oci:${dir}:${name(worker.repository)}:${worker.tag}`, dest, flags);
    expect(second.blobs.uploaded).toBe(0);
    expect(second.bytesTransferred).toBe(0);
  });

  it('registry → registry keeps digests, and within one registry mounts instead of uploading', async () => {
    const auth = await authFile(bed.private.host, bed.private.username, bed.private.password);
    const a = `docker://${bed.private.host}/mirror-a/api:${api.tag}`;
    const crossed = await copy(`docker://${bed.source.host}/${api.repository}:${api.tag}`, a, [...fromSource, '--dest-creds', privateCreds, '--dest-ca-file', bed.caFile]);
    expect(crossed.blobs.uploaded).toBe(crossed.blobs.total);
    expect(await rawDigest(a, ['--cert-dir', bed.certDir, '--authfile', auth])).toBe(api.digest);

    const b = `docker://${bed.private.host}/mirror-b/api:${api.tag}`;
    // Logins from a Docker config file this time.
    const mounted = await copy(a, b, ['--src-authfile', auth, '--dest-authfile', auth, '--src-ca-file', bed.caFile, '--dest-ca-file', bed.caFile]);
    expect(mounted.blobs.mounted).toBe(mounted.blobs.total);
    expect(mounted.blobs.uploaded).toBe(0);
    expect(mounted.bytesTransferred).toBe(0);
    expect(await rawDigest(b, ['--cert-dir', bed.certDir, '--authfile', auth])).toBe(api.digest);
  });

  it('uploads in chunks when asked, with the same digests', async () => {
    const dest = `docker://${bed.plain.host}/chunked/w:${worker.tag}`;
    const out = await copy(`docker://${bed.source.host}/${worker.repository}:${worker.tag}`, dest, [...fromSource, '--dest-plain-http', '--dest-chunked']);
    expect(out.blobs.uploaded).toBe(out.blobs.total);
    expect(await rawDigest(dest, ['--tls-verify=false'])).toBe(worker.digest);
  });
});

describe('copy: clear one-line errors', () => {
  const expectOneLine = (r: { code: number | null; stderr: string; stdout: string }, code: number, pattern: RegExp) => {
    expect(r.code).toBe(code);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^Error: /);
    expect(lines[0]).toMatch(pattern);
  };

  it('wrong credentials, an unknown CA and a missing tag', async () => {
    const dir = await tmp('errors');
    const src = `docker://${bed.private.host}/mirror-a/api:${api.tag}`;
    const wrong = await runCli(['copy', src, `oci:${dir}`, '--src-creds', `${bed.private.username}:not-the-password`, ...ca]);
    expectOneLine(wrong, 1, /refused the credentials for pull on mirror-a\/api/);
    expect(wrong.stderr).not.toContain('not-the-password');
    expectOneLine(await runCli(['copy', src, `oci:${dir}`, '--src-creds', privateCreds]), 1, /TLS connection to https:\/\/127\.0\.0\.1:\d+ failed.*CA certificate/);
    expectOneLine(await runCli(['copy', `docker://${bed.source.host}/${api.repository}:no-such-tag`, `oci:${dir}`, ...fromSource]), 1, /:no-such-tag not found/);
    const badKey = await runCli(['copy', `docker://${bed.source.host}/${api.repository}:${api.tag}`, `oci:${dir}`, '--src-sa-key', bed.readerKeyFile.replace('reader', 'nope'), ...ca]);
    expectOneLine(badKey, 1, /cannot read the service-account key/);
    // Nothing was written for any of them.
    expect((await skopeo(['inspect', '--raw', `oci:${dir}`])).ok).toBe(false);
  });

  it('bad usage exits 2', async () => {
    expectOneLine(await runCli(['copy', 'docker://127.0.0.1:1/Upper/case', 'oci:/tmp/x']), 2, /invalid image reference/);
    expectOneLine(await runCli(['copy', 'ftp://x', 'oci:/tmp/x']), 2, /not a location/);
    expect((await runCli(['copy', 'docker://a/b', 'oci:/tmp/x', '--no-such-flag'])).code).toBe(2);
    expect((await runCli(['copy', 'docker://a/b', 'oci:/tmp/x', '--platform', 'linux'])).code).toBe(2);
  });
});
