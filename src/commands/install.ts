import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { Args, Flags, type Interfaces } from '@oclif/core';
import { Listr } from 'listr2';
import { listrOptions } from '../progress/listr.ts';
import { AirgapCommand } from '../base-command.ts';
import { openBundleSet } from '../bundle/volume-set.ts';
import { loadRecipe } from '../bundle/recipe.ts';
import { loadPublicKey } from '../bundle/sign.ts';
import { toolVersion } from '../bundle/tasks.ts';
import { isCodedError } from '../util/errors.ts';
import { parseRegistryTarget } from '../install/images.ts';
import { BaseMissingError } from '../install/delta.ts';
import { installTasks, type InstallContext } from '../install/tasks.ts';
import { Transport } from '../oci/http/transport.ts';
import { S3Sink } from '../objects/s3.ts';
import { readStdinSecret } from '../util/stdin.ts';
import { favourThroughputOverHeapSize } from '../util/heap.ts';

export default class Install extends AirgapCommand {
  static override summary = 'Verify a bundle, push its images and artifacts into your registry and S3/MinIO, and render values.yaml.';
  static override description =
    'Reads the bundle in place (never extracted). Verifies the signature and every byte first; nothing is written anywhere before ' +
    'that passes. Then pushes every image to REGISTRY/PREFIX/<name>:<tag> with the same digests (blobs the registry has are skipped, ' +
    'tags written last), uploads the customer artifacts under their own keys (identical objects skipped, every object checked), renders ' +
    "the chart's own values.yaml with the registry, tag and offline-licensing settings (comments and order kept), and writes a receipt. " +
    'A split bundle is given as its first volume or its directory: every volume is checked, read in place and never joined. ' +
    'A delta bundle (`bundle --base`) is installed only where its base was: every manifest, blob and object it relies on is looked ' +
    'up in the registry and bucket first, and if any is missing nothing is written (exit 4, each missing item listed).';
  static override examples = [
    '<%= config.bin %> install cartesia.tar --public-key bundle.pub --registry registry.internal:5000/cartesia --s3-endpoint https://minio.internal:9000 --license license.json --storage-class standard',
    'printf %s "$PASSWORD" | <%= config.bin %> install cartesia.tar --public-key bundle.pub --registry registry.internal/cartesia --registry-username ci --registry-password-stdin --dry-run',
  ];
  static override args = { bundle: Args.string({ description: 'the bundle file, or the first volume or directory of a split bundle', required: true }) };
  static override flags = {
    'public-key': Flags.string({ description: 'the signer\'s public key (bundle.pub from `keys generate`)' }),
    'insecure-skip-verify': Flags.boolean({ description: 'do not check the signature (every entry is still hashed)' }),
    registry: Flags.string({ description: 'HOST[:PORT]/PREFIX to push the images to', required: true }),
    'registry-username': Flags.string({ description: 'registry user (password from --registry-password-stdin or CARTESIA_AIRGAP_REGISTRY_PASSWORD)' }),
    'registry-password-stdin': Flags.boolean({ description: 'read the registry password from stdin' }),
    'registry-authfile': Flags.string({ description: 'Docker config.json / auth.json with the registry login (default: Docker\'s own)' }),
    'registry-ca-file': Flags.string({ description: 'CA certificate (PEM) of the registry' }),
    'registry-plain-http': Flags.boolean({ description: 'talk plain HTTP to the registry' }),
    's3-endpoint': Flags.string({ description: 'S3/MinIO endpoint URL (default: AWS S3)' }),
    's3-bucket': Flags.string({ description: 'bucket for the artifacts (default: the bundle\'s, cartesia-<customer>)' }),
    's3-region': Flags.string({ description: 'S3 region', default: 'us-east-1' }),
    's3-ca-file': Flags.string({ description: 'CA certificate (PEM) of the S3 endpoint' }),
    'values-out': Flags.string({ description: 'where to write the rendered values.yaml', default: 'cartesia-values.yaml' }),
    'env-out': Flags.string({ description: 'also render the Docker Compose .env here' }),
    receipt: Flags.string({ description: 'where to write the receipt (default: next to the values file)' }),
    license: Flags.string({ description: 'offline license file (JSON) to seed the license proxy with' }),
    'storage-class': Flags.string({ description: 'storage class for the license proxy\'s volume' }),
    'pull-secret': Flags.string({ description: 'name of the image pull secret you create in the cluster' }),
    'dry-run': Flags.boolean({ description: 'verify and print the plan; push, upload and write nothing' }),
    concurrency: Flags.integer({ description: 'blobs transferred at once', default: 4, min: 1, max: 64 }),
    'file-sha256': Flags.boolean({ description: 'also record the bundle file\'s own sha256 (each volume\'s) in the receipt: one more pass over the file (without it the receipt names the bundle by its signed bundle.json\'s sha256)' }),
    json: Flags.boolean({ description: 'print one JSON summary on stdout and nothing else' }),
  };

