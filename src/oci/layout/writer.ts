import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { openFileSlot, openWholeFile } from '../../tar/slot.ts';
import type { BlockFile } from '../../util/direct-io.ts';
import { writeFileAtomic } from '../../util/atomic.ts';
import { isNoSpace } from '../../util/errors.ts';
import { isAlive } from '../../util/process.ts';
import { digestHex, VerifyingStream, verifyBytes } from '../digest.ts';
import { isOciError, OciError } from '../errors.ts';
import type { Descriptor, OnBytes, OpenBlob, PushBlobResult, WriteTarget } from '../types.ts';
import { DirectoryFiles } from './directory-files.ts';
import { emptyIndex, parseIndexJson, REF_NAME, serializeIndexJson } from './index-json.ts';
import { LayoutReader } from './reader.ts';

/** Partial blobs live here until verified; a re-run resumes them. Not part of the layout proper. */
export const INGEST_DIR = '.cartesia-airgap-ingest';
const LOCK_FILE = '.cartesia-airgap.lock';
const ATTEMPTS = 3;

/**
 * An OCI image layout directory (Image Spec image-layout.md) as a store: one layout for all
 * images, each blob stored once under its digest, `index.json` entries named by
 * `org.opencontainers.image.ref.name`. Blobs are written under `.cartesia-airgap-ingest/`,
 * verified while streaming and renamed into `blobs/` only when their digest matches.
 */
export class LayoutDirectory extends LayoutReader implements WriteTarget {
  readonly dir: string;
  readonly #inflight = new Map<string, Promise<PushBlobResult>>();
  #indexQueue: Promise<unknown> = Promise.resolve();

  private constructor(dir: string) {
    super(new DirectoryFiles(dir));
    this.dir = dir;
  }

  /**
   * A layout for writing. Nothing is created or locked until the first write, so a copy that
   * fails early (unknown tag, bad login) leaves no empty layout behind.
   */
  static async open(dir: string): Promise<LayoutDirectory> {
    return new LayoutDirectory(dir);
  }

  #ready: Promise<void> | undefined;
  #locked = false;

