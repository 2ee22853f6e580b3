/**
 * What must hold at any moment, whatever point a command was killed at, checked from outside with
 * sha256sum, Node's own HTTP client and the AWS SDK (never the engine under test): every blob and
 * object under its final name is whole and hashes to its name; every reference (a layout ref, a
 * registry tag) points at content that is all there; every S3 key holds the whole object. Each
 * check returns the problems it found (empty: all good) and what is finished, for the figures.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { inject } from 'vitest';
import { run } from '../testbed/run.ts';
import { basic, fetchRaw, sha256 } from './helpers.ts';
import { objectsIn, s3 } from './install-target.ts';

const bed = inject('testbed');

export interface Desc {
  mediaType: string;
  digest: string;
  size: number;
}

const hexOf = (digest: string) => digest.slice('sha256:'.length);
const list = (dir: string) => readdir(dir).catch(() => [] as string[]);
const sizeOf = async (p: string) => (await stat(p).catch(() => undefined))?.size;
const isIndex = (m: string) => /index|manifest\.list/.test(m);

/** sha256sum (the coreutils oracle) over files; file → hex. */
export async function sha256sums(files: string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  if (files.length === 0) return out;
  for (const line of (await run('sha256sum', ['--', ...files])).split('\n')) {
    const m = /^([0-9a-f]{64}) [ *](.+)$/.exec(line);
    if (m) out.set(m[2]!, m[1]!);
  }
  return out;
}

/** Files in `dir` whose contents do not hash to their name. */
async function misnamed(dir: string): Promise<{ problems: string[]; sizes: Map<string, number> }> {
  const names = (await list(dir)).filter((n) => /^[0-9a-f]{64}$/.test(n));
  const sums = await sha256sums(names.map((n) => join(dir, n)));
  const problems: string[] = [];
  const sizes = new Map<string, number>();
  for (const n of names) {
    if (sums.get(join(dir, n)) !== n) problems.push(`${join(dir, n)} does not hash to its name`);
    else sizes.set(n, (await sizeOf(join(dir, n)))!);
  }
  return { problems, sizes };
}

export interface LayoutState {
  problems: string[];
  /** Whole blobs (hex → size), manifests included. */
  blobs: Map<string, number>;
  /** Partial blobs kept for resuming (hex → bytes on disk). */
  partial: Map<string, number>;
  /** Every config and layer the layout's refs name (hex → size). */
  referenced: Map<string, number>;
  /** The same per ref name (`name:tag`). */
  byRef: Map<string, Map<string, number>>;
}

/** An OCI layout: every blob whole; every index.json ref complete; partials are prefixes of the real blob. */
export async function checkLayout(dir: string, reference?: string): Promise<LayoutState> {
  const { problems, sizes: blobs } = await misnamed(join(dir, 'blobs', 'sha256'));
  const referenced = new Map<string, number>();
  const byRef = new Map<string, Map<string, number>>();
  const indexText = await readFile(join(dir, 'index.json'), 'utf8').catch(() => undefined);
  let index: { manifests: (Desc & { annotations?: Record<string, string> })[] } | undefined;
  try {
    index = indexText === undefined ? undefined : (JSON.parse(indexText) as typeof index);
  } catch {
    problems.push(`${join(dir, 'index.json')} is not whole JSON`);
  }
  const layoutText = await readFile(join(dir, 'oci-layout'), 'utf8').catch(() => undefined);
  if (layoutText !== undefined && layoutText !== '{"imageLayoutVersion":"1.0.0"}\n') problems.push(`${join(dir, 'oci-layout')} is not whole`);
  if (index) {
    const walk = async (d: Desc, ref: string): Promise<void> => {
      if (blobs.get(hexOf(d.digest)) !== d.size) {
        problems.push(`${ref} points at ${d.digest}, which ${dir} does not hold whole`);
        return;
      }
      if (!/manifest|index/.test(d.mediaType)) {
        referenced.set(hexOf(d.digest), d.size);
        byRef.set(ref, (byRef.get(ref) ?? new Map<string, number>()).set(hexOf(d.digest), d.size));
        return;
      }
      const doc = JSON.parse(await readFile(join(dir, 'blobs', 'sha256', hexOf(d.digest)), 'utf8')) as { manifests?: Desc[]; config?: Desc; layers?: Desc[] };
      for (const child of isIndex(d.mediaType) ? (doc.manifests ?? []) : [doc.config!, ...(doc.layers ?? [])]) await walk(child, ref);
    };
    for (const m of index.manifests) await walk(m, m.annotations?.['org.opencontainers.image.ref.name'] ?? m.digest);
  }
  const partial = new Map<string, number>();
  const ingest = join(dir, '.cartesia-airgap-ingest');
  for (const n of await list(ingest)) {
    const bytes = await readFile(join(ingest, n));
    partial.set(n, bytes.length);
    // A partial is resumed, so it must be a prefix of the real blob (from a clean run's layout).
    if (reference && bytes.length > 0) {
      const whole = await readFile(join(reference, 'blobs', 'sha256', n)).catch(() => undefined);
      if (whole && !whole.subarray(0, bytes.length).equals(bytes)) problems.push(`${join(ingest, n)} is not a prefix of blob ${n}`);
    }
  }
  return { problems, blobs, partial, referenced, byRef };
}

