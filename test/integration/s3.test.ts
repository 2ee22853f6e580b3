import { createHash, randomBytes } from 'node:crypto';
import { CreateBucketCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { describe, expect, inject, it } from 'vitest';
import { seededBytes } from '../fixtures/bytes.ts';

const bed = inject('testbed');
const s3 = new S3Client({
  endpoint: bed.s3.endpoint,
  region: bed.s3.region,
  forcePathStyle: true,
  credentials: { accessKeyId: bed.s3.accessKeyId, secretAccessKey: bed.s3.secretAccessKey },
  // What the installer will use, so MinIO and other S3 servers work (research/libs.md §5).
  requestChecksumCalculation: 'WHEN_REQUIRED',
  responseChecksumValidation: 'WHEN_REQUIRED',
});

async function bodySha256(key: string, bucket: string): Promise<{ sha: string; size: number }> {
  const res = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  const h = createHash('sha256');
  let size = 0;
  for await (const chunk of res.Body as AsyncIterable<Buffer>) {
    h.update(chunk);
    size += chunk.length;
  }
  return { sha: h.digest('hex'), size };
}

describe('S3 (moto_server)', () => {
  const bucket = `s3-test-${randomBytes(4).toString('hex')}`;

  it('creates a bucket, puts, gets and lists with prefixes and paging', async () => {
    await s3.send(new CreateBucketCommand({ Bucket: bucket }));
    const keys = ['migrations/v2/migrations/0001.json', 'migrations/v2/migrations/0002.json', 'loras/a.safetensors'];
    for (const Key of keys) await s3.send(new PutObjectCommand({ Bucket: bucket, Key, Body: Buffer.from(`body of ${Key}`) }));
    expect(await bodySha256(keys[0]!, bucket)).toEqual({ sha: createHash('sha256').update(`body of ${keys[0]}`).digest('hex'), size: `body of ${keys[0]}`.length });

    const first = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: 'migrations/', MaxKeys: 1 }));
    expect(first.Contents?.map((c) => c.Key)).toEqual([keys[0]]);
    expect(first.IsTruncated).toBe(true);
    const second = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: 'migrations/', MaxKeys: 1, ContinuationToken: first.NextContinuationToken }));
    expect(second.Contents?.map((c) => c.Key)).toEqual([keys[1]]);
    const top = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Delimiter: '/' }));
    expect(top.CommonPrefixes?.map((p) => p.Prefix).sort()).toEqual(['loras/', 'migrations/']);
  });

  it('takes a 13 MiB multipart upload streamed from a generator and returns the same bytes', async () => {
    const size = 13 * 1024 * 1024 + 12345;
    const expected = createHash('sha256');
    for await (const chunk of seededBytes('s3-multipart', size)) expected.update(chunk);
    const upload = new Upload({ client: s3, params: { Bucket: bucket, Key: 'loras/big.safetensors', Body: seededBytes('s3-multipart', size) }, partSize: 5 * 1024 * 1024, queueSize: 2 });
    const out = await upload.done();
    expect(out.ETag).toMatch(/-3"$/); // S3-style multipart ETag: md5-of-md5s-N
    expect(await bodySha256('loras/big.safetensors', bucket)).toEqual({ sha: expected.digest('hex'), size });
  });
});