  /** Creates the layout when absent and takes the lock: one writing process at a time. */
  #init(): Promise<void> {
    this.#ready ??= (async () => {
      await mkdir(join(this.dir, 'blobs', 'sha256'), { recursive: true });
      await mkdir(join(this.dir, INGEST_DIR), { recursive: true });
      await this.#lock();
      this.#locked = true;
      if ((await this.files.size('oci-layout')) === undefined) await writeFileAtomic(join(this.dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}\n');
      if ((await this.files.size('index.json')) === undefined) await writeFileAtomic(join(this.dir, 'index.json'), serializeIndexJson(emptyIndex()));
    })();
    return this.#ready;
  }

  async #lock(): Promise<void> {
    const file = join(this.dir, LOCK_FILE);
    for (let i = 0; i < 2; i++) {
      try {
        await writeFile(file, `${process.pid}\n`, { flag: 'wx' });
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const pid = Number((await readFile(file, 'utf8').catch(() => '')).trim());
        if (pid && pid !== process.pid && isAlive(pid)) {
          throw new OciError('BUSY', `${this.description} is being written by process ${pid}; wait for it to finish`);
        }
        // Left by a process that died (kill -9, reboot): take it over.
        await rm(file, { force: true });
      }
    }
    throw new OciError('BUSY', `cannot lock ${this.description}`);
  }

  async close(): Promise<void> {
    if (!this.#locked) return;
    // An empty ingest directory is noise; one with partial blobs is kept for the next run.
    await rmdir(join(this.dir, INGEST_DIR)).catch(() => {});
    await rm(join(this.dir, LOCK_FILE), { force: true });
    this.#locked = false;
  }

  #final(digest: string): string {
    return join(this.dir, 'blobs', 'sha256', digestHex(digest));
  }

  async hasBlob(desc: Descriptor): Promise<boolean> {
    // Only verified content is ever renamed here, so the size check guards against foreign files.
    return (await this.files.size(`blobs/sha256/${digestHex(desc.digest)}`)) === desc.size;
  }

  hasManifest(desc: Descriptor): Promise<boolean> {
    return this.hasBlob(desc);
  }

  pushBlob(desc: Descriptor, open: OpenBlob, opts: { onBytes?: OnBytes } = {}): Promise<PushBlobResult> {
    let p = this.#inflight.get(desc.digest);
    if (!p) {
      p = this.#ingest(desc, open, opts.onBytes).finally(() => this.#inflight.delete(desc.digest));
      this.#inflight.set(desc.digest, p);
    }
    return p;
  }

  async #ingest(desc: Descriptor, open: OpenBlob, onBytes?: OnBytes): Promise<PushBlobResult> {
    if (await this.hasBlob(desc)) return { how: 'existed', bytesTransferred: 0 };
    await this.#init();
    const partial = join(this.dir, INGEST_DIR, digestHex(desc.digest));
    let bytesTransferred = 0;
    for (let attempt = 1; ; attempt++) {
      // Resume: hash what an earlier run left, then ask the source only for the rest.
      let have = (await stat(partial).catch(() => undefined))?.size ?? 0;
      if (have > desc.size) {
        await rm(partial, { force: true });
        have = 0;
      }
      const hash = createHash('sha256');
      if (have > 0) await pipeline(createReadStream(partial, { highWaterMark: 1 << 20 }), async (src: AsyncIterable<Buffer>) => {
        for await (const c of src) hash.update(c);
      });
      try {
        let position = have;
        const count = new Transform({
          transform(chunk: Buffer, _e, done) {
            bytesTransferred += chunk.length;
            position += chunk.length;
            onBytes?.(position);
            done(null, chunk);
          },
        });
        // Around the page cache (tar/slot.ts), resuming at `have`.
        const file = await openFileSlot(partial, desc.size, `blob ${desc.digest}`, { flags: have > 0 ? 'r+' : 'w', from: have });
        try {
          await pipeline(await open(have), count, new VerifyingStream(desc, { hash, bytes: have }), file.sink);
          await file.finish();
        } finally {
          await file.close();
        }
        await rename(partial, this.#final(desc.digest));
        return { how: 'uploaded', bytesTransferred };
      } catch (err) {
        // A full disk stays full: no retry; the partial is valid and kept for the next run.
        if (isNoSpace(err)) throw err;
        const resumable = err instanceof OciError ? err.retryable : true;
        // Bytes that failed verification are worthless; a broken connection's bytes are kept.
        if (!resumable) await rm(partial, { force: true });
        // A partial left by an earlier run may itself be the bad part: start over once from zero
        // before blaming the source.
        const badPartial = have > 0 && isOciError(err) && (err.code === 'DIGEST_MISMATCH' || err.code === 'SIZE_MISMATCH');
        if ((!resumable && !badPartial) || attempt >= ATTEMPTS) throw err;
      }
    }
  }

  /** Bytes of the blob an interrupted write left in the ingest directory (0: none). */
  async partialSize(desc: Descriptor): Promise<number> {
    return (await stat(join(this.dir, INGEST_DIR, digestHex(desc.digest))).catch(() => undefined))?.size ?? 0;
  }

  /**
   * A blob's file for bytes that are verified elsewhere (a bundle fetch writing them to the bundle
   * and here at once): `commit` once the caller has checked the whole blob, which moves it into
   * `blobs/`; `discard` otherwise. undefined when the blob is here already or being written.
   */
  async ingestFile(desc: Descriptor): Promise<{ file: BlockFile; commit(): Promise<void>; discard(): Promise<void> } | undefined> {
    if (this.#inflight.has(desc.digest) || (await this.hasBlob(desc))) return undefined;
    await this.#init();
    const partial = join(this.dir, INGEST_DIR, digestHex(desc.digest));
    const file = await openWholeFile(partial, 'w');
    return {
      file: file.file,
      commit: async () => {
        try {
          await file.finish();
        } finally {
          await file.close();
        }
        await rename(partial, this.#final(desc.digest));
      },
      discard: async () => {
        await file.close();
        await rm(partial, { force: true });
      },
    };
  }

  async pushManifest(desc: Descriptor, bytes: Buffer): Promise<void> {
    verifyBytes(desc, bytes, 'manifest to store');
    if (await this.hasBlob(desc)) return;
    await this.#init();
    await writeFileAtomic(this.#final(desc.digest), bytes);
  }

  /** Adds or moves the index.json entry named `reference`; annotations on `desc` are kept. */
  tag(desc: Descriptor, bytes: Buffer, reference: string): Promise<void> {
    const next = this.#indexQueue.then(async () => {
      await this.#init();
      await this.pushManifest(desc, bytes);
      const index = (await this.files.size('index.json')) === undefined ? emptyIndex() : parseIndexJson(await this.files.read('index.json'), this.description);
      index.manifests = index.manifests.filter((m) => m.annotations?.[REF_NAME] !== reference);
      index.manifests.push({ ...desc, annotations: { ...desc.annotations, [REF_NAME]: reference } });
      await writeFileAtomic(join(this.dir, 'index.json'), serializeIndexJson(index));
    });
    this.#indexQueue = next.catch(() => {});
    return next;
  }
}
