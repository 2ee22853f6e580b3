#!/usr/bin/env -S MALLOC_ARENA_MAX=2 node --max-semi-space-size=1
// A small young generation: the data path allocates many short-lived chunk Buffers whose memory
// is only returned when their wrappers are collected, so frequent scavenges keep peak RSS flat
// (measured: bundle of 1 GiB, 336 → 246 MiB). Set here because V8 sizes the heap at start-up;
// scripts/build-exe.ts reads these flags and gives the single executable the same.
// Two glibc malloc arenas instead of one per thread (libuv's pool, hash workers): the chunk
// buffers are malloc'd on several threads, and each arena kept its own high-water mark (measured:
// bundle --direct of 1 GiB, 250 → 216 MiB, same time). The executable cannot set its own
// environment before it starts; it runs without this.
import { mkdirSync } from 'node:fs';
import { enableCompileCache } from 'node:module';
import { homedir } from 'node:os';
import { join } from 'node:path';

/**
 * The compile cache's directory, made here one level at a time: Node's own recursive mkdir spins
 * forever where mkdir answers ENOENT under a directory that exists (procfs, sysfs), and would
 * hang every command if XDG_CACHE_HOME pointed there. Undefined when it cannot be made.
 */
function compileCacheDir() {
  let dir = process.env.XDG_CACHE_HOME || join(homedir(), '.cache');
  try {
    for (const part of ['', 'cartesia-airgap', 'node-compile-cache']) {
      dir = join(dir, part);
      try {
        mkdirSync(dir, { mode: 0o700 });
      } catch (err) {
        if (err.code !== 'EEXIST') throw err;
      }
    }
    return dir;
  } catch {
    return undefined;
  }
}

// The CLI is one bundled file (npm run build); V8 keeps its compiled code in the user's cache, so
// a re-run does not compile it again (a no-op run: 0.57 → 0.48 s). NODE_DISABLE_COMPILE_CACHE=1
// turns it off; a cache that cannot be made is skipped without a word.
const cacheDir = process.env.NODE_DISABLE_COMPILE_CACHE ? undefined : compileCacheDir();
if (cacheDir) enableCompileCache?.(cacheDir);
await import('../dist/cli/cartesia-airgap.cjs');
