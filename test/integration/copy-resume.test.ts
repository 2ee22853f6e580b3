import { randomBytes } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, inject, it } from 'vitest';
import { seededBytes } from '../fixtures/bytes.ts';
import { OCI } from '../fixtures/images.ts';
import { LayoutWriter, type Descriptor } from '../fixtures/oci-layout.ts';
import { run } from '../testbed/run.ts';
import { runCli, startCli } from './cli.ts';
import { fetchRaw, sha256, skopeo } from './helpers.ts';

const bed = inject('testbed');
const plain = bed.plain.host;
const hex = (d: string) => d.slice('sha256:'.length);
const size = async (p: string) => (await stat(p).catch(() => undefined))?.size;

/** A one-layer image built by the fixtures (not the engine) and pushed by skopeo. */
async function seedImage(repo: string, layerBytes: number): Promise<{ manifest: Descriptor; layer: Descriptor; ref: string }> {
  const tag = randomBytes(4).toString('hex');
  const layout = await new LayoutWriter(join(bed.root, `seed-${repo.replaceAll('/', '-')}-${tag}`)).init();
  const layer = await layout.putStream(OCI.layer, seededBytes(`${repo}-${tag}`, layerBytes));
  const config = await layout.putJson(OCI.config, { architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [layer.digest] } });
  const manifest = await layout.putJson(OCI.manifest, { schemaVersion: 2, mediaType: OCI.manifest, config, layers: [layer] });
  layout.addRef(manifest, 'img');
  await layout.writeIndex();
  const ref = `${plain}/${repo}:${tag}`;
  const pushed = await skopeo(['copy', '--quiet', '--preserve-digests', '--dest-tls-verify=false', `oci:${layout.dir}:img`, `docker://${ref}`]);
  expect(pushed).toMatchObject({ ok: true });
  return { manifest, layer, ref };
}