export interface ObjectCacheState {
  problems: string[];
  /** bucket/key → size, for every key whose ledger and blob are both there. */
  finished: Map<string, number>;
  /** Bytes in temp files (downloads in flight when the process died). */
  tmpBytes: number;
}

/** The object cache: blobs hash to their names; every ledger names the right sha256 and a whole blob. */
export async function checkObjectCache(cacheDir: string, expected: Map<string, { size: number; sha256: string }>): Promise<ObjectCacheState> {
  const blobDir = join(cacheDir, 'objects', 'sha256');
  const { problems, sizes } = await misnamed(blobDir);
  const finished = new Map<string, number>();
  const ledgers = join(cacheDir, 'objects', 'by-key');
  for (const n of await list(ledgers)) {
    if (!n.endsWith('.json')) continue; // temp names of a ledger being written
    let l: { bucket: string; key: string; size: number; sha256: string };
    try {
      l = JSON.parse(await readFile(join(ledgers, n), 'utf8')) as typeof l;
    } catch {
      problems.push(`ledger ${n} is not whole JSON`);
      continue;
    }
    const want = expected.get(`${l.bucket}/${l.key}`);
    if (!want || want.sha256 !== l.sha256 || want.size !== l.size) problems.push(`ledger for ${l.bucket}/${l.key} says sha256 ${l.sha256}, GCS has ${want?.sha256}`);
    else if (sizes.get(l.sha256) !== l.size) problems.push(`ledger for ${l.bucket}/${l.key} names a blob the cache does not hold whole`);
    else finished.set(`${l.bucket}/${l.key}`, l.size);
  }
  let tmpBytes = 0;
  for (const n of await list(join(cacheDir, 'objects', 'tmp'))) tmpBytes += (await sizeOf(join(cacheDir, 'objects', 'tmp', n))) ?? 0;
  return { problems, finished, tmpBytes };
}

let caPem: Buffer | undefined;
const ca = async () => (caPem ??= await readFile(bed.caFile));
const auth = { authorization: basic(bed.private.username, bed.private.password) };
const MANIFEST_ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

async function registryGet(path: string, method = 'GET', accept?: string) {
  return fetchRaw(`https://${bed.private.host}${path}`, { method, ca: await ca(), headers: { ...auth, ...(accept ? { accept } : {}) } });
}

export interface RegistryState {
  problems: string[];
  /** repository → digest its tag points at. */
  tags: Map<string, string>;
  /** Config and layer digests some repository under the prefix holds. */
  present: Set<string>;
  /** Bytes in upload sessions (uploads in flight when the process died). */
  uploadBytes: number;
}

/**
 * The private registry under `prefix`: for every tag, the manifest and everything under it can be
 * fetched and hashes right, and it is the digest the bundle carries for that image.
 */
