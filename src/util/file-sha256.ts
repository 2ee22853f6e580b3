/**
 * The sha256 of a whole file, hashed on a worker thread: install hashes the bundle file for its
 * receipt while the main thread hashes the entries it verifies, so the two run on two cores
 * instead of one after the other. The worker is given as source text (not a file) because the
 * single-file installer has no module files to start a worker from.
 */
import { Worker } from 'node:worker_threads';

// Synchronous reads into one reused buffer: the thread has nothing else to do, and it makes no
// garbage (a stream's fresh chunk per read kept tens of MiB alive between collections).
const WORKER = `
const { createHash } = require('node:crypto');
const { closeSync, openSync, readSync } = require('node:fs');
const { parentPort, workerData } = require('node:worker_threads');
try {
  const hash = createHash('sha256');
  const buf = Buffer.allocUnsafe(1 << 20);
  const fd = openSync(workerData.file, 'r');
  try {
    for (let pos = 0, n; (n = readSync(fd, buf, 0, buf.length, pos)) > 0; pos += n) hash.update(n === buf.length ? buf : buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  parentPort.postMessage({ sha256: hash.digest('hex') });
} catch (err) {
  parentPort.postMessage({ error: err.code || err.message });
}
`;

export function fileSha256(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(WORKER, { eval: true, workerData: { file } });
    worker.once('message', (m: { sha256?: string; error?: string }) => {
      if (m.sha256) resolve(m.sha256);
      else reject(new Error(`cannot read ${file}: ${m.error ?? 'unknown error'}`));
      void worker.terminate();
    });
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`hashing ${file} stopped (worker exit ${code})`)));
  });
}
