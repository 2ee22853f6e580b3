import type { KeyObject } from 'node:crypto';
import { mib } from '../util/format.ts';
import { stat } from 'node:fs/promises';
import { basename, resolve } from 'node:path';
import { Args, Flags } from '@oclif/core';
import { AirgapCommand } from '../base-command.ts';
import { deltaSummary } from '../bundle/delta.ts';
import { openBundle, type OpenedBundle } from '../bundle/reader.ts';
import { openBundleSet } from '../bundle/volume-set.ts';
import { loadPublicKey } from '../bundle/sign.ts';
import { verifyBundle, type VerifyResult } from '../bundle/verify.ts';
import { isCodedError } from '../util/errors.ts';

export interface VerifyOutput {
  ok: boolean;
  fingerprint: string | null;
  entries: number;
  bytes: number;
  /** A split bundle: its number of volumes, and those checked (all, or the one given). */
  volumes?: { count: number; checked: number[] };
  error?: string;
}


export default class Verify extends AirgapCommand {
  static override summary = 'Check a bundle\'s signature and every entry\'s hash without extracting it.';
  static override description =
    'Reads the bundle in place: checks its structure (bundle.json first, then its signature, then exactly the entries bundle.json ' +
    'lists, all regular files), verifies bundle.json.sig with --public-key before anything else, then hashes every entry as it ' +
    'streams and compares it with bundle.json. Exit codes: 0 verified, 3 the bundle failed verification (one line on stderr naming ' +
    'the bad part), 1 another error (unreadable file, bad key file), 2 bad usage. A split bundle: give one volume (NAME.vol003.tar) ' +
    'to check that volume alone, right after copying it off its media, or the directory holding the volumes to check the whole set.';
  static override examples = [
    '<%= config.bin %> verify cartesia-2025.11.18.tar --public-key keys/bundle.pub',
    '<%= config.bin %> verify cartesia-2025.11.18.tar --insecure-skip-signature --json',
    '<%= config.bin %> verify /media/dvd/cartesia.vol003.tar --public-key keys/bundle.pub',
    '<%= config.bin %> verify ./volumes/ --public-key keys/bundle.pub',
  ];
  static override args = {
    bundle: Args.string({ description: 'the bundle file (FILE.tar), one volume of a split bundle, or the directory holding its volumes', required: true }),
  };
  static override flags = {
    'public-key': Flags.string({ description: 'the signer\'s public key (bundle.pub from `keys generate`)', exclusive: ['insecure-skip-signature'] }),
    'insecure-skip-signature': Flags.boolean({ description: 'do not check the signature, only the hashes (anyone could have made such a bundle)' }),
    json: Flags.boolean({ description: 'print {ok, fingerprint, entries, bytes, error?} on stdout' }),
  };

  async run(): Promise<VerifyOutput> {
    const { args, flags } = await this.parse(Verify);
    if (!flags['public-key'] && !flags['insecure-skip-signature']) {
      this.error('give the signer\'s --public-key FILE, or --insecure-skip-signature to check only the hashes', { exit: 2 });
    }
    const skip = flags['insecure-skip-signature'];
    if (skip) process.stderr.write('WARNING: --insecure-skip-signature: the signature is NOT checked; only the hashes in bundle.json are compared, so anyone could have made this bundle\n');
    const report = (out: VerifyOutput): void => {
      if (flags.json) process.stdout.write(`${JSON.stringify(out)}\n`);
    };
    let result: VerifyResult;
    let files: string[] = [];
    let bundle: OpenedBundle;
    try {
      const publicKey: KeyObject | undefined = flags['public-key'] ? await loadPublicKey(flags['public-key']) : undefined;
      const path = resolve(args.bundle);
      // A directory is a set of volumes; a file is a bundle, or one volume checked on its own.
      bundle = (await stat(path).then((s) => s.isDirectory(), () => false)) ? await openBundleSet(path) : await openBundle(path);
      result = await verifyBundle(bundle, { aroundPageCache: true, ...(publicKey ? { publicKey } : {}), ...(flags.json ? {} : { onEntry: progress() }) });
      files = bundle.tars.map((t) => basename(t.file));
    } catch (err) {
      const message = (err as Error).message;
      report({ ok: false, fingerprint: null, entries: 0, bytes: 0, error: message });
      if (isCodedError(err, 'VERIFY')) this.error(message, { exit: 3 });
      throw err;
    } finally {
      clearProgress();
    }
    // `verify` reads every entry, so the count of skipped ones (install's) is not reported.
    const { skipped: _none, ...checked } = result;
    const out: VerifyOutput = { ok: true, ...checked };
    report(out);
    if (!flags.json) {
      if (skip) this.log(`signer       ${result.fingerprint ?? 'none (unsigned)'} (NOT checked)`);
      else this.log(`signer       ${result.fingerprint}`);
      const v = result.volumes;
      const notChecked = skip ? ' (signature NOT checked)' : '';
      if (!v) this.log(`OK: ${result.entries} entries, ${result.bytes} bytes verified${notChecked}`);
      else if (v.checked.length === v.count) {
        this.log(`volumes      ${v.count}: ${files[0]} … ${files.at(-1)}`);
        this.log(`OK: all ${v.count} volumes, ${result.entries} entries, ${result.bytes} bytes verified${notChecked}`);
      } else {
        this.log(`volume       ${v.checked[0]} of ${v.count} (${files[0]})`);
        this.log(`OK: volume ${v.checked[0]} of ${v.count}: ${result.entries} entries, ${result.bytes} bytes verified${notChecked}; give the directory of all ${v.count} volumes to check the set`);
      }
      const base = bundle.manifest.base;
      if (base) {
        const d = deltaSummary(base);
        this.log(`delta of release ${d.release.version} (base bundle.json sha256 ${d.manifestSha256}): install needs ${d.relies.manifests} manifests, ${d.relies.blobs} blobs and ${d.relies.artifacts} artifacts already in the target`);
      }
    }
    return out;
  }
}

let shown = false;

/** One rewritten line on a terminal's stderr, at most a few times a second; nothing in logs. */
function progress(): ((path: string, bytes: number, total: number) => void) | undefined {
  if (!process.stderr.isTTY) return undefined;
  let last = 0;
  return (path, bytes, total) => {
    const now = Date.now();
    if (now - last < 200 && bytes !== total) return;
    last = now;
    const name = path.length > 60 ? `…${path.slice(-59)}` : path;
    process.stderr.write(`\r\x1b[Kverifying ${name}  ${mib(bytes)} / ${mib(total)}`);
    shown = true;
  };
}

function clearProgress(): void {
  if (shown) process.stderr.write('\r\x1b[K');
  shown = false;
}