export async function checkRegistry(prefix: string, want: Map<string, { tag: string; digest: string; blobs: Map<string, number> }>): Promise<RegistryState> {
  const problems: string[] = [];
  const tags = new Map<string, string>();
  const present = new Set<string>();
  const repos: string[] = [];
  // The catalog comes in pages of at most 1000 (registry 2.8 refuses more).
  for (let last = ''; ; ) {
    const page = JSON.parse((await registryGet(`/v2/_catalog?n=1000${last ? `&last=${encodeURIComponent(last)}` : ''}`)).body.toString('utf8')) as { repositories?: string[] };
    const names = page.repositories ?? [];
    repos.push(...names.filter((r) => r.startsWith(`${prefix}/`)));
    if (names.length < 1000) break;
    last = names.at(-1)!;
  }
  const walk = async (repo: string, d: Desc): Promise<void> => {
    if (/manifest|index/.test(d.mediaType)) {
      const res = await registryGet(`/v2/${repo}/manifests/${d.digest}`, 'GET', MANIFEST_ACCEPT);
      if (res.status !== 200 || `sha256:${sha256(res.body)}` !== d.digest) return void problems.push(`${repo}: manifest ${d.digest} answered ${res.status}`);
      const doc = JSON.parse(res.body.toString('utf8')) as { manifests?: Desc[]; config?: Desc; layers?: Desc[] };
      await Promise.all((isIndex(d.mediaType) ? (doc.manifests ?? []) : [doc.config!, ...(doc.layers ?? [])]).map((c) => walk(repo, c)));
      return;
    }
    const res = await registryGet(`/v2/${repo}/blobs/${d.digest}`);
    if (res.status !== 200 || `sha256:${sha256(res.body)}` !== d.digest) problems.push(`${repo}: blob ${d.digest} answered ${res.status}${res.status === 200 ? ' with other bytes' : ''}`);
  };
  // Repositories (and blobs within them) are checked at once: the registry is local.
  await Promise.all(
    repos.map(async (repo) => {
      const name = repo.slice(prefix.length + 1);
      const listed = JSON.parse((await registryGet(`/v2/${repo}/tags/list`)).body.toString('utf8')) as { tags?: string[] | null };
      for (const t of listed.tags ?? []) {
        const res = await registryGet(`/v2/${repo}/manifests/${t}`, 'GET', MANIFEST_ACCEPT);
        const digest = `sha256:${sha256(res.body)}`;
        if (res.status !== 200) problems.push(`${repo}:${t} answered ${res.status}`);
        else if (t !== want.get(name)?.tag || digest !== want.get(name)?.digest) problems.push(`${repo}:${t} is ${digest}, the bundle carries ${want.get(name)?.digest} as :${want.get(name)?.tag}`);
        else {
          tags.set(name, digest);
          await walk(repo, { mediaType: String(res.headers['content-type']), digest, size: res.body.length });
        }
      }
      // Which of this image's blobs the repository holds: finished work a re-run must not move again.
      await Promise.all([...(want.get(name)?.blobs.keys() ?? [])].map(async (hex) => {
        if ((await registryGet(`/v2/${repo}/blobs/sha256:${hex}`, 'HEAD')).status === 200) present.add(hex);
      }));
    }),
  );
  let uploadBytes = 0;
  const store = join(bed.root, 'private', 'data', 'docker', 'registry', 'v2', 'repositories');
  for (const repo of repos) {
    for (const session of await list(join(store, repo, '_uploads'))) uploadBytes += (await sizeOf(join(store, repo, '_uploads', session, 'data'))) ?? 0;
  }
  return { problems, tags, present, uploadBytes };
}

export interface BucketState {
  problems: string[];
  /** key → sha256 of what the key holds. */
  objects: Map<string, string>;
}

/** Every key in the bucket holds the whole object the bundle carries under it. */
export async function checkBucket(bucket: string, want: Map<string, { size: number; sha256: string }>): Promise<BucketState> {
  const problems: string[] = [];
  const objects = new Map<string, string>();
  for (const o of await objectsIn(bucket)) {
    const got = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: o.Key! }));
    const hex = sha256(Buffer.from(await got.Body!.transformToByteArray()));
    const w = want.get(o.Key!);
    if (!w || w.sha256 !== hex) problems.push(`s3://${bucket}/${o.Key} holds sha256 ${hex}, the bundle carries ${w?.sha256}`);
    else objects.set(o.Key!, hex);
  }
  return { problems, objects };
}

const INSTALL_OUTPUTS = ['values.yaml', '.env', 'cartesia-install-receipt.json'];

/** install's output directory: only its final names (whole) and its temp names. */
export async function checkInstallOut(dir: string): Promise<{ problems: string[]; files: Map<string, string> }> {
  const problems: string[] = [];
  const files = new Map<string, string>();
  for (const n of await list(dir)) {
    if (/^\..+\.[0-9a-f]{12}\.partial$/.test(n)) continue; // a temp name: never read as the real file
    if (!INSTALL_OUTPUTS.includes(n)) {
      problems.push(`unexpected file ${n} in ${dir}`);
      continue;
    }
    const text = await readFile(join(dir, n), 'utf8');
    files.set(n, text);
    if (n.endsWith('.json')) {
      try {
        if (!(JSON.parse(text) as { finishedAt?: string }).finishedAt) problems.push(`${n} has no finishedAt`);
      } catch {
        problems.push(`${n} is not whole JSON`);
      }
    }
  }
  return { problems, files };
}
