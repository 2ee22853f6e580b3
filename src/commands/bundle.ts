import { createPublicKey } from 'node:crypto';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { Flags, type Interfaces } from '@oclif/core';
import { Listr } from 'listr2';
import { listrOptions } from '../progress/listr.ts';
import { AirgapCommand } from '../base-command.ts';
import { SourceRegistries } from '../bundle/images.ts';
import { defaultInstaller, loadInstaller } from '../bundle/installer.ts';
import { loadRecipe } from '../bundle/recipe.ts';
import { deltaSummary } from '../bundle/delta.ts';
import { loadPublicKey, loadSigningKey } from '../bundle/sign.ts';
import { parseSplitSize } from '../bundle/split-size.ts';
import { bundleTasks, refuseExisting, toolVersion, type BundleContext } from '../bundle/tasks.ts';
import { isOciError } from '../oci/errors.ts';
import { isCodedError } from '../util/errors.ts';
import { Transport } from '../oci/http/transport.ts';
import { parsePlatform } from '../oci/platform.ts';
import { parseReference } from '../oci/reference.ts';
import { GcsSource } from '../objects/gcs.ts';

const defaultCacheDir = () => join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'cartesia-airgap');

export default class Bundle extends AirgapCommand {
  static override summary = 'Fetch the release, its images and the customer artifacts into one signed, reproducible tarball.';
  static override description =
    'Resolves the release in gs://cartesia-onprem (latest or pinned) and checks it against its SHA256SUMS, reads the release tag and ' +
    'the NATS image from the chart, pulls every image of the selected models into a content-addressed cache (only what changed is ' +
    'fetched again), copies the customer bucket\'s migrations and LoRA checkpoints verified against GCS\'s hashes, and writes ONE ' +
    'uncompressed tar: bundle.json, its signature, SHA256SUMS, release/, images/ (an OCI image layout) and artifacts/. The same ' +
    'inputs give the same bytes. The output appears under its name only when complete and signed. With --split-size it is written ' +
    'as volumes NAME.vol001.tar, NAME.vol002.tar, … that each carry the signed bundle.json and can each be verified alone. With --base OLD it writes a ' +
    'delta: image blobs and manifests OLD holds (by digest) and artifacts OLD holds (same key, same sha256) are left out and ' +
    'listed in bundle.json, which also records OLD\'s bundle.json sha256 and signer; OLD\'s signature is checked first.';
  static override examples = [
    '<%= config.bin %> bundle --key-file key.json --customer acme --signing-key keys/bundle.key --output cartesia-2025.11.18.tar',
    '<%= config.bin %> bundle --customer acme --signing-key keys/bundle.key --base cartesia-2025.11.18.tar --output cartesia-2025.12.02-delta.tar',
    '<%= config.bin %> bundle --release 2025.11.18-1 --models sonic-3.5,sonic-3 --platform linux/amd64 --customer acme --unsigned --output small.tar --json',
    '<%= config.bin %> bundle --customer acme --signing-key keys/bundle.key --output cartesia.tar --split-size dvd',
  ];
  static override flags = {
    output: Flags.string({ char: 'o', description: 'the bundle file to write (FILE.tar)', required: true }),
    'split-size': Flags.string({
      description: 'write volumes FILE.vol001.tar, … of at most SIZE bytes: bytes, or a number with K, M, G (1000-based) or KiB, MiB, GiB (1024-based), or dvd (4.7 GB), fat32 (4 GiB - 1), bd25, bd50',
    }),
    release: Flags.string({ description: 'latest, or a version to pin', default: 'latest' }),
    'release-tag': Flags.string({ description: 'image tag to use instead of the one in the chart values' }),
    models: Flags.string({ description: 'comma-separated models whose workers to carry (default: all)' }),
    platform: Flags.string({ description: 'carry only this platform (os/arch[/variant]) of every image' }),
    customer: Flags.string({ description: 'customer name: carries gs://cartesia-NAME' }),
    'customer-bucket': Flags.string({ description: 'the customer bucket as gs://BUCKET (instead of --customer)' }),
    'key-file': Flags.string({ description: 'service-account JSON key for GCS and the registry', env: 'GOOGLE_APPLICATION_CREDENTIALS' }),
    'registry-login': Flags.string({ description: 'send the key as _json_key, or exchange it for an access token', options: ['json_key', 'access_token'], default: 'json_key' }),
    'signing-key': Flags.string({ description: 'PKCS#8 PEM private key from `keys generate` (passphrase from CARTESIA_AIRGAP_KEY_PASSPHRASE)' }),
    base: Flags.string({ description: 'make a delta: carry only what this earlier bundle (or its bundle.json, with bundle.json.sig beside it) lacks' }),
    'base-public-key': Flags.string({ description: 'public key the base must be signed with (default: the public half of --signing-key)', dependsOn: ['base'] }),
    unsigned: Flags.boolean({ description: 'write an unsigned bundle (only for testing; install refuses it unless told)' }),
    'cache-dir': Flags.string({ description: 'content-addressed cache of images and objects', default: defaultCacheDir() }),
    direct: Flags.boolean({
      description: 'leave the cache out: images and artifacts go only into the bundle, each byte written once (half the disk writes and space), but the cache keeps nothing for the next release',
      env: 'CARTESIA_AIRGAP_DIRECT',
      exclusive: ['split-size', 'base'],
    }),
    'gcs-endpoint': Flags.string({ description: 'GCS API endpoint (a mirror or emulator)' }),
    'source-registry': Flags.string({ description: 'HOST/PATH to pull the Cartesia images from (default: the recipe\'s)' }),
    'source-ca-file': Flags.string({ description: 'CA certificate (PEM) for the source registry' }),
    'source-plain-http': Flags.boolean({ description: 'talk plain HTTP to the source registry' }),
    recipe: Flags.string({ description: 'recipe file (default: the bundled bundles/cartesia.yaml)' }),
    installer: Flags.string({ description: 'the cartesia-airgap executable to carry in tool/ (default: build/cartesia-airgap from `npm run build:exe`, or this executable itself)', env: 'CARTESIA_AIRGAP_INSTALLER' }),
    'no-installer': Flags.boolean({ description: 'carry no installer executable', env: 'CARTESIA_AIRGAP_NO_INSTALLER' }),
    concurrency: Flags.integer({ description: 'transfers at once', default: 4, min: 1, max: 64 }),
    json: Flags.boolean({ description: 'print one JSON summary on stdout and nothing else' }),
  };

