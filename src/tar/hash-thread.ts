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

// One sha256 per entry, and for a bucket object its CRC32C (and MD5 when the store gives no
// CRC32C) beside it. [0, id, memory, offset, length]: hash that slice (a new id starts a hash);
// [1, id, path, start, end]: start id's hash with bytes start…end of a file (a fetch resumed after
// a dropped connection: what reached the file before); [3, id, md5]: id also takes a CRC32C (and
// an MD5); [2, id]: id's digests { sha256, crc32c?, md5? }, which ends it.
// The CRC32C is here rather than hash-wasm's on the main thread (which cannot be loaded in eval'd
// code): 0.7 of the fetch's ~7 main-thread CPU s on the 4 GiB bed, whose artifacts bundle.json
// waits for. Slicing-by-16 tables: on the test VM 2.6 GB/s, as fast as hash-wasm's WebAssembly.
const ENTRIES = `
const { parentPort } = process.getBuiltinModule('node:worker_threads');
const fs = process.getBuiltinModule('node:fs');
const { createHash } = process.getBuiltinModule('node:crypto');
const T = new Int32Array(16 * 256);
for (let i = 0; i < 256; i++) { let c = i; for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1; T[i] = c; }
for (let t = 1; t < 16; t++) for (let i = 0; i < 256; i++) { const p = T[(t - 1) * 256 + i]; T[t * 256 + i] = (p >>> 8) ^ T[p & 0xff]; }
// Words read little-endian, as the tables assume; byte by byte on a big-endian machine.
const LE = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
function crc32c(state, u8) {
  let crc = state, i = 0;
  const n = u8.length;
  if (LE) {
    while (i < n && (u8.byteOffset + i) % 4 !== 0) crc = (crc >>> 8) ^ T[(crc ^ u8[i++]) & 0xff];
    const words = ((n - i) >> 4) * 4;
    const w = new Int32Array(u8.buffer, u8.byteOffset + i, words);
    for (let k = 0; k < words; k += 4) {
      const a = w[k] ^ crc, b = w[k + 1], c = w[k + 2], d = w[k + 3];
      crc = T[3840 + (a & 0xff)] ^ T[3584 + ((a >>> 8) & 0xff)] ^ T[3328 + ((a >>> 16) & 0xff)] ^ T[3072 + (a >>> 24)]
        ^ T[2816 + (b & 0xff)] ^ T[2560 + ((b >>> 8) & 0xff)] ^ T[2304 + ((b >>> 16) & 0xff)] ^ T[2048 + (b >>> 24)]
        ^ T[1792 + (c & 0xff)] ^ T[1536 + ((c >>> 8) & 0xff)] ^ T[1280 + ((c >>> 16) & 0xff)] ^ T[1024 + (c >>> 24)]
        ^ T[768 + (d & 0xff)] ^ T[512 + ((d >>> 8) & 0xff)] ^ T[256 + ((d >>> 16) & 0xff)] ^ T[d >>> 24];
    }
    i += words * 4;
  }
  while (i < n) crc = (crc >>> 8) ^ T[(crc ^ u8[i++]) & 0xff];
  return crc;
}
const hashes = new Map();
const hashOf = (id) => { let h = hashes.get(id); if (!h) hashes.set(id, (h = { sha256: createHash('sha256') })); return h; };
function update(h, u8) {
  h.sha256.update(u8);
  h.md5?.update(u8);
  if (h.crc !== undefined) h.crc = crc32c(h.crc, u8);
}
// One read buffer for every range: a fresh 4 MiB per entry (install checks hundreds this way) is
// garbage the thread's heap keeps until a full collection.
let readBuffer;
function hashFile(h, path, start, end) {
  const fd = fs.openSync(path, 'r');
  try {
    const buf = (readBuffer ??= Buffer.allocUnsafe(4 << 20));
    for (let at = start; at < end; ) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, end - at), at);
      if (n === 0) throw new Error(path + ' ended at byte ' + at + ', before ' + end);
      update(h, buf.subarray(0, n));
      at += n;
    }
  } finally {
    fs.closeSync(fd);
  }
}
function digests(h) {
  const out = { sha256: h.sha256.digest('hex') };
  if (h.crc !== undefined) { const b = Buffer.alloc(4); b.writeUInt32BE(~h.crc >>> 0); out.crc32c = b.toString('base64'); }
  if (h.md5) out.md5 = h.md5.digest('base64');
  return out;
}
parentPort.on('message', (m) => {
  try {
    if (m[0] === 0) update(hashOf(m[1]), new Uint8Array(m[2], m[3], m[4]));
    else if (m[0] === 1) hashFile(hashOf(m[1]), m[2], m[3], m[4]);
    else if (m[0] === 3) { const h = hashOf(m[1]); h.crc = -1; if (m[2]) h.md5 = createHash('md5'); }
    else { const h = hashOf(m[1]); hashes.delete(m[1]); return parentPort.postMessage(digests(h)); }
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

/** A bucket object's digests, in the encodings GCS and the bundle use. */
export interface ObjectDigests {
  /** Lowercase hex. */
  sha256: string;
  /** base64 of the big-endian 4-byte value, as GCS's crc32c. */
  crc32c: string;
  /** base64 of the raw digest, as GCS's md5Hash; absent when not asked for. */
  md5?: string;
}

/** An entry's sha256 with the CRC32C (and MD5) a store checks an object by. */
export interface ObjectHash extends EntryHash {
  /** Every digest of what was handed over; ends the hash like `digest`, which gives the same sha256. */
  digests(): Promise<ObjectDigests>;
}

/** One thread hashing the entries of a fetch, each on its own; answers come in the order asked. */
export class EntryHashes extends HashWorker {
  #next = 0;

  constructor() {
    super(ENTRIES, undefined);
  }

  /** A new entry's hash; `prefix`: bytes `start…end` of the file at `path` come first (a resumed fetch). */
  open(prefix?: { path: string; start: number; end: number }): EntryHash {
    return this.#open(prefix);
  }

  /** A new bucket object's hash: sha256 and CRC32C, and MD5 when `md5` (a store that gives no CRC32C). */
  openObject(md5: boolean): ObjectHash {
    return this.#open(undefined, md5);
  }

  #open(prefix?: { path: string; start: number; end: number }, md5?: boolean): ObjectHash {
    const id = this.#next++;
    const started =
      md5 !== undefined ? this.ask([3, id, md5]) : prefix && prefix.end > prefix.start ? this.ask([1, id, prefix.path, prefix.start, prefix.end]) : Promise.resolve();
    started.catch(() => {}); // reported by the next update or digest, which fail the same way
    let answer: Promise<ObjectDigests> | undefined;
    const digests = () => (answer ??= started.then(async () => (await this.ask([2, id])) as ObjectDigests));
    return {
      update: async (buf, length) => {
        if (!(buf.buffer instanceof SharedArrayBuffer)) throw new TypeError('EntryHash.update: the buffer must be over a SharedArrayBuffer');
        await this.ask([0, id, buf.buffer, buf.byteOffset, length]);
      },
      digest: async () => (await digests()).sha256,
      digests,
    };
  }
}
