import { createHash } from 'node:crypto';
import { Storage } from '@google-cloud/storage';
import { describe, expect, inject, it } from 'vitest';

const bed = inject('testbed');
const fixture = inject('fixture');
const storage = new Storage({ apiEndpoint: bed.gcs.endpoint, projectId: 'cartesia-airgap-testbed' });
const customerBucket = `cartesia-${fixture.customer}`;

describe('GCS (firebase-tools Storage emulator)', () => {
  it('lists exactly the seeded keys under a prefix, with paging', async () => {
    const want = fixture.objects.filter((o) => o.bucket === customerBucket && o.key.startsWith('migrations/v2/migrations/')).map((o) => o.key).sort();
    expect(want.length).toBeGreaterThan(3);
    const [files] = await storage.bucket(customerBucket).getFiles({ prefix: 'migrations/v2/migrations/' });
    expect(files.map((f) => f.name).sort()).toEqual(want);
    const [page, next] = await storage.bucket(customerBucket).getFiles({ prefix: 'migrations/v2/migrations/', maxResults: 2, autoPaginate: false });
    expect(page).toHaveLength(2);
    expect(next?.pageToken).toBeTruthy();
    const [, , delimited] = await storage.bucket(customerBucket).getFiles({ delimiter: '/', autoPaginate: false });
    expect((delimited as { prefixes?: string[] }).prefixes?.sort()).toEqual(['loras/', 'migrations/']);
  });

  it('reports size, md5Hash and crc32c equal to what the generator computed while uploading', async () => {
    for (const o of fixture.objects) {
      const [meta] = await storage.bucket(o.bucket).file(o.key).getMetadata();
      expect({ key: o.key, size: Number(meta.size), md5: meta.md5Hash, crc32c: meta.crc32c }).toEqual({ key: o.key, size: o.size, md5: o.md5, crc32c: o.crc32c });
      expect(meta.generation).toBeTruthy();
    }
  });

  it('downloads whole objects and ranges byte-exactly', async () => {
    const lora = fixture.objects.find((o) => o.key.startsWith('loras/'))!;
    const h = createHash('sha256');
    for await (const chunk of storage.bucket(lora.bucket).file(lora.key).createReadStream()) h.update(chunk as Buffer);
    expect(h.digest('hex')).toBe(lora.sha256);
    const whole: Buffer[] = [];
    for await (const c of storage.bucket(lora.bucket).file(lora.key).createReadStream({ validation: false })) whole.push(c as Buffer);
    const part: Buffer[] = [];
    for await (const c of storage.bucket(lora.bucket).file(lora.key).createReadStream({ start: 1000, end: 1999, validation: false })) part.push(c as Buffer);
    expect(Buffer.concat(part)).toEqual(Buffer.concat(whole).subarray(1000, 2000));
  });
});