describe('copy: interrupted, corrupt and Docker schema-2 content', () => {
  it('resumes a copy killed mid-blob, fetching only the missing bytes, with an identical result', async () => {
    const layerSize = 128 << 20;
    const img = await seedImage('resume/big', layerSize);
    const dir = join(bed.root, `resume-${randomBytes(4).toString('hex')}`);
    const partial = join(dir, '.cartesia-airgap-ingest', hex(img.layer.digest));
    const args = ['copy', `docker://${img.ref}`, `oci:${dir}:big`, '--src-plain-http', '--json'];

    const first = startCli(args);
    let exited = false;
    void first.done.then(() => (exited = true));
    // kill -9 once a real part of the layer is on disk: no chance to clean up.
    while (!exited && ((await size(partial)) ?? 0) < 8 << 20) await sleep(2);
    first.child.kill('SIGKILL');
    const killed = await first.done;
    expect(killed.signal).toBe('SIGKILL');
    const have = (await size(partial))!;
    expect(have).toBeGreaterThan(0);
    expect(have).toBeLessThan(layerSize);
    expect(await size(join(dir, 'blobs', 'sha256', hex(img.layer.digest)))).toBeUndefined();
    expect((await skopeo(['inspect', '--raw', `oci:${dir}:big`])).ok).toBe(false);

    const again = await runCli(args);
    expect(again.code).toBe(0);
    const out = JSON.parse(again.stdout) as { digest: string; bytesTransferred: number; bytesTotal: number };
    expect(out.digest).toBe(img.manifest.digest);
    // Only the missing tail of the layer (and at most the small config) crossed the wire again.
    expect(out.bytesTransferred).toBeGreaterThanOrEqual(layerSize - have);
    expect(out.bytesTransferred).toBeLessThanOrEqual(out.bytesTotal - have);
    console.log(`resume: killed with ${have} of ${layerSize} bytes on disk; re-run transferred ${out.bytesTransferred} of ${out.bytesTotal}`);
    const sum = await run('sha256sum', [join(dir, 'blobs', 'sha256', hex(img.layer.digest))]);
    expect(sum.split(' ')[0]).toBe(hex(img.layer.digest));
    const raw = await skopeo(['inspect', '--raw', `oci:${dir}:big`]);
    expect(raw.ok && `sha256:${sha256(raw.stdout)}`).toBe(img.manifest.digest);
    expect(await size(partial)).toBeUndefined();
  });

  it('refuses a blob corrupted in the registry storage, naming its digest, and stores nothing of it', async () => {
    const img = await seedImage('corrupt/img', 300_000);
    const data = join(bed.root, 'plain', 'data', 'docker', 'registry', 'v2', 'blobs', 'sha256', hex(img.layer.digest).slice(0, 2), hex(img.layer.digest), 'data');
    const bytes = await readFile(data);
    bytes[1000] = bytes[1000]! ^ 0xff;
    await writeFile(data, bytes);
    const dir = join(bed.root, `corrupt-${randomBytes(4).toString('hex')}`);
    const r = await runCli(['copy', `docker://${img.ref}`, `oci:${dir}:img`, '--src-plain-http']);
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split('\n').filter((l) => l.startsWith('Error:'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(img.layer.digest);
    expect(lines[0]).toMatch(/corrupt/);
    expect(await size(join(dir, 'blobs', 'sha256', hex(img.layer.digest)))).toBeUndefined();
    expect(await size(join(dir, '.cartesia-airgap-ingest', hex(img.layer.digest)))).toBeUndefined();
    expect((await skopeo(['inspect', '--raw', `oci:${dir}:img`])).ok).toBe(false);
  });

  it('carries a Docker schema-2 manifest list byte for byte, registry → layout → registry', async () => {
    // Pushed with plain HTTP requests: no engine code involved in making the input.
    const put = async (path: string, body: Buffer, contentType: string) => {
      const res = await fetchRaw(`http://${plain}${path}`, { method: 'PUT', body, headers: { 'content-type': contentType, 'content-length': String(body.length) } });
      expect(res.status).toBe(201);
    };
    const blob = async (repo: string, body: Buffer) => {
      const start = await fetchRaw(`http://${plain}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers: { 'content-length': '0' } });
      const url = new URL(String(start.headers.location), `http://${plain}`);
      url.searchParams.set('digest', `sha256:${sha256(body)}`);
      await put(url.pathname + url.search, body, 'application/octet-stream');
      return { digest: `sha256:${sha256(body)}`, size: body.length };
    };
    const repo = `docker-s2/img${randomBytes(3).toString('hex')}`;
    const manifests = [];
    for (const architecture of ['amd64', 'arm64']) {
      const layer = await blob(repo, randomBytes(5000));
      const config = await blob(repo, Buffer.from(JSON.stringify({ architecture, os: 'linux', rootfs: { type: 'layers', diff_ids: [layer.digest] } })));
      // Docker's own indentation: a re-serialising copier would change these bytes and the digest.
      const m = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.docker.distribution.manifest.v2+json', config: { mediaType: 'application/vnd.docker.container.image.v1+json', ...config }, layers: [{ mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', ...layer }] }, null, 3));
      await put(`/v2/${repo}/manifests/sha256:${sha256(m)}`, m, 'application/vnd.docker.distribution.manifest.v2+json');
      manifests.push({ mediaType: 'application/vnd.docker.distribution.manifest.v2+json', digest: `sha256:${sha256(m)}`, size: m.length, platform: { architecture, os: 'linux' } });
    }
    const list = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.docker.distribution.manifest.list.v2+json', manifests }, null, 3));
    await put(`/v2/${repo}/manifests/v1`, list, 'application/vnd.docker.distribution.manifest.list.v2+json');
    const listDigest = `sha256:${sha256(list)}`;

    const dir = join(bed.root, `docker-s2-${randomBytes(4).toString('hex')}`);
    const toLayout = await runCli(['copy', `docker://${plain}/${repo}:v1`, `oci:${dir}:img`, '--src-plain-http', '--json']);
    expect(toLayout.code).toBe(0);
    expect(JSON.parse(toLayout.stdout)).toMatchObject({ digest: listDigest, mediaType: 'application/vnd.docker.distribution.manifest.list.v2+json' });
    expect(sha256(await readFile(join(dir, 'blobs', 'sha256', hex(listDigest))))).toBe(hex(listDigest));
    const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as { manifests: Descriptor[] };
    expect(index.manifests[0]).toMatchObject({ digest: listDigest, mediaType: 'application/vnd.docker.distribution.manifest.list.v2+json' });

    const back = await runCli(['copy', `oci:${dir}:img`, `docker://${plain}/${repo}-back:v1`, '--dest-plain-http']);
    expect(back.code).toBe(0);
    const raw = await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${plain}/${repo}-back:v1`]);
    expect(raw.ok && `sha256:${sha256(raw.stdout)}`).toBe(listDigest);
    const arm = await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${plain}/${repo}-back@${manifests[1]!.digest}`]);
    expect(arm.ok && `sha256:${sha256(arm.stdout)}`).toBe(manifests[1]!.digest);
  });
});