  async run(): Promise<unknown> {
    const { flags } = await this.parse(Bundle);
    try {
      return await this.#bundle(flags);
    } catch (err) {
      if (isOciError(err, 'BAD_REFERENCE') || isCodedError(err, 'BAD_USAGE')) this.error(err.message, { exit: 2 });
      throw err;
    }
  }

  async #bundle(flags: Interfaces.InferredFlags<typeof Bundle.flags>): Promise<unknown> {
    const output = resolve(flags.output);
    const stall = this.stallTimeoutMs();
    if (!flags['signing-key'] && !flags.unsigned) this.error('no --signing-key given; sign the bundle (make a key with `keys generate`) or pass --unsigned', { exit: 2 });
    if (flags.customer && flags['customer-bucket']) this.error('give --customer or --customer-bucket, not both', { exit: 2 });
    if (flags.installer && flags['no-installer']) this.error('give --installer or --no-installer, not both', { exit: 2 });
    const splitSize = flags['split-size'] === undefined ? undefined : parseSplitSize(flags['split-size']);
    await refuseExisting(output, splitSize !== undefined);
    // Checked before anything is downloaded.
    const installer = flags['no-installer'] ? undefined : await loadInstaller(resolve(flags.installer ?? defaultInstaller()), flags.installer !== undefined);
    const recipe = await loadRecipe(flags.recipe);
    const signingKey = flags['signing-key'] ? await loadSigningKey(flags['signing-key'], process.env.CARTESIA_AIRGAP_KEY_PASSPHRASE || undefined) : undefined;
    // The base is trusted only once its signature verifies; by default with our own key's public half.
    if (flags.base && !flags['base-public-key'] && !signingKey) this.error('--base needs --base-public-key (the key the base bundle was signed with) when the delta is not signed', { exit: 2 });
    const base = flags.base ? { file: resolve(flags.base), publicKey: flags['base-public-key'] ? await loadPublicKey(flags['base-public-key']) : createPublicKey(signingKey!) } : undefined;
    const platform = flags.platform ? parsePlatform(flags.platform) : undefined;
    const sourceRegistry = (flags['source-registry'] ?? recipe.recipe.registry).replace(/\/+$/, '');
    const sourceHost = parseReference(`${sourceRegistry}/x`).registry;
    const customerBucket = flags['customer-bucket']?.replace(/^gs:\/\//, '').replace(/\/+$/, '') ?? (flags.customer ? recipe.recipe.customer.bucket.replace('{customer}', flags.customer) : undefined);
    const keyFile = flags['key-file'];

    const transport = await Transport.create({}, { stallTimeoutMs: stall });
    const registries = new SourceRegistries(
      transport,
      // The key opens the Cartesia registry; other registries (Docker Hub for NATS) get Docker's config or nothing.
      (registry) => (registry === sourceHost && keyFile ? { serviceAccountKeyFile: keyFile, serviceAccountMode: flags['registry-login'] as 'json_key' | 'access_token' } : {}),
      (registry) => (registry === sourceHost ? { ...(flags['source-ca-file'] ? { caFile: flags['source-ca-file'] } : {}), ...(flags['source-plain-http'] ? { plainHttp: true } : {}) } : undefined),
    );
    const gcs = new GcsSource({ ...(flags['gcs-endpoint'] ? { endpoint: flags['gcs-endpoint'] } : {}), ...(keyFile ? { keyFile } : {}), stallTimeoutMs: stall });
    const tasks = new Listr<BundleContext>(
      bundleTasks({
        recipe,
        gcs,
        transport,
        registries,
        release: flags.release,
        ...(flags['release-tag'] ? { releaseTag: flags['release-tag'] } : {}),
        ...(flags.models ? { models: flags.models.split(',').map((m) => m.trim()).filter(Boolean) } : {}),
        ...(platform ? { platform } : {}),
        sourceRegistry,
        ...(customerBucket ? { customer: { ...(flags.customer ? { name: flags.customer } : {}), bucket: customerBucket } } : {}),
        cacheDir: resolve(flags['cache-dir']),
        output,
        ...(splitSize !== undefined ? { splitSize } : {}),
        ...(signingKey ? { signingKey } : {}),
        ...(base ? { base } : {}),
        concurrency: flags.concurrency,
        toolVersion: toolVersion(),
        ...(installer ? { installer } : {}),
        ...(flags.direct ? { direct: true } : {}),
      }),
      listrOptions(flags.json) as never,
    );
    try {
      const ctx = await tasks.run({ releaseBytesFetched: 0, imageBytesFetched: 0, objectBytesFetched: 0 });
      const r = ctx.result!;
      const summary = {
        path: r.path,
        sha256: r.sha256,
        // bundle.json's: install's receipt names the bundle by it.
        manifestSha256: r.manifestSha256,
        size: r.size,
        upToDate: r.upToDate,
        signed: Boolean(signingKey),
        release: { version: r.manifest.release.version, tag: r.manifest.release.tag },
        images: r.manifest.images.map((i) => ({ name: i.name, tag: i.tag, digest: i.digest })),
        installer: r.manifest.installer ? { path: r.manifest.installer.path, version: r.manifest.installer.version, sha256: r.manifest.installer.sha256, size: r.manifest.installer.size } : null,
        artifacts: { count: r.manifest.artifacts.length, bytes: r.manifest.artifacts.reduce((n, a) => n + a.size, 0) },
        transferred: { release: ctx.releaseBytesFetched, images: ctx.imageBytesFetched, artifacts: ctx.objectBytesFetched },
        // Split: `path` is the first volume and `sha256` that of bundle.json, which every volume carries.
        ...(r.volumes ? { volumes: r.volumes } : {}),
        ...(r.manifest.base ? { base: deltaSummary(r.manifest.base) } : {}),
      };
      if (flags.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
      else if (r.upToDate) this.log(`${r.path}  already up to date (same bundle.json and signature; \`verify\` re-checks every byte)  ${r.size} bytes`);
      else if (r.volumes) for (const v of r.volumes) this.log(`${v.path}  sha256 ${v.sha256}  ${v.size} bytes${signingKey ? '' : '  (UNSIGNED)'}`);
      else this.log(`${r.path}  sha256 ${r.sha256}  ${r.size} bytes${signingKey ? '' : '  (UNSIGNED)'}`);
      return summary;
    } finally {
      await transport.close();
    }
  }
}
