import { stat } from 'node:fs/promises';
import { basename, resolve } from 'node:path';
import { Args, Flags } from '@oclif/core';
import { AirgapCommand } from '../base-command.ts';
import type { BundleArtifact, BundleImage } from '../bundle/manifest.ts';
import { deltaSummary, type DeltaSummary } from '../bundle/delta.ts';
import { openBundle } from '../bundle/reader.ts';
import { firstVolumeIn, volumeFiles } from '../bundle/volume-set.ts';
import { human, table } from '../util/format.ts';

/**
 * The recipe's customer prefixes (bundles/cartesia.yaml): artifacts are grouped by them, anything
 * else by its first path component, so a listing shows "migrations" and "loras" rather than
 * thousands of keys.
 */
const KNOWN_PREFIXES = ['migrations/v2/migrations/', 'loras/'];

export interface InspectOutput {
  file: string;
  size: number;
  formatVersion: number;
  tool: { name: string; version: string };
  /** The installer executable in tool/, or null. */
  installer: { path: string; version: string; node: string; platform: string; size: number; sha256: string } | null;
  created: string;
  release: { version: string; tag: string; archive: string };
  customer: { name?: string; bucket: string } | null;
  signer: string | null;
  images: { name: string; tag: string; digest: string; platforms: string[]; size: number }[];
  artifacts: { count: number; bytes: number; groups: { bucket: string; prefix: string; count: number; bytes: number }[] };
  entries: number;
  /** A split bundle: the volume read, and every volume with what it holds and whether its file is beside it. */
  volumes?: { count: number; limit: number; read: number; list: { number: number; file: string; entries: number; bytes: number; present: boolean | null }[] };
  /** A delta: its base and what it relies on the base for (the bytes it saves); null for a full bundle. */
  base: DeltaSummary | null;
}

const platformText = (p: BundleImage['platforms'][number]): string => [p.os, p.architecture, ...(p.variant ? [p.variant] : [])].join('/');

function groupOf(a: BundleArtifact): string {
  const known = KNOWN_PREFIXES.find((p) => a.key.startsWith(p));
  if (known) return known;
  const slash = a.key.indexOf('/');
  return slash === -1 ? a.key : a.key.slice(0, slash + 1);
}

function groupArtifacts(artifacts: readonly BundleArtifact[]): InspectOutput['artifacts']['groups'] {
  const groups = new Map<string, { bucket: string; prefix: string; count: number; bytes: number }>();
  for (const a of artifacts) {
    const prefix = groupOf(a);
    const id = `${a.bucket}\0${prefix}`;
    const g = groups.get(id) ?? { bucket: a.bucket, prefix, count: 0, bytes: 0 };
    g.count++;
    g.bytes += a.size;
    groups.set(id, g);
  }
  return [...groups.values()].sort((x, y) => (x.bucket === y.bucket ? (x.prefix < y.prefix ? -1 : 1) : x.bucket < y.bucket ? -1 : 1));
}

export default class Inspect extends AirgapCommand {
  static override summary = 'Show what a bundle holds: release, images, artifacts, signer, and for a delta its base and the bytes saved. Verifies nothing.';
  static override description =
    'Reads bundle.json and the tar\'s structure in place (the same structural checks as verify, no hashing and no signature ' +
    'check: use `verify` before trusting anything shown here).';
  static override examples = ['<%= config.bin %> inspect cartesia-2025.11.18.tar', '<%= config.bin %> inspect cartesia-2025.11.18.tar --json', '<%= config.bin %> inspect ./volumes/'];
  static override args = {
    bundle: Args.string({ description: 'the bundle file (FILE.tar), one volume of a split bundle, or the directory holding its volumes', required: true }),
  };
  static override flags = {
    json: Flags.boolean({ description: 'print the same as one JSON document on stdout' }),
  };

