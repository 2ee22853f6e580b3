#!/usr/bin/env -S node --max-semi-space-size=1
// A small young generation: the data path allocates many short-lived chunk Buffers whose memory
// is only returned when their wrappers are collected, so frequent scavenges keep peak RSS flat
// (measured: bundle of 1 GiB, 336 → 246 MiB). Set here because V8 sizes the heap at start-up;
// scripts/build-exe.ts reads these flags and gives the single executable the same.
import { main } from '../dist/main.js';

await main(import.meta.url);
