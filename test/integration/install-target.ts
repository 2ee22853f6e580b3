import { join } from 'node:path';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { inject } from 'vitest';
import { authFile, skopeo } from './helpers.ts';

const bed = inject('testbed');

/** The bed's S3, read directly (not through the tool) to check what install left there. */
export const s3 = new S3Client({ endpoint: bed.s3.endpoint, region: bed.s3.region, forcePathStyle: true, credentials: { accessKeyId: bed.s3.accessKeyId, secretAccessKey: bed.s3.secretAccessKey } });

/** What install reads from its environment: S3 credentials and the registry password. */
export const installEnv = { AWS_ACCESS_KEY_ID: bed.s3.accessKeyId, AWS_SECRET_ACCESS_KEY: bed.s3.secretAccessKey, CARTESIA_AIRGAP_REGISTRY_PASSWORD: bed.private.password };

/**
 * Every install gets its own registry prefix and bucket, so tests cannot see each other. `via`
 * sends the traffic through other addresses of the same servers (the fault proxies).
 */
export function installArgs(bundle: string, publicKey: string, prefix: string, bucket: string, out: string, via: { registry: string; s3: string } = { registry: bed.private.host, s3: bed.s3.endpoint }): string[] {
  return [
    'install', bundle, '--public-key', publicKey,
    '--registry', `${via.registry}/${prefix}`, '--registry-username', bed.private.username, '--registry-ca-file', bed.caFile,
    '--s3-endpoint', via.s3, '--s3-bucket', bucket, '--storage-class', 'standard',
    '--values-out', join(out, 'values.yaml'), '--env-out', join(out, '.env'),
  ];
}

export const objectsIn = async (bucket: string) => (await s3.send(new ListObjectsV2Command({ Bucket: bucket })).catch(() => ({ Contents: [] }))).Contents ?? [];

/** Whether skopeo (not our code) finds `repo:tag` in the private registry. */
export const repoExists = async (repo: string, tag: string) =>
  (await skopeo(['inspect', '--raw', '--cert-dir', bed.certDir, '--authfile', await authFile(bed.private.host, bed.private.username, bed.private.password), `docker://${bed.private.host}/${repo}:${tag}`])).ok;
