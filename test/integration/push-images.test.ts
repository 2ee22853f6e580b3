// install pushes its images side by side: a blob several images share must be uploaded once, the
// others waiting for that upload and mounting it, however the transfers interleave.
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, inject, it } from 'vitest';
import type { BundleImage } from '../../src/bundle/manifest.ts';
import { pushImages } from '../../src/install/images.ts';
import { walkGraph } from '../../src/oci/graph.ts';
import { Transport } from '../../src/oci/http/transport.ts';
import { DirectoryFiles } from '../../src/oci/layout/directory-files.ts';
import { LayoutReader } from '../../src/oci/layout/reader.ts';
import type { LayoutFiles } from '../../src/oci/types.ts';

const bed = inject('testbed');
const fixture = inject('fixture');

describe('pushImages', () => {
  it('uploads a blob the images share once and mounts it everywhere else, even when every read is slow', async () => {
    const files = new DirectoryFiles(join(bed.root, 'fixture', 'layout'));
    // The first read of each blob starts late, so the other images reach a shared layer while its first upload is under way.
    const opened = new Set<string>();
    const slow: LayoutFiles = {
      description: files.description,
      size: (p) => files.size(p),
      read: (p) => files.read(p),
      open: async (p, offset) => {
        if (!opened.has(p)) await (opened.add(p), sleep(1000));
        return files.open(p, offset);
      },
    };
    const workers = fixture.images.filter((i) => /cartesia-sonic-/.test(i.repository));
    expect(workers.length).toBeGreaterThanOrEqual(3);
    const images = workers.map((i) => ({ name: i.repository.split('/').at(-1)!, ref: `${i.repository}:${i.tag}`, tag: i.tag }) as BundleImage);
    const transport = await Transport.create({}, {});
    try {
      const prefix = `side-by-side-${randomBytes(3).toString('hex')}`;
      const pushed = await pushImages(images, slow, { host: bed.private.host, prefix }, {
        transport,
        login: { credential: { username: bed.private.username, password: bed.private.password } },
        endpoint: { caFile: bed.caFile },
        concurrency: 4,
      });
      const layout = new LayoutReader(files);
      const graphs = await Promise.all(images.map(async (i) => walkGraph(layout, await layout.resolve(i.ref))));
      const refs = graphs.reduce((n, g) => n + g.blobs.length, 0);
      const distinct = new Set(graphs.flatMap((g) => g.blobs.map((d) => d.digest))).size;
      expect(distinct).toBeLessThan(refs); // they do share blobs
      const sum = (k: 'uploaded' | 'mounted' | 'existed') => pushed.reduce((n, p) => n + p.result.blobs[k], 0);
      expect({ uploaded: sum('uploaded'), mounted: sum('mounted'), existed: sum('existed') }).toEqual({ uploaded: distinct, mounted: refs - distinct, existed: 0 });
      expect(pushed.map((p) => p.digest)).toEqual(workers.map((w) => w.digest));
    } finally {
      await transport.close();
    }
  });
});
