/**
 * sha256 computed on worker threads, beside the main thread's network and write work rather than
 * after it (sha256 is most of what writing a bundle costs the CPU):
 * - HashThread hashes slices of SharedArrayBuffers fed in order (the bundle writer's whole-file
 *   hash): nothing is copied, and a buffer must not change until its update has resolved;
 * - FileRangeHasher reads ranges of a file and hashes them in the order given, all on the thread
 *   (a direct bundle's whole-file hash, which reads back what landed): while the main thread is
 *   busy with the fetch, a read and hash that needed its turn for every MiB crawled (measured:
 *   ~140 MB/s during a 4 GiB fetch, and most of the file left to hash once the fetch ended);
 * - EntryHashes keeps one sha256 per entry being fetched, fed slices of the writer's shared
 *   buffers (tar/slot.ts) as they are written: the fetch's main thread, which also decrypts,
 *   parses and writes for every stream, no longer hashes each byte itself (4 GiB bed, alternating
 *   builds: `--direct` 12.7-13.2 → 12.2-12.9 s), though the thread hashes at ~1.4 GB/s where the
 *   main thread, on chunks still in its cache, ran nearer 1.85.
 *
 * The threads' code is inline (`eval`), so it runs the same from dist/ and from the single
 * executable, where there is no file to load it from. A thread keeps the process alive only while
 * an answer is awaited, as a pending read would: a writer left unclosed on some error path must
 * not hold the process open.
 */
import { Worker } from 'node:worker_threads';

const SLICES = `
const { parentPort, workerData } = process.getBuiltinModule('node:worker_threads');
const hash = process.getBuiltinModule('node:crypto').createHash('sha256');
const views = workerData.map((b) => new Uint8Array(b));
parentPort.on('message', (m) => {
  if (m === null) return parentPort.postMessage(hash.digest('hex'));
  hash.update(views[m[0]].subarray(0, m[1]));
  parentPort.postMessage(m[0]);
});
`;

// Four 4 MiB reads in flight, hashed in order. Around the page cache (O_DIRECT, into page-aligned
// WebAssembly memory) where the file was written that way and the offset allows; through it
// otherwise. 4 MiB, not 1: on the test VM sha256 of what O_DIRECT had just read ran at 1.2 GB/s in
// 1 MiB reads and 1.5-1.9 GB/s in 4 MiB ones (2 GB/s is its speed on data in cache); the bundle's
// hash tail after the last byte landed went 1.9-2.0 → 1.4-1.6 s. Answers [end] per range, or { error }.
const RANGES = `
const { parentPort, workerData } = process.getBuiltinModule('node:worker_threads');
const fs = process.getBuiltinModule('node:fs');
const hash = process.getBuiltinModule('node:crypto').createHash('sha256');
const READ = 4 << 20, BLOCK = 512, DEPTH = 4;
const memory = new WebAssembly.Memory({ initial: (DEPTH * READ) / 65536 });
const buffers = Array.from({ length: DEPTH }, (_, k) => Buffer.from(memory.buffer, k * READ, READ));
const plain = fs.openSync(workerData.path, 'r');
let direct = -1;
if (workerData.direct) try { direct = fs.openSync(workerData.path, fs.constants.O_RDONLY | fs.constants.O_DIRECT); } catch {}
const readInto = (buf, at, want) => new Promise((resolve, reject) => {
  const useDirect = direct >= 0 && at % BLOCK === 0;
  const fd = useDirect ? direct : plain;
  fs.read(fd, buf, 0, useDirect ? Math.ceil(want / BLOCK) * BLOCK : want, at, (err, n) => {
    if (err && useDirect && err.code === 'EINVAL') { direct = -1; return readInto(buf, at, want).then(resolve, reject); }
    if (err) return reject(err);
    if (n < want) return reject(new Error(workerData.path + ' ended at byte ' + (at + n) + ', before ' + (at + want)));
    resolve(want);
  });
});
async function range(start, end) {
  const inflight = [];
  let next = start;
  const begin = (k) => { const at = next, want = Math.min(READ, end - at); next += want; const p = readInto(buffers[k], at, want); p.catch(() => {}); inflight.push(p); };
  for (let k = 0; k < DEPTH && next < end; k++) begin(k);
  try {
    for (let k = 0; inflight.length > 0; k = (k + 1) % DEPTH) {
      const n = await inflight.shift();
      hash.update(buffers[k].subarray(0, n));
      if (next < end) begin(k);
    }
  } finally {
    await Promise.allSettled(inflight);
  }
}
let queue = Promise.resolve();
parentPort.on('message', (m) => {
  queue = queue.then(async () => {
    if (m === null) return parentPort.postMessage(hash.digest('hex'));
    await range(m[0], m[1]);
    parentPort.postMessage([m[1]]);
  }).catch((err) => { parentPort.postMessage({ error: err.message }); queue = new Promise(() => {}); });
});
`;

