import { createWriteStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Storage } from '@google-cloud/storage';
import { describe, expect, inject, it } from 'vitest';
import { run } from '../testbed/run.ts';
import { authFile, sha256, skopeo } from './helpers.ts';
import { scratchDir } from '../unit/helpers.ts';

const bed = inject('testbed');
const fixture = inject('fixture');
const storage = new Storage({ apiEndpoint: bed.gcs.endpoint, projectId: 'cartesia-airgap-testbed' });

interface Index {
  mediaType: string;
  manifests: { digest: string; platform: { os: string; architecture: string; variant?: string } }[];
}

describe('synthetic Cartesia release in the bed', () => {
  it('serves every image index byte-exactly as generated, with the recorded platforms', async () => {
    const auth = await authFile(bed.source.host, '_json_key', (await readFile(bed.saKeyFile, 'utf8')).trim());
    expect(fixture.images.map((i) => i.repository.split('/').pop()).sort()).toEqual(
      ['cartesia-api', 'cartesia-license-proxy', 'cartesia-sonic-azure-disco', 'cartesia-sonic-rosy-dragon', 'cartesia-sonic-royal-plant', 'cartesia-sonic-voice-clone', 'nats'].sort(),
    );
    const amd64Layers: string[][] = [];
    for (const img of fixture.images) {
      const raw = await skopeo(['inspect', '--raw', '--cert-dir', bed.certDir, '--authfile', auth, `docker://${bed.source.host}/${img.repository}:${img.tag}`]);
      if (!raw.ok) throw new Error(raw.error);
      expect(`sha256:${sha256(raw.stdout)}`).toBe(img.digest);
      const index = JSON.parse(raw.stdout) as Index;
      expect(index.mediaType).toBe(img.mediaType);
      expect(index.manifests.map((m) => ({ ...m.platform, digest: m.digest }))).toEqual(img.platforms);
      const amd = img.platforms.find((p) => p.architecture === 'amd64')!;
      const manifest = await skopeo(['inspect', '--raw', '--cert-dir', bed.certDir, '--authfile', auth, `docker://${bed.source.host}/${img.repository}@${amd.digest}`]);
      if (!manifest.ok) throw new Error(manifest.error);
      if (!img.repository.startsWith('library/')) amd64Layers.push((JSON.parse(manifest.stdout) as { layers: { digest: string }[] }).layers.map((l) => l.digest));
    }
    // The base layer is one blob shared by all six Cartesia images; workers share a second one.
    expect(new Set(amd64Layers.map((l) => l[0])).size).toBe(1);
    const workerRuntime = amd64Layers.filter((l) => l.length === 3).map((l) => l[1]);
    expect(workerRuntime).toHaveLength(4);
    expect(new Set(workerRuntime).size).toBe(1);
  });

  it("publishes the archive, VERSION and SHA256SUMS the way Cartesia's instructions check them", async () => {
    const dir = await scratchDir('airgap-release-');
    const bucket = storage.bucket(fixture.release.bucket);
    const [version] = await bucket.file('cartesia-kube/latest/VERSION').download();
    expect(version.toString().trim()).toBe(fixture.release.version);
    await pipeline(bucket.file(fixture.release.archiveKey).createReadStream(), createWriteStream(join(dir, fixture.release.archiveName)));
    await pipeline(bucket.file(`cartesia-kube/releases/${fixture.release.version}/SHA256SUMS`).createReadStream(), createWriteStream(join(dir, 'SHA256SUMS')));
    // sha256sum is the oracle: exactly the check the customer runs by hand.
    expect(await run('sha256sum', ['-c', 'SHA256SUMS'], { cwd: dir })).toBe(`${fixture.release.archiveName}: OK\n`);

    const listing = (await run('tar', ['-tzf', join(dir, fixture.release.archiveName)])).split('\n');
    for (const path of ['cartesia/Chart.yaml', 'cartesia/values.yaml', 'cartesia/sample-values.yaml', 'cartesia/values.schema.json', 'local/.env.example', 'infra/aws/cartesia-eks/main.tf', 'benchmarking/tts_benchmark.py']) {
      expect(listing).toContain(`cartesia-kube/${path}`);
    }
    const values = await run('tar', ['-xzOf', join(dir, fixture.release.archiveName), 'cartesia-kube/cartesia/values.yaml']);
    expect(values).toMatch(/^# /m);
    expect(values).toContain(`  releaseTag: ${fixture.release.releaseTag}\n`);
    for (const key of ['imageRegistry:', 'authenticate: true', 'persistence:', 'storageClass:', `repository: library/nats`]) expect(values).toContain(key);
  });

  it('generates the same bytes from the same parameters', async () => {
    // Re-running the generator into a second layout must reproduce every digest.
    const { LayoutWriter } = await import('../fixtures/oci-layout.ts');
    const { buildImages } = await import('../fixtures/images.ts');
    const { TINY, NATS_REPOSITORY, NATS_TAG } = await import('../fixtures/release.ts');
    const layout = await new LayoutWriter(await scratchDir('airgap-layout-')).init();
    const again = await buildImages(layout, { prefix: bed.source.prefix, tag: TINY.releaseTag, natsRepository: NATS_REPOSITORY, natsTag: NATS_TAG, sizes: TINY.images, created: TINY.created });
    expect(again.map((i) => i.digest)).toEqual(fixture.images.map((i) => i.digest));
  });
});
