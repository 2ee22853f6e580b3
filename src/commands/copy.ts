import { Args, Flags, type Interfaces } from '@oclif/core';
import { AirgapCommand } from '../base-command.ts';
import { parseUserPass, type LoginOptions } from '../oci/auth/credentials.ts';
import { copyGraph, type CopyResult } from '../oci/copy.ts';
import { isOciError } from '../oci/errors.ts';
import { Transport, type EndpointOptions } from '../oci/http/transport.ts';
import { parseLocation } from '../oci/location.ts';
import { parsePlatform } from '../oci/platform.ts';
import { openDestination, openSource } from '../oci/stores.ts';
import { copyRenderer } from '../progress/copy-renderer.ts';

const tlsVerify = (side: string) =>
  Flags.string({ description: `verify the ${side} registry's TLS certificate (=false turns it off for that registry only)`, options: ['true', 'false'], default: 'true' });

export default class Copy extends AirgapCommand {
  static override summary = 'Copy one image (or a whole multi-platform index) between registries and OCI layouts.';
  static override description =
    'SRC and DST use skopeo\'s syntax: docker://HOST/REPO:TAG (or @sha256:…) and oci:DIR[:REF]; a source may also be ' +
    'oci-archive:FILE[:REF], a tar of an image layout read in place. Manifests are copied byte for byte, ' +
    'so digests are kept; every blob is verified while it streams; blobs the destination already has are skipped, blobs in another ' +
    'repository of the same registry are mounted; the tag is written last. An interrupted copy resumes where it stopped. ' +
    'Credentials come from --src-creds/--dest-creds (or CARTESIA_AIRGAP_SRC_CREDS/CARTESIA_AIRGAP_DEST_CREDS), an Artifact Registry ' +
    'service-account key (--src-sa-key), or Docker\'s config.json and its credential helpers.';
  static override examples = [
    '<%= config.bin %> copy docker://us-docker.pkg.dev/cartesia-external/self-serve/cartesia-api:sonic-20251118 oci:./images --src-sa-key key.json',
    '<%= config.bin %> copy oci:./images:cartesia-api:sonic-20251118 docker://registry.internal:5000/cartesia/cartesia-api:sonic-20251118 --dest-ca-file ca.crt',
    '<%= config.bin %> copy docker://docker.io/library/nats:2.10.22-alpine oci:./images --platform linux/amd64 --json',
  ];
  static override args = {
    src: Args.string({ description: 'source: docker://REF, oci:DIR[:REF] or oci-archive:FILE[:REF]', required: true }),
    dst: Args.string({ description: 'destination: docker://REF or oci:DIR[:REF]', required: true }),
  };
  static override flags = {
    'src-creds': Flags.string({ description: 'USER:PASSWORD for the source registry', env: 'CARTESIA_AIRGAP_SRC_CREDS' }),
    'dest-creds': Flags.string({ description: 'USER:PASSWORD for the destination registry', env: 'CARTESIA_AIRGAP_DEST_CREDS' }),
    'src-authfile': Flags.string({ description: 'Docker config.json / containers auth.json to read source logins from' }),
    'dest-authfile': Flags.string({ description: 'Docker config.json / containers auth.json to read destination logins from' }),
    'src-sa-key': Flags.string({ description: 'Artifact Registry service-account key (JSON) for the source' }),
    'src-sa-key-mode': Flags.string({
      description: 'json_key sends the key as user _json_key; access_token exchanges it with Google for a one-hour token (user oauth2accesstoken)',
      options: ['json_key', 'access_token'],
      default: 'json_key',
    }),
    'src-ca-file': Flags.string({ description: 'CA certificate (PEM) for the source registry' }),
    'dest-ca-file': Flags.string({ description: 'CA certificate (PEM) for the destination registry' }),
    'src-plain-http': Flags.boolean({ description: 'talk plain HTTP to the source registry' }),
    'dest-plain-http': Flags.boolean({ description: 'talk plain HTTP to the destination registry' }),
    'src-tls-verify': tlsVerify('source'),
    'dest-tls-verify': tlsVerify('destination'),
    platform: Flags.string({ description: 'copy only this platform (os/arch[/variant]) out of an index and tag its manifest directly' }),
    'dest-chunked': Flags.boolean({ description: 'upload blobs in chunks (PATCH) instead of one PUT; used anyway when the registry answers 413' }),
    concurrency: Flags.integer({ description: 'blobs transferred at once', default: 4, min: 1, max: 64 }),
    json: Flags.boolean({ description: 'print the result as JSON on stdout and progress as NDJSON on stderr' }),
  };

