import { basename } from 'node:path';
import { Authorizer } from './auth/authorizer.ts';
import { loginProvider, type LoginOptions } from './auth/credentials.ts';
import { OciError } from './errors.ts';
import type { EndpointOptions, Transport } from './http/transport.ts';
import { IMAGE_NAME } from './layout/index-json.ts';
import { LayoutReader } from './layout/reader.ts';
import { LayoutDirectory } from './layout/writer.ts';
import { DirectoryFiles } from './layout/directory-files.ts';
import type { Location } from './location.ts';
import { apiHost, formatReference, referenceSelector, type Reference } from './reference.ts';
import { RegistryClient } from './registry/client.ts';
import { RemoteRepository, type RepositoryOptions } from './registry/repository.ts';
import { TarLayoutFiles } from './tar-files.ts';
import type { ReadTarget, WriteTarget } from './types.ts';

/** How one side of a copy reaches its store. */
export interface SideOptions {
  login?: LoginOptions;
  endpoint?: EndpointOptions;
  repository?: RepositoryOptions;
}

export interface Opened<T> {
  target: T;
  /** What to resolve (source) or to tag (destination). */
  reference: string;
  close(): Promise<void>;
}

/** A client for one registry host: its TLS settings, its login, its own token cache. */
export async function registryClient(registry: string, transport: Transport, side: Pick<SideOptions, 'login' | 'endpoint'> = {}): Promise<RegistryClient> {
  if (side.endpoint) await transport.configure(apiHost(registry), side.endpoint);
  return new RegistryClient(registry, transport, new Authorizer(transport, loginProvider({ ...side.login, fetch: transport.fetch })));
}

async function remote(loc: Extract<Location, { kind: 'docker' }>, side: SideOptions, transport: Transport): Promise<RemoteRepository> {
  return new RemoteRepository(await registryClient(loc.ref.registry, transport, side), loc.ref.repository, side.repository);
}

export async function openSource(loc: Location, side: SideOptions, transport: Transport): Promise<Opened<ReadTarget>> {
  if (loc.kind === 'docker') return { target: await remote(loc, side, transport), reference: referenceSelector(loc.ref), close: async () => {} };
  const files = loc.kind === 'oci' ? new DirectoryFiles(loc.dir) : await TarLayoutFiles.open(loc.file, '');
  return { target: new LayoutReader(files), reference: loc.ref ?? '', close: async () => {} };
}

/** `host/repo:tag`, or `host/repo@digest` when the source was pinned by digest only. */
const imageName = (r: Reference) => formatReference({ registry: r.registry, repository: r.repository, ...(r.tag ? { tag: r.tag } : { digest: r.digest }) });

/** The name a layout entry gets when the destination gives none: `name:tag` of the source. */
function defaultRefName(src: Location): string {
  if (src.kind !== 'docker' && src.ref) return src.ref;
  if (src.kind === 'docker' && src.ref.tag) return `${basename(src.ref.repository)}:${src.ref.tag}`;
  throw new OciError('BAD_REFERENCE', 'the destination layout needs a reference name when the source has no tag: use oci:DIR:NAME');
}

export async function openDestination(loc: Location, side: SideOptions, transport: Transport, src: Location): Promise<Opened<WriteTarget> & { annotations?: Record<string, string> }> {
  if (loc.kind === 'docker') {
    return { target: await remote(loc, side, transport), reference: loc.ref.tag ?? referenceSelector(loc.ref), close: async () => {} };
  }
  if (loc.kind === 'oci-archive') throw new OciError('BAD_REFERENCE', `${loc.text}: oci-archive is read-only here; write to oci:DIR instead`);
  const layout = await LayoutDirectory.open(loc.dir);
  return {
    target: layout,
    reference: loc.ref ?? defaultRefName(src),
    // The full source name travels with the image, as containerd and `docker save` record it.
    ...(src.kind === 'docker' ? { annotations: { [IMAGE_NAME]: imageName(src.ref) } } : {}),
    close: () => layout.close(),
  };
}
