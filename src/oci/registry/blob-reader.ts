import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { OciError } from '../errors.ts';
import { describeNetworkError, drain, header, isTransientNetworkError } from '../http/transport.ts';
import type { Descriptor } from '../types.ts';
import { registryError, type RegistryClient } from './client.ts';
import { QUEUE_BYTES } from '../../util/queue-bytes.ts';

/**
 * A blob's bytes from `offset`, as one stream that survives dropped connections: after a reset
 * or a stall it asks again with `Range` from the byte it reached (RFC 9110 §14), so a 2 GiB layer
 * never restarts from zero. Verification is the reader's job (the destination hashes as it writes).
 */
export function openRemoteBlob(client: RegistryClient, repository: string, desc: Descriptor, offset: number): Readable {
  const path = `/v2/${repository}/blobs/${desc.digest}`;
  const scopes = [`repository:${repository}:pull`];
  const what = `blob ${desc.digest} in ${client.registry}/${repository}`;
  const retry = client.transport.retry;

  async function* bytes(): AsyncGenerator<Buffer> {
    let pos = offset;
    let failures = 0;
    while (pos < desc.size) {
      try {
        const res = await client.send({ method: 'GET', path, scopes, headers: pos > 0 ? { range: `bytes=${pos}-` } : {}, idempotent: true, followRedirects: true });
        if (res.statusCode !== 200 && res.statusCode !== 206) throw await registryError(res, `cannot read ${what}`);
        // A server that ignores Range answers 200 with everything: skip what we already have.
        let skip = 0;
        if (res.statusCode === 200) skip = pos;
        else if (!header(res, 'content-range')?.startsWith(`bytes ${pos}-`)) {
          await drain(res);
          throw new OciError('REGISTRY', `${what}: the registry answered a range request for byte ${pos} with ${header(res, 'content-range') ?? 'no Content-Range'}`);
        }
        for await (const chunk of res.body as AsyncIterable<Buffer>) {
          let c = chunk;
          if (skip > 0) {
            const n = Math.min(skip, c.length);
            skip -= n;
            c = c.subarray(n);
            if (c.length === 0) continue;
          }
          pos += c.length;
          failures = 0;
          yield c;
        }
        if (pos < desc.size) throw new OciError('NETWORK', `${what}: the connection ended after ${pos} of ${desc.size} bytes`, { retryable: true });
        return;
      } catch (err) {
        if (failures++ < retry.retries && isTransientNetworkError(err)) {
          await sleep(client.transport.backoff(failures));
          continue;
        }
        throw describeNetworkError(err, client.url(path));
      }
    }
  }
  return Readable.from(bytes(), { objectMode: false, highWaterMark: QUEUE_BYTES });
}