  async run(): Promise<CopyResult> {
    const { args, flags } = await this.parse(Copy);
    try {
      return await this.#copy(args, flags);
    } catch (err) {
      // A malformed location or platform is bad usage, as oclif's own parse errors are.
      if (isOciError(err, 'BAD_REFERENCE')) this.error(err.message, { exit: 2 });
      throw err;
    }
  }

  async #copy(args: { src: string; dst: string }, flags: Interfaces.InferredFlags<typeof Copy.flags>): Promise<CopyResult> {
    const src = parseLocation(args.src);
    const dst = parseLocation(args.dst);
    const platform = flags.platform ? parsePlatform(flags.platform) : undefined;
    const stall = this.stallTimeoutMs();
    const endpoint = (caFile?: string, plainHttp?: boolean, verify?: string): EndpointOptions => ({
      ...(caFile ? { caFile } : {}),
      ...(plainHttp ? { plainHttp: true } : {}),
      ...(verify === 'false' ? { insecureSkipVerify: true } : {}),
    });
    const srcLogin: LoginOptions = {
      ...(flags['src-creds'] ? { credential: parseUserPass(flags['src-creds'], '--src-creds') } : {}),
      ...(flags['src-sa-key'] ? { serviceAccountKeyFile: flags['src-sa-key'], serviceAccountMode: flags['src-sa-key-mode'] as 'json_key' | 'access_token' } : {}),
      ...(flags['src-authfile'] ? { authFile: flags['src-authfile'] } : {}),
    };
    const dstLogin: LoginOptions = {
      ...(flags['dest-creds'] ? { credential: parseUserPass(flags['dest-creds'], '--dest-creds') } : {}),
      ...(flags['dest-authfile'] ? { authFile: flags['dest-authfile'] } : {}),
    };
    const transport = await Transport.create({}, { stallTimeoutMs: stall });
    const source = await openSource(src, { login: srcLogin, endpoint: endpoint(flags['src-ca-file'], flags['src-plain-http'], flags['src-tls-verify']) }, transport);
    const destination = await openDestination(
      dst,
      { login: dstLogin, endpoint: endpoint(flags['dest-ca-file'], flags['dest-plain-http'], flags['dest-tls-verify']), repository: { chunked: flags['dest-chunked'] } },
      transport,
      src,
    );
    try {
      const result = await copyGraph(source.target, destination.target, source.reference, destination.reference, {
        concurrency: flags.concurrency,
        ...(platform ? { platform } : {}),
        ...(destination.annotations ? { annotations: destination.annotations } : {}),
        onEvent: copyRenderer(flags.json ? 'ndjson' : 'plain'),
      });
      if (flags.json) {
        process.stdout.write(`${JSON.stringify({ source: src.text, destination: dst.text, reference: destination.reference, ...result })}\n`);
      } else {
        const b = result.blobs;
        this.log(
          `Copied ${result.digest} to ${dst.text}${dst.kind === 'oci' ? ` as ${destination.reference}` : ''}: ` +
            `${b.total} blobs (${b.uploaded} copied, ${b.mounted} mounted, ${b.existed} already there), ` +
            `${result.manifests.pushed} of ${result.manifests.total} manifests written, ${result.bytesTransferred} bytes transferred`,
        );
      }
      return result;
    } finally {
      await Promise.all([source.close(), destination.close()]);
      await transport.close();
    }
  }
}