// One sha256 per entry. [0, id, memory, offset, length]: hash that slice (a new id starts a hash);
// [1, id, path, start, end]: start id's hash with bytes start…end of a file (a fetch resumed after
// a dropped connection: what reached the file before); [2, id]: id's digest, which ends it.
const ENTRIES = `
const { parentPort } = process.getBuiltinModule('node:worker_threads');
const fs = process.getBuiltinModule('node:fs');
const { createHash } = process.getBuiltinModule('node:crypto');
const hashes = new Map();
const hashOf = (id) => { let h = hashes.get(id); if (!h) hashes.set(id, (h = createHash('sha256'))); return h; };
function hashFile(h, path, start, end) {
  const fd = fs.openSync(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(Math.min(4 << 20, Math.max(1, end - start)));
    for (let at = start; at < end; ) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, end - at), at);
      if (n === 0) throw new Error(path + ' ended at byte ' + at + ', before ' + end);
      h.update(buf.subarray(0, n));
      at += n;
    }
  } finally {
    fs.closeSync(fd);
  }
}
parentPort.on('message', (m) => {
  try {
    if (m[0] === 0) hashOf(m[1]).update(new Uint8Array(m[2], m[3], m[4]));
    else if (m[0] === 1) hashFile(hashOf(m[1]), m[2], m[3], m[4]);
    else { const h = hashOf(m[1]); hashes.delete(m[1]); return parentPort.postMessage(h.digest('hex')); }
    parentPort.postMessage(0);
  } catch (err) {
    parentPort.postMessage({ error: err.message });
  }
});
`;

/**
 * A hashing worker answering each message in order; rejects what is pending once it fails or stops.
 */
class HashWorker {
  readonly #worker: Worker;
  readonly #waiting: { resolve(value: unknown): void; reject(err: Error): void }[] = [];
  #failure: Error | undefined;
  #closed = false;

  constructor(code: string, workerData: unknown) {
    this.#worker = new Worker(code, { eval: true, workerData });
    this.#worker.unref();
    this.#worker.on('message', (m: unknown) => {
      const w = this.#waiting.shift();
      if (m !== null && typeof m === 'object' && 'error' in m) {
        const err = new Error(String(m.error));
        this.#fail(err);
        w?.reject(this.#failure ?? err); // the one that failed is no longer among the waiting
      } else w?.resolve(m);
      if (this.#waiting.length === 0) this.#worker.unref();
    });
    this.#worker.on('error', (err) => this.#fail(err));
    this.#worker.on('exit', (code) => this.#fail(new Error(`the hashing thread exited (code ${code})`)));
  }

  protected ask(message: unknown): Promise<unknown> {
    if (this.#failure) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => {
      if (this.#waiting.length === 0) this.#worker.ref();
      this.#waiting.push({ resolve, reject });
      this.#worker.postMessage(message);
    });
  }

  /** Stops the thread; call it on every path. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#worker.terminate();
    this.#fail(new Error('the hashing thread was stopped'));
  }

  #fail(err: Error): void {
    if (this.#closed && !this.#waiting.length) return;
    this.#failure ??= err;
    for (const w of this.#waiting.splice(0)) w.reject(this.#failure);
  }
}

/** A worker with one sha256 over everything it is handed. */
class WholeHash extends HashWorker {
  /** The sha256 of everything handed over, once all of it is hashed. */
  async digest(): Promise<string> {
    return (await this.ask(null)) as string;
  }
}

export class HashThread extends WholeHash {
  constructor(buffers: readonly SharedArrayBuffer[]) {
    super(SLICES, buffers);
  }

  /** Hashes the first `length` bytes of buffer `index`; resolves once that buffer may change again. */
  async update(index: number, length: number): Promise<void> {
    await this.ask([index, length]);
  }
}

export class FileRangeHasher extends WholeHash {
  /** `direct`: the file is written around the page cache, so it is read back that way too. */
  constructor(path: string, direct: boolean) {
    super(RANGES, { path, direct });
  }

  /** Hashes bytes `start…end` after every range asked for before; resolves once they are hashed. */
  async update(start: number, end: number): Promise<void> {
    await this.ask([start, end]);
  }
}

/** One entry's sha256, computed on an EntryHashes thread. */
export interface EntryHash {
  /** Hashes the first `length` bytes of `buf` (over a SharedArrayBuffer); resolves once `buf` may change again. */
  update(buf: Buffer, length: number): Promise<void>;
  /** The sha256 of everything handed over (hex); ends the hash: call it on every path, or the thread keeps its state. Later calls give the same answer. */
  digest(): Promise<string>;
}

/** One thread hashing the entries of a fetch, each on its own; answers come in the order asked. */
export class EntryHashes extends HashWorker {
  #next = 0;

  constructor() {
    super(ENTRIES, undefined);
  }

  /** A new entry's hash; `prefix`: bytes `start…end` of the file at `path` come first (a resumed fetch). */
  open(prefix?: { path: string; start: number; end: number }): EntryHash {
    const id = this.#next++;
    const started = prefix && prefix.end > prefix.start ? this.ask([1, id, prefix.path, prefix.start, prefix.end]) : Promise.resolve();
    started.catch(() => {}); // reported by the next update or digest, which fail the same way
    let digest: Promise<string> | undefined;
    return {
      update: async (buf, length) => {
        if (!(buf.buffer instanceof SharedArrayBuffer)) throw new TypeError('EntryHash.update: the buffer must be over a SharedArrayBuffer');
        await this.ask([0, id, buf.buffer, buf.byteOffset, length]);
      },
      digest: () => (digest ??= started.then(async () => (await this.ask([2, id])) as string)),
    };
  }
}
