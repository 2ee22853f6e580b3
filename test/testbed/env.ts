import type { FixtureRecord } from '../fixtures/release.ts';
import type { TestbedInfo } from './testbed.ts';

/** The variables benchmarks, the demo and reviewers read (issue: foundation, item 3). */
export function envLines(bed: TestbedInfo, fx: FixtureRecord): Record<string, string> {
  return {
    AIRGAP_TESTBED_ROOT: bed.root,
    AIRGAP_TESTBED_PIDS: [process.pid, ...bed.pids].join(' '),
    AIRGAP_GCS_ENDPOINT: bed.gcs.endpoint,
    AIRGAP_RELEASE_BUCKET: fx.release.bucket,
    AIRGAP_SOURCE_REGISTRY: `${bed.source.host}/${bed.source.prefix}`,
    AIRGAP_NATS_IMAGE: fx.release.natsReference,
    AIRGAP_SA_KEY: bed.saKeyFile,
    AIRGAP_PRIVATE_REGISTRY: bed.private.host,
    AIRGAP_PRIVATE_REGISTRY_USER: bed.private.username,
    AIRGAP_PRIVATE_REGISTRY_PASSWORD: bed.private.password,
    AIRGAP_PLAIN_REGISTRY: bed.plain.host,
    AIRGAP_CA_FILE: bed.caFile,
    AIRGAP_CERT_DIR: bed.certDir,
    AIRGAP_S3_ENDPOINT: bed.s3.endpoint,
    AWS_ACCESS_KEY_ID: bed.s3.accessKeyId,
    AWS_SECRET_ACCESS_KEY: bed.s3.secretAccessKey,
    AWS_REGION: bed.s3.region,
    AIRGAP_CUSTOMER: fx.customer,
    AIRGAP_RELEASE_VERSION: fx.release.version,
    AIRGAP_RELEASE_TAG: fx.release.releaseTag,
  };
}

const shellQuote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/** `export K='v'` lines: sourceable by sh, bash and zsh. */
export function envFileText(env: Record<string, string>): string {
  return `${Object.entries(env).map(([k, v]) => `export ${k}=${shellQuote(v)}`).join('\n')}\n`;
}