  async run(): Promise<InspectOutput> {
    const { args, flags } = await this.parse(Inspect);
    const path = resolve(args.bundle);
    // Every volume carries the whole bundle.json: one is read, the others are only looked for.
    const b = await openBundle((await stat(path).then((s) => s.isDirectory(), () => false)) ? await firstVolumeIn(path) : path);
    const m = b.manifest;
    const t = b.tars[0]!;
    const split = b.volumes;
    const beside = await volumeFiles(t);
    const out: InspectOutput = {
      file: b.file,
      size: b.index.fileSize,
      formatVersion: m.formatVersion,
      tool: m.tool,
      installer: m.installer ? { path: m.installer.path, version: m.installer.version, node: m.installer.node, platform: m.installer.platform, size: m.installer.size, sha256: m.installer.sha256 } : null,
      created: m.created,
      release: { version: m.release.version, tag: m.release.tag, archive: m.release.archive.path },
      customer: m.customer,
      // What bundle.json claims: only `verify --public-key` proves it.
      signer: b.signature === undefined ? null : (m.signer?.fingerprint ?? null),
      images: m.images.map((i) => ({ name: i.name, tag: i.tag, digest: i.digest, platforms: i.platforms.map(platformText), size: i.size })),
      artifacts: { count: m.artifacts.length, bytes: m.artifacts.reduce((n, a) => n + a.size, 0), groups: groupArtifacts(m.artifacts) },
      entries: m.entries.length,
      ...(split
        ? {
            volumes: {
              count: split.list.length,
              limit: split.limit,
              read: t.volume!,
              list: split.list.map((v, i) => ({
                number: i + 1,
                file: beside?.[i]?.file ?? '',
                entries: v.entries.length - 1,
                bytes: v.entries.slice(1).reduce((n, e) => n + e.size, 0),
                present: beside?.[i]?.present ?? null,
              })),
            },
          }
        : {}),
      base: m.base ? deltaSummary(m.base) : null,
    };
    if (flags.json) {
      process.stdout.write(`${JSON.stringify(out)}\n`);
      return out;
    }
    this.log(`bundle    ${out.file}  ${human(out.size)} (${out.size} bytes)`);
    this.log(`release   ${out.release.version}  tag ${out.release.tag}`);
    this.log(`created   ${out.created}`);
    this.log(`tool      ${out.tool.name} ${out.tool.version}  (format ${out.formatVersion})`);
    this.log(`installer ${out.installer ? `${out.installer.path}  ${out.installer.version}, node ${out.installer.node}, ${out.installer.platform}, ${human(out.installer.size)}` : 'none'}`);
    this.log(`signer    ${out.signer ?? 'unsigned'}${out.signer ? '  (not verified; run `verify --public-key`)' : ''}`);
    if (out.customer) this.log(`customer  ${out.customer.name ?? '-'}  gs://${out.customer.bucket}`);
    if (out.base) {
      const d = out.base;
      this.log(`delta     of release ${d.release.version} (tag ${d.release.tag}), base bundle.json sha256 ${d.manifestSha256}, signed by ${d.signer}`);
      this.log(`          relies on ${d.relies.manifests} manifests and ${d.relies.blobs} blobs (${human(d.saved.images)}) and ${d.relies.artifacts} artifacts (${human(d.saved.artifacts)}) already installed: ${human(d.saved.total)} (${d.saved.total} bytes) not carried`);
    }
    this.log('');
    this.log(`images (${out.images.length})`);
    if (out.images.length > 0) {
      const rows = [['NAME', 'TAG', 'DIGEST', 'PLATFORMS', 'SIZE'], ...out.images.map((i) => [i.name, i.tag, i.digest, i.platforms.join(',') || '-', human(i.size)])];
      for (const line of table(rows)) this.log(`  ${line}`);
    }
    this.log('');
    this.log(`artifacts (${out.artifacts.count}, ${human(out.artifacts.bytes)})`);
    if (out.artifacts.groups.length > 0) {
      const rows = [['PREFIX', 'COUNT', 'SIZE'], ...out.artifacts.groups.map((g) => [`gs://${g.bucket}/${g.prefix}`, String(g.count), human(g.bytes)])];
      for (const line of table(rows)) this.log(`  ${line}`);
    }
    this.log('');
    if (!out.volumes) {
      this.log(`${out.entries} entries after bundle.json, ${human(out.size)} in all`);
      return out;
    }
    const v = out.volumes;
    this.log(`${out.entries} entries in ${v.count} volumes of at most ${human(v.limit)} (${v.limit} bytes); read from volume ${v.read}`);
    const rows = [['VOLUME', 'FILE', 'ENTRIES', 'SIZE', 'HERE'], ...v.list.map((x) => [String(x.number), x.file ? basename(x.file) : '?', String(x.entries), human(x.bytes), x.present === null ? '?' : x.present ? 'yes' : 'MISSING'])];
    for (const line of table(rows)) this.log(`  ${line}`);
    return out;
  }
}
