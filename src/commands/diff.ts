import type { KeyObject } from 'node:crypto';
import { resolve } from 'node:path';
import { Args, Flags } from '@oclif/core';
import { AirgapCommand } from '../base-command.ts';
import { openSignedManifest, type SignedManifest } from '../bundle/base.ts';
import { diffManifests, type BundleDiff, type DiffSide } from '../bundle/diff.ts';
import { loadPublicKey } from '../bundle/sign.ts';
import { isCodedError } from '../util/errors.ts';
import { human, table } from '../util/format.ts';

const shortDigest = (d: string | null): string => (d ? `${d.slice(0, 'sha256:'.length + 12)}…` : '-');

export default class Diff extends AirgapCommand {
  static override summary = 'Show what changed between two bundles: release, images, artifacts.';
  static override description =
    'Reads only the bundle.json of each (a bundle file, or a bundle.json with bundle.json.sig beside it): nothing is extracted or ' +
    'hashed. Images are compared by name and digest (and, for a changed one, which platforms changed), artifacts by key and ' +
    'sha256. A delta counts with what it relies on, so it shows the same changes as the full bundle of its release. With ' +
    '--public-key both signatures must verify first (exit 3 otherwise); without it the comparison is of unproven claims, and ' +
    'says so.';
  static override examples = [
    '<%= config.bin %> diff cartesia-2025.11.18.tar cartesia-2025.12.02.tar --public-key keys/bundle.pub',
    '<%= config.bin %> diff old/bundle.json cartesia-2025.12.02-delta.tar --json',
  ];
  static override args = {
    old: Args.string({ description: 'the earlier bundle (or its bundle.json)', required: true }),
    new: Args.string({ description: 'the later bundle (or its bundle.json)', required: true }),
  };
  static override flags = {
    'public-key': Flags.string({ description: 'check that both bundles are signed by this key before comparing' }),
    json: Flags.boolean({ description: 'print the differences as one JSON document on stdout' }),
  };

  async run(): Promise<BundleDiff> {
    const { args, flags } = await this.parse(Diff);
    let result: BundleDiff;
    try {
      const key: KeyObject | undefined = flags['public-key'] ? await loadPublicKey(flags['public-key']) : undefined;
      const open = async (file: string): Promise<SignedManifest> => {
        try {
          return await openSignedManifest(resolve(file), key);
        } catch (err) {
          (err as Error).message = `${file}: ${(err as Error).message}`;
          throw err;
        }
      };
      result = diffManifests(await open(args.old), await open(args.new));
    } catch (err) {
      if (isCodedError(err, 'VERIFY')) this.error((err as Error).message, { exit: 3 });
      throw err;
    }
    if (!flags['public-key']) process.stderr.write('Note: signatures not checked (give --public-key to check them); this compares what the two bundle.json files claim\n');
    if (flags.json) {
      process.stdout.write(`${JSON.stringify(result)}\n`);
      return result;
    }
    this.#print(result);
    return result;
  }

  #print(d: BundleDiff): void {
    const who = (s: DiffSide): string =>
      `release ${s.release.version} (tag ${s.release.tag})${s.delta ? ', a delta' : ''}, ${s.signer ? `signed by ${s.signer}${s.verified ? ' (verified)' : ' (NOT verified)'}` : 'unsigned'}`;
    this.log(`old        ${d.old.file}  ${who(d.old)}`);
    this.log(`new        ${d.new.file}  ${who(d.new)}`);
    this.log('');
    const r = d.release;
    this.log(r.changed ? `release    ${r.version.old} → ${r.version.new}, tag ${r.tag.old} → ${r.tag.new}` : `release    unchanged (${r.version.new}, tag ${r.tag.new})`);

    const im = d.images;
    this.log(`images     ${im.changed.length} changed, ${im.added.length} added, ${im.removed.length} removed, ${im.unchanged.length} unchanged`);
    const imageRows = [
      ...im.changed.map((c) => ['changed', c.name, `${c.old.tag}@${shortDigest(c.old.digest)}`, `${c.new.tag}@${shortDigest(c.new.digest)}`, c.platforms.map((p) => p.platform).join(',') || '-']),
      ...im.added.map((a) => ['added', a.name, '-', `${a.tag}@${shortDigest(a.digest)}`, '-']),
      ...im.removed.map((a) => ['removed', a.name, `${a.tag}@${shortDigest(a.digest)}`, '-', '-']),
    ];
    if (imageRows.length > 0) for (const line of table([['CHANGE', 'NAME', 'OLD', 'NEW', 'PLATFORMS'], ...imageRows])) this.log(`  ${line}`);

    const ar = d.artifacts;
    this.log(`artifacts  ${ar.changed.length} changed, ${ar.added.length} added, ${ar.removed.length} removed, ${ar.unchanged} unchanged`);
    const artifactRows = [
      ...ar.changed.map((c) => ['changed', c.key, `${human(c.old.size)} sha256 ${c.old.sha256.slice(0, 12)}…`, `${human(c.new.size)} sha256 ${c.new.sha256.slice(0, 12)}…`]),
      ...ar.added.map((a) => ['added', a.key, '-', `${human(a.size)} sha256 ${a.sha256.slice(0, 12)}…`]),
      ...ar.removed.map((a) => ['removed', a.key, `${human(a.size)} sha256 ${a.sha256.slice(0, 12)}…`, '-']),
    ];
    if (artifactRows.length > 0) for (const line of table([['CHANGE', 'KEY', 'OLD', 'NEW'], ...artifactRows])) this.log(`  ${line}`);
  }
}
