#!/usr/bin/env -S MALLOC_ARENA_MAX=2 node --max-semi-space-size=1
// A small young generation: the data path allocates many short-lived chunk Buffers whose memory
// is only returned when their wrappers are collected, so frequent scavenges keep peak RSS flat
// (measured: bundle of 1 GiB, 336 → 246 MiB). Set here because V8 sizes the heap at start-up;
// scripts/build-exe.ts reads these flags and gives the single executable the same.
// Two glibc malloc arenas instead of one per thread (libuv's pool, hash workers): the chunk
// buffers are malloc'd on several threads, and each arena kept its own high-water mark (measured:
// bundle --direct of 1 GiB, 250 → 216 MiB, same time). The executable cannot set its own
// environment before it starts; it runs without this.
import { main } from '../dist/main.js';

await main(import.meta.url);
