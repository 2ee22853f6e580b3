import type { CopyEvent } from '../oci/copy.ts';
import { mib } from '../util/format.ts';

export type RenderMode = 'plain' | 'ndjson' | 'quiet';

const short = (d: string) => d.slice(0, 19);

/**
 * The one place copy progress is turned into text (the engine never prints): plain lines for
 * people and CI logs, NDJSON for machines. Byte events are thinned to a few per second per blob.
 */
export function copyRenderer(mode: RenderMode, write: (line: string) => void = (l) => process.stderr.write(`${l}\n`)): (e: CopyEvent) => void {
  const lastBytes = new Map<string, number>();
  const started = Date.now();
  return (e) => {
    if (mode === 'quiet') return;
    if (e.type === 'blob-bytes') {
      const now = Date.now();
      if (e.bytes < e.size && now - (lastBytes.get(e.digest) ?? 0) < 250) return;
      lastBytes.set(e.digest, now);
      if (mode === 'plain') return;
    }
    if (mode === 'ndjson') return write(JSON.stringify({ ...e, ms: Date.now() - started }));
    switch (e.type) {
      case 'resolved':
        return write(`resolved ${e.digest} (${e.mediaType})`);
      case 'platform-selected':
        return write(`selected the ${e.platform} manifest ${e.digest}; the index ${e.indexDigest} is not copied`);
      case 'blob-done':
        if (e.how !== 'existed') write(`${e.how === 'mounted' ? 'mounted ' : 'copied  '}${short(e.digest)}  ${mib(e.size)}`);
        return;
      case 'tagged':
        return write(`tagged ${e.reference} → ${e.digest}`);
      default:
        return;
    }
  };
}
