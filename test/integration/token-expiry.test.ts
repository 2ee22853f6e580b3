import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seededBytes } from '../fixtures/bytes.ts';
import { OCI } from '../fixtures/images.ts';
import { LayoutWriter } from '../fixtures/oci-layout.ts';
import { startTestbed, type Testbed } from '../testbed/testbed.ts';
import { runCli } from './cli.ts';
import { sha256 } from './helpers.ts';

// A bed of its own whose token issuer hands out one-second tokens: any copy longer than that
// needs fresh tokens in the middle of its transfers.
let bed: Testbed;
let layout: string;
let digest: string;

beforeAll(async () => {
  bed = await startTestbed({ tokenTtlSeconds: 1 });
  const w = await new LayoutWriter(join(bed.root, `ttl-layout-${randomBytes(3).toString('hex')}`)).init();
  const layers = [];
  for (let i = 0; i < 6; i++) layers.push(await w.putStream(OCI.layer, seededBytes(`ttl-${i}`, 24 << 20)));
  const config = await w.putJson(OCI.config, { architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) } });
  const manifest = await w.putJson(OCI.manifest, { schemaVersion: 2, mediaType: OCI.manifest, config, layers });
  w.addRef(manifest, 'big');
  await w.writeIndex();
  layout = w.dir;
  digest = manifest.digest;
});

afterAll(() => bed?.stop());

describe('tokens that expire mid-transfer', () => {
  it('are refreshed on push and on pull without failing the copy', async () => {
    const key = (await readFile(bed.saKeyFile, 'utf8')).trim();
    const dest = `docker://${bed.source.host}/${bed.source.prefix}/ttl:1`;
    const before = bed.issuer.issued.get('customer') ?? 0;
    const t0 = performance.now();
    const push = await runCli(['copy', `oci:${layout}:big`, dest, '--dest-creds', `_json_key:${key}`, '--dest-ca-file', bed.caFile, '--concurrency', '1', '--json']);
    expect(push.code, push.stderr).toBe(0);
    expect(JSON.parse(push.stdout)).toMatchObject({ digest });
    const pulled = join(bed.root, 'ttl-pulled');
    const pull = await runCli(['copy', dest, `oci:${pulled}:big`, '--src-sa-key', bed.saKeyFile, '--src-ca-file', bed.caFile, '--concurrency', '1', '--json']);
    expect(pull.code, pull.stderr).toBe(0);
    expect(sha256(await readFile(join(pulled, 'blobs', 'sha256', digest.slice(7))))).toBe(digest.slice(7));
    // The registry refuses an expired token, so copies that outlive the 1 s tokens and succeed
    // must have renewed them; the count shows it (at least one per 2 s, leaving slack for a slow
    // machine where a single blob request may span more than a second).
    const seconds = (performance.now() - t0) / 1000;
    const issued = (bed.issuer.issued.get('customer') ?? 0) - before;
    console.log(`token expiry: ${issued} tokens issued over ${seconds.toFixed(1)} s of copying (1 s lifetime)`);
    expect(issued).toBeGreaterThanOrEqual(Math.max(2, Math.floor(seconds / 2)));
  });
});
