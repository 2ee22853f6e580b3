/**
 * The sha256 of a whole file, hashed on a worker thread: install hashes the bundle file for its
 * receipt while the main thread hashes the entries it verifies, so the two run on two cores
 * instead of one after the other. The worker is given as source text (not a file) because the
 * single-file installer has no module files to start a worker from.
 */
import { Worker } from 'node:worker_threads';

const WORKER = `
const { createHash } = require('node:crypto');
const { createReadStream } = require('node:fs');
const { parentPort, workerData } = require('node:worker_threads');
const hash = createHash('sha256');
createReadStream(workerData.file, { highWaterMark: 1 << 20 })
  .on('data', (c) => hash.update(c))
  .on('error', (err) => parentPort.postMessage({ error: err.code || err.message }))
  .on('end', () => parentPort.postMessage({ sha256: hash.digest('hex') }));
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
