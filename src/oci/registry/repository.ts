import type { Readable } from 'node:stream';
import { isDigest, sha256Digest, verifyBytes } from '../digest.ts';
import { OciError } from '../errors.ts';
import { drain, header } from '../http/transport.ts';
import { isManifestLike, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, sniffMediaType } from '../media-types.ts';
import type { BlobOrigin, Descriptor, OnBytes, OpenBlob, PushBlobResult, ReadTarget, WriteTarget } from '../types.ts';
import { openRemoteBlob } from './blob-reader.ts';
import { registryError, type RegistryClient } from './client.ts';
import { uploadBlob } from './upload.ts';

export interface RepositoryOptions {
  chunked?: boolean;
  chunkSize?: number;
}

/** One repository of a registry as a store (Distribution spec v1.1). */
export class RemoteRepository implements ReadTarget, WriteTarget {
  readonly client: RegistryClient;
  readonly repository: string;
  readonly description: string;
  readonly origin: BlobOrigin;
  readonly #opts: RepositoryOptions;
  readonly #pull: string[];
  readonly #push: string[];
  /** Manifest bytes seen by resolve(), so the copy does not fetch them twice. */
  readonly #manifests = new Map<string, Buffer>();

  constructor(client: RegistryClient, repository: string, opts: RepositoryOptions = {}) {
    this.client = client;
    this.repository = repository;
    this.description = `docker://${client.registry}/${repository}`;
    this.origin = { registry: client.registry, repository };
    this.#opts = opts;
    this.#pull = [`repository:${repository}:pull`];
    this.#push = [`repository:${repository}:pull,push`];
  }

  async resolve(reference: string): Promise<Descriptor> {
    const what = `${this.description}${isDigest(reference) ? '@' : ':'}${reference}`;
    const { res, bytes } = await this.client.sendAndRead({ method: 'GET', path: `/v2/${this.repository}/manifests/${reference}`, scopes: this.#pull, headers: { accept: MANIFEST_ACCEPT }, idempotent: true }, MAX_MANIFEST_BYTES, `manifest ${what}`);
    if (res.statusCode === 404) {
      await drain(res);
      throw new OciError('NOT_FOUND', `${what} not found: no such tag or digest in that repository`);
    }
    if (!bytes) throw await registryError(res, `cannot read ${what}`);
    const digest = sha256Digest(bytes);
    // Registries may omit Docker-Content-Digest; the digest is always computed here, and a
    // registry that claims another one is serving something other than what it names.
    const claimed = header(res, 'docker-content-digest');
    if ((isDigest(reference) && digest !== reference) || (claimed && isDigest(claimed) && claimed !== digest)) {
      throw new OciError('DIGEST_MISMATCH', `${what}: the registry sent a manifest whose digest is ${digest}, not ${isDigest(reference) ? reference : claimed}; refusing it`);
    }
    const contentType = header(res, 'content-type')?.split(';')[0]?.trim() ?? '';
    const mediaType = isManifestLike(contentType) ? contentType : sniffMediaType(bytes);
    if (!mediaType) throw new OciError('UNSUPPORTED', `${what} has media type "${contentType}", which is not an OCI or Docker schema-2 manifest or index`);
    this.#manifests.set(digest, bytes);
    return { mediaType, digest, size: bytes.length };
  }

  async fetchManifest(desc: Descriptor): Promise<Buffer> {
    let bytes = this.#manifests.get(desc.digest);
    if (!bytes) {
      if (desc.size > MAX_MANIFEST_BYTES) throw new OciError('TOO_LARGE', `manifest ${desc.digest} declares ${desc.size} bytes; refusing manifests over ${MAX_MANIFEST_BYTES}`);
      const got = await this.client.sendAndRead({ method: 'GET', path: `/v2/${this.repository}/manifests/${desc.digest}`, scopes: this.#pull, headers: { accept: MANIFEST_ACCEPT }, idempotent: true }, MAX_MANIFEST_BYTES, `manifest ${desc.digest}`);
      if (!got.bytes) throw await registryError(got.res, `cannot read manifest ${desc.digest} from ${this.description}`);
      bytes = got.bytes;
    }
    verifyBytes(desc, bytes, `manifest from ${this.description}`);
    // Kept (manifests are small): a plan walks the graph before the copy walks it again.
    this.#manifests.set(desc.digest, bytes);
    return bytes;
  }

  async openBlob(desc: Descriptor, offset: number): Promise<Readable> {
    return openRemoteBlob(this.client, this.repository, desc, offset);
  }

  async #exists(kind: 'blobs' | 'manifests', desc: Descriptor): Promise<boolean> {
    const res = await this.client.send({
      method: 'HEAD',
      path: `/v2/${this.repository}/${kind}/${desc.digest}`,
      scopes: this.#pull,
      headers: kind === 'manifests' ? { accept: MANIFEST_ACCEPT } : {},
      idempotent: true,
      followRedirects: true,
    });
    await drain(res);
    if (res.statusCode === 200) return true;
    if (res.statusCode === 404) return false;
    throw new OciError(res.statusCode === 403 ? 'DENIED' : 'REGISTRY', `cannot check ${kind.slice(0, -1)} ${desc.digest} in ${this.description}: registry answered ${res.statusCode}`);
  }

  hasBlob(desc: Descriptor): Promise<boolean> {
    return this.#exists('blobs', desc);
  }

  hasManifest(desc: Descriptor): Promise<boolean> {
    return this.#exists('manifests', desc);
  }

  pushBlob(desc: Descriptor, open: OpenBlob, opts: { origin?: BlobOrigin; onBytes?: OnBytes; verified?: boolean } = {}): Promise<PushBlobResult> {
    return uploadBlob(this.client, this.repository, desc, open, { ...opts, ...this.#opts });
  }

  async #putManifest(reference: string, desc: Descriptor, bytes: Buffer): Promise<void> {
    verifyBytes(desc, bytes, 'manifest to push');
    const res = await this.client.send({
      method: 'PUT',
      path: `/v2/${this.repository}/manifests/${reference}`,
      scopes: this.#push,
      headers: { 'content-type': desc.mediaType },
      body: bytes,
      // Same bytes, same result: safe to send again after a reset.
      idempotent: true,
    });
    if (res.statusCode !== 201 && res.statusCode !== 200) throw await registryError(res, `cannot push manifest ${desc.digest} to ${this.description}:${reference}`);
    const stored = header(res, 'docker-content-digest');
    await drain(res);
    if (stored && stored !== desc.digest) {
      throw new OciError('DIGEST_MISMATCH', `${this.description} stored manifest ${desc.digest} under digest ${stored}; the registry rewrote it`);
    }
  }

  pushManifest(desc: Descriptor, bytes: Buffer): Promise<void> {
    return this.#putManifest(desc.digest, desc, bytes);
  }

  tag(desc: Descriptor, bytes: Buffer, reference: string): Promise<void> {
    return this.#putManifest(reference, desc, bytes);
  }
}
