import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Flags } from '@oclif/core';
import { AirgapCommand } from '../../base-command.ts';
import { generateSigningKeyPair } from '../../bundle/keys.ts';
import { writeFileAtomic } from '../../util/atomic.ts';
import { readStdinSecret } from '../../util/stdin.ts';

export default class KeysGenerate extends AirgapCommand {
  static override summary = 'Make an ECDSA P-256 key pair for signing bundles.';
  static override description =
    'Writes DIR/bundle.key (PKCS#8 PEM, mode 0600, encrypted when a passphrase is given) and DIR/bundle.pub ' +
    '(SPKI PEM, the key operators use to verify). Existing files are never overwritten. The public key works ' +
    'with `openssl dgst -sha256 -verify PREFIX.pub` and `cosign verify-blob --key PREFIX.pub`.';
  static override examples = [
    '<%= config.bin %> keys generate --out keys',
    'printf %s "$PASSPHRASE" | <%= config.bin %> keys generate --out keys --passphrase-stdin',
  ];
  static override enableJsonFlag = true;
  static override flags = {
    out: Flags.string({ description: 'directory for bundle.key and bundle.pub (created when missing)', default: '.' }),
    'passphrase-stdin': Flags.boolean({
      description: 'read a passphrase from stdin and encrypt the private key with it (or set CARTESIA_AIRGAP_KEY_PASSPHRASE)',
    }),
  };

  async run(): Promise<{ privateKey: string; publicKey: string; fingerprint: string; encrypted: boolean }> {
    const { flags } = await this.parse(KeysGenerate);
    const dir = resolve(flags.out);
    const privatePath = join(dir, 'bundle.key');
    const publicPath = join(dir, 'bundle.pub');
    for (const p of [privatePath, publicPath]) {
      if (existsSync(p)) this.error(`${p} already exists; choose another --out directory or move the old key away`, { exit: 1 });
    }
    const passphrase = flags['passphrase-stdin'] ? await readStdinSecret() : process.env.CARTESIA_AIRGAP_KEY_PASSPHRASE;
    if (flags['passphrase-stdin'] && !passphrase) this.error('--passphrase-stdin was given but stdin was empty; pipe the passphrase in', { exit: 1 });

    const pair = generateSigningKeyPair(passphrase || undefined);
    await mkdir(dir, { recursive: true });
    await writeFileAtomic(privatePath, pair.privateKeyPem, { mode: 0o600, exclusive: true });
    await writeFileAtomic(publicPath, pair.publicKeyPem, { mode: 0o644, exclusive: true });

    this.log(`private key  ${privatePath}${passphrase ? ' (encrypted)' : ''}`);
    this.log(`public key   ${publicPath}`);
    this.log(`fingerprint  ${pair.fingerprint}`);
    return { privateKey: privatePath, publicKey: publicPath, fingerprint: pair.fingerprint, encrypted: Boolean(passphrase) };
  }
}
