/**
 * V8 heap tuning for the send phase of `install`. Chunk Buffers that wait in the HTTP pipelines
 * (registry and S3 at once) outlive two scavenges and are promoted; their 1 MiB backing stores
 * then count towards the old generation's limit, which V8 sets at only ~1.3 × the ~30 MiB of live
 * objects. Measured at 4 GiB: ~95 full collections, ~4-5 CPU s of marking for a heap that frees
 * nothing. A growth factor of 3 cut that to ~24 collections (user CPU 19 → 16 s; peak RSS in the
 * bench 213-221 MiB, was 243-246). It is read at every limit computation, so it can be set once
 * the command knows it sends; `bundle` keeps V8's own (there fewer collections cost peak RSS).
 */
import { setFlagsFromString } from 'node:v8';

export function favourThroughputOverHeapSize(): void {
  setFlagsFromString('--heap-growing-percent=200');
}
