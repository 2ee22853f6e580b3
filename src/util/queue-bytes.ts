/**
 * How many bytes a stream stage that carries network chunks may queue. Small on purpose: a chunk
 * that waits in a queue while the young generation is collected twice (our semi-space is 1 MiB)
 * is promoted, and once dropped is freed only by a full GC, which V8 puts off until tens of MiB
 * of such garbage have piled up. Measured on a 4 GiB `bundle --direct`: 1 MiB queues peaked at
 * 253-259 MiB RSS with 26.6 CPU s in JavaScript; 128 KiB queues 197-207 MiB and 19.8-20.9 s,
 * no slower. Files are still read 1 MiB at a time; this bounds only what waits between stages.
 */
export const QUEUE_BYTES = 128 * 1024;
