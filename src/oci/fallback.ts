import type { Readable } from 'node:stream';
import { OciError } from './errors.ts';
import { blobPath, type LayoutReader } from './layout/reader.ts';
import type { Descriptor, ReadTarget } from './types.ts';

/**
 * A layout that lacks some content on purpose (a delta bundle), read together with the places that
 * hold the rest (repositories of the registry it is installed into): what the layout has comes
 * from it, anything else from where `locate` says. Manifests are verified by whichever store
 * serves them; blobs by the destination, as always.
 */
export class FallbackSource implements ReadTarget {
  readonly description: string;
  readonly #primary: LayoutReader;
  readonly #locate: (digest: string) => ReadTarget | undefined;

  constructor(primary: LayoutReader, locate: (digest: string) => ReadTarget | undefined) {
    this.#primary = primary;
    this.#locate = locate;
    this.description = primary.description;
  }

  resolve(reference: string): Promise<Descriptor> {
    return this.#primary.resolve(reference);
  }

  async fetchManifest(desc: Descriptor): Promise<Buffer> {
    return (await this.#source(desc)).fetchManifest(desc);
  }

  async openBlob(desc: Descriptor, offset: number): Promise<Readable> {
    return (await this.#source(desc)).openBlob(desc, offset);
  }

  async #source(desc: Descriptor): Promise<ReadTarget> {
    if ((await this.#primary.files.size(blobPath(desc.digest))) !== undefined) return this.#primary;
    const other = this.#locate(desc.digest);
    if (!other) throw new OciError('NOT_FOUND', `${this.description}: ${desc.digest} is neither in the bundle nor found in the target`);
    return other;
  }
}