  async run(): Promise<unknown> {
    const { args, flags } = await this.parse(Install);
    try {
      return await this.#install(args.bundle, flags);
    } catch (err) {
      // Verification failures exit 3 (as `verify` does); a delta whose base is not installed 4; bad usage 2.
      if (isCodedError(err, 'VERIFY')) this.error(err.message, { exit: 3 });
      if (err instanceof BaseMissingError) {
        process.stderr.write(`Error: ${err.message}\n${err.items.map((i) => `  missing: ${i}\n`).join('')}`);
        this.exit(4);
      }
      if (isCodedError(err, 'BAD_REFERENCE')) this.error(err.message, { exit: 2 });
      throw err;
    }
  }

  async #install(file: string, flags: Interfaces.InferredFlags<typeof Install.flags>): Promise<unknown> {
    if (!flags['public-key'] && !flags['insecure-skip-verify']) this.error('no --public-key given; pass the signer\'s bundle.pub (or --insecure-skip-verify to skip the signature)', { exit: 2 });
    const startedAt = new Date();
    favourThroughputOverHeapSize();
    const stall = this.stallTimeoutMs();
    const publicKey = flags['public-key'] ? await loadPublicKey(flags['public-key']) : undefined;
    const bundle = await openBundleSet(resolve(file));
    const m = bundle.manifest;
    const target = parseRegistryTarget(flags.registry);
    const password = flags['registry-password-stdin'] ? await readStdinSecret() : process.env.CARTESIA_AIRGAP_REGISTRY_PASSWORD;
    if (flags['registry-username'] && !password) this.error('--registry-username needs a password: --registry-password-stdin or CARTESIA_AIRGAP_REGISTRY_PASSWORD', { exit: 2 });
    const bucket = flags['s3-bucket'] ?? m.customer?.bucket;
    const valuesOut = resolve(flags['values-out']);
    const receiptOut = resolve(flags.receipt ?? join(dirname(valuesOut), 'cartesia-install-receipt.json'));
    // A delta may carry no artifact yet rely on some: the bucket is still checked and named in values.
    const s3 =
      m.artifacts.length + (m.base?.relies.artifacts.length ?? 0) > 0 && bucket
        ? new S3Sink({ bucket, region: flags['s3-region'], stallTimeoutMs: stall, ...(flags['s3-endpoint'] ? { endpoint: flags['s3-endpoint'] } : {}), ...(flags['s3-ca-file'] ? { caFile: flags['s3-ca-file'] } : {}) })
        : undefined;
    const registryText = target.prefix ? `${target.host}/${target.prefix}` : target.host;
    const facts = {
      registry: registryText,
      registryHost: target.host,
      registryPath: target.prefix ? `${target.prefix}/` : '',
      releaseTag: m.release.tag,
      storageClass: flags['storage-class'],
      pullSecret: flags['pull-secret'],
      licenseJson: flags.license ? await readFile(flags.license, 'utf8') : undefined,
      s3Endpoint: flags['s3-endpoint'],
      s3Bucket: s3 ? bucket : undefined,
      s3Region: s3 ? flags['s3-region'] : undefined,
    };
    const transport = await Transport.create({}, { stallTimeoutMs: stall });
    const ctx: InstallContext = { startedAt };
    const tasks = new Listr<InstallContext>(
      installTasks({
        bundle,
        recipe: (await loadRecipe()).recipe,
        ...(publicKey ? { publicKey } : {}),
        transport,
        registry: {
          target,
          description: registryText,
          login: {
            ...(flags['registry-username'] ? { credential: { username: flags['registry-username'], password: password! } } : {}),
            ...(flags['registry-authfile'] ? { authFile: flags['registry-authfile'] } : {}),
          },
          endpoint: { ...(flags['registry-ca-file'] ? { caFile: flags['registry-ca-file'] } : {}), ...(flags['registry-plain-http'] ? { plainHttp: true } : {}) },
        },
        ...(s3 ? { s3 } : {}),
        facts,
        valuesOut,
        ...(flags['env-out'] ? { envOut: resolve(flags['env-out']) } : {}),
        receiptOut,
        dryRun: flags['dry-run'],
        concurrency: flags.concurrency,
        toolVersion: toolVersion(),
        fileSha256: flags['file-sha256'],
      }),
      {
        ...listrOptions(flags.json),
        ctx,
      } as never,
    );
    try {
      await tasks.run(ctx);
    } finally {
      s3?.close();
      await transport.close();
    }
    const summary = {
      dryRun: flags['dry-run'],
      bundle: { path: bundle.file, sha256: ctx.bundleSha256 ?? null, manifestSha256: ctx.manifestSha256, signer: ctx.fingerprint ?? null, verified: Boolean(publicKey), ...(ctx.volumes ? { volumes: ctx.volumes.length } : {}) },
      release: { version: m.release.version, tag: m.release.tag },
      ...(m.base ? { base: { release: m.base.release, manifestSha256: m.base.manifestSha256, found: ctx.relied ? { manifests: ctx.relied.manifests, blobs: ctx.relied.blobs, artifacts: ctx.relied.artifacts } : undefined } } : {}),
      plan: flags['dry-run']
        ? { images: m.images.map((i) => `${registryText}/${i.name}:${i.tag}@${i.digest}`), artifacts: s3 ? m.artifacts.map((a) => `${s3.description}/${a.key}`) : [], values: valuesOut, receipt: receiptOut }
        : undefined,
      images: ctx.pushed?.map((p) => ({ repository: `${target.host}/${p.repository}`, tag: p.tag, digest: p.digest, blobsUploaded: p.result.blobs.uploaded })),
      artifacts: ctx.uploaded ? { uploaded: ctx.uploaded.filter((u) => u.how === 'uploaded').length, skipped: ctx.uploaded.filter((u) => u.how === 'skipped').length } : undefined,
      // Bytes this run sent (blobs and objects already in place are not counted), like bundle's.
      transferred: flags['dry-run']
        ? undefined
        : { images: (ctx.pushed ?? []).reduce((n, p) => n + p.result.bytesTransferred, 0), artifacts: (ctx.uploaded ?? []).reduce((n, u) => n + (u.how === 'uploaded' ? u.size : 0), 0) },
      values: flags['dry-run'] ? undefined : valuesOut,
      receipt: flags['dry-run'] ? undefined : receiptOut,
    };
    if (flags.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
    else if (flags['dry-run']) {
      this.log('Dry run: nothing was pushed, uploaded or written. Would:');
      for (const i of summary.plan!.images) this.log(`  push    ${i}`);
      for (const a of summary.plan!.artifacts) this.log(`  upload  ${a}`);
      this.log(`  write   ${valuesOut}`);
      this.log(`  write   ${receiptOut}`);
    } else {
      this.log(`Installed release ${m.release.version} (${m.release.tag}): values ${valuesOut}, receipt ${receiptOut}`);
    }
    return summary;
  }
}
