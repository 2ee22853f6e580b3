/**
 * A sha256 computed on a worker thread over slices of SharedArrayBuffers, fed in order: the
 * bundle writer's whole-file hash, run beside the entry hashes on the main thread rather than
 * after them (sha256 is most of what writing a bundle costs the CPU). Nothing is copied: the
 * thread reads the shared buffers, and a buffer must not change until its update has resolved.
 *
 * The thread's code is inline (`eval`), so it runs the same from dist/ and from the single
 * executable, where there is no file to load it from.
 */
import { Worker } from 'node:worker_threads';

const CODE = `
const { parentPort, workerData } = process.getBuiltinModule('node:worker_threads');
const hash = process.getBuiltinModule('node:crypto').createHash('sha256');
const views = workerData.map((b) => new Uint8Array(b));
parentPort.on('message', (m) => {
  if (m === null) return parentPort.postMessage(hash.digest('hex'));
  hash.update(views[m[0]].subarray(0, m[1]));
  parentPort.postMessage(m[0]);
});
`;

export class HashThread {
  readonly #worker: Worker;
  /** Replies come in request order. */
  readonly #waiting: { resolve(value: unknown): void; reject(err: Error): void }[] = [];
  #failure: Error | undefined;
  #closed = false;

  constructor(buffers: readonly SharedArrayBuffer[]) {
    this.#worker = new Worker(CODE, { eval: true, workerData: buffers });
    this.#worker.on('message', (m: unknown) => this.#waiting.shift()?.resolve(m));
    this.#worker.on('error', (err) => this.#fail(err));
    this.#worker.on('exit', (code) => this.#fail(new Error(`the hashing thread exited (code ${code})`)));
  }

  /** Hashes the first `length` bytes of buffer `index`; resolves once that buffer may change again. */
  async update(index: number, length: number): Promise<void> {
    await this.#ask([index, length]);
  }

  async digest(): Promise<string> {
    return (await this.#ask(null)) as string;
  }

  /** Stops the thread; call it on every path, or it keeps the process alive. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#worker.terminate();
  }

  #ask(message: [number, number] | null): Promise<unknown> {
    if (this.#failure) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => {
      this.#waiting.push({ resolve, reject });
      this.#worker.postMessage(message);
    });
  }

  #fail(err: Error): void {
    if (this.#closed) return;
    this.#failure ??= err;
    for (const w of this.#waiting.splice(0)) w.reject(this.#failure);
  }
}
