// The peer path the benchmark compares against, as a user without cartesia-airgap would script it:
//   gcs-download ENDPOINT DIR BUCKET...   every object of each bucket to DIR/BUCKET/KEY (@google-cloud/storage)
//   s3-upload ENDPOINT BUCKET DIR         every file under DIR to s3://BUCKET/<relative path> (@aws-sdk/lib-storage)
// Four transfers at once, like `gsutil -m` / `aws s3 cp --recursive`. Run as its own process so
// GNU time measures it alone.
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readdir } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { Storage } from '@google-cloud/storage';
import pLimit from 'p-limit';

const [mode, ...rest] = process.argv.slice(2);
const limit = pLimit(4);

if (mode === 'gcs-download') {
  const [endpoint, dir, ...buckets] = rest;
  const storage = new Storage({ apiEndpoint: endpoint!, projectId: 'bench' });
  for (const b of buckets) {
    const [files] = await storage.bucket(b).getFiles();
    await Promise.all(
      files.map((f) =>
        limit(async () => {
          const to = join(dir!, b, f.name);
          await mkdir(dirname(to), { recursive: true });
          await pipeline(f.createReadStream({ validation: 'crc32c' }), createWriteStream(to));
        }),
      ),
    );
  }
} else if (mode === 's3-upload') {
  const [endpoint, bucket, dir] = rest;
  const s3 = new S3Client({ endpoint: endpoint!, region: 'us-east-1', forcePathStyle: true });
  await s3.send(new CreateBucketCommand({ Bucket: bucket! }));
  const files = (await readdir(dir!, { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
  await Promise.all(
    files.map((file) =>
      limit(() => new Upload({ client: s3, params: { Bucket: bucket!, Key: relative(dir!, file), Body: createReadStream(file) }, queueSize: 4, partSize: 8 * 2 ** 20 }).done()),
    ),
  );
  s3.destroy();
} else {
  console.error('usage: peers.ts gcs-download ENDPOINT DIR BUCKET... | s3-upload ENDPOINT BUCKET DIR');
  process.exit(2);
}
