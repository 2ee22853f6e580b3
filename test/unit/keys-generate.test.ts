import { execFile } from 'node:child_process';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { run } from '../testbed/run.ts';
import { scratchDir } from './helpers.ts';

const execFileP = promisify(execFile);
const cli = join(import.meta.dirname, '..', '..', 'bin', 'run.js');

async function airgap(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileP(process.execPath, [cli, ...args], { env: { ...process.env, ...env } });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('keys generate', () => {
  it('writes a P-256 pair that openssl signs and verifies with, and prints the SPKI fingerprint', async () => {
    const dir = await scratchDir('airgap-keys-');
    const res = await airgap(['keys', 'generate', '--out', join(dir, 'release')]);
    expect(res.code).toBe(0);
    expect((await stat(join(dir, 'release', 'bundle.key'))).mode & 0o777).toBe(0o600);
    expect(await run('openssl', ['pkey', '-in', join(dir, 'release', 'bundle.key'), '-noout', '-text'])).toMatch(/ASN1 OID: prime256v1/);

    await writeFile(join(dir, 'msg'), 'bundle.json stand-in\n');
    await run('openssl', ['dgst', '-sha256', '-sign', join(dir, 'release', 'bundle.key'), '-out', join(dir, 'msg.sig'), join(dir, 'msg')]);
    expect(await run('openssl', ['dgst', '-sha256', '-verify', join(dir, 'release', 'bundle.pub'), '-signature', join(dir, 'msg.sig'), join(dir, 'msg')])).toBe('Verified OK\n');

    const der = join(dir, 'pub.der');
    await run('openssl', ['pkey', '-pubin', '-in', join(dir, 'release', 'bundle.pub'), '-outform', 'DER', '-out', der]);
    const expected = (await run('sha256sum', [der])).split(' ')[0];
    expect(res.stdout).toContain(`fingerprint  SHA256:${expected}`);
  });

  it('refuses to overwrite an existing key with a one-line error and a non-zero exit, keeping the old key', async () => {
    const dir = await scratchDir('airgap-keys-');
    expect((await airgap(['keys', 'generate', '--out', join(dir, 'k')])).code).toBe(0);
    const before = await readFile(join(dir, 'k', 'bundle.key'), 'utf8');
    const again = await airgap(['keys', 'generate', '--out', join(dir, 'k')]);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(/bundle\.key already exists; choose another --out directory/);
    expect(again.stderr.trim().split('\n').filter((l) => l.includes('already exists'))).toHaveLength(1);
    expect(await readFile(join(dir, 'k', 'bundle.key'), 'utf8')).toBe(before);
  });

  it('encrypts the private key with a passphrase from stdin and never prints it', async () => {
    const dir = await scratchDir('airgap-keys-');
    const secret = 'S3CRET-passphrase-7f3a';
    const child = execFile(process.execPath, [cli, 'keys', 'generate', '--out', join(dir, 'enc'), '--passphrase-stdin', '--json']);
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (out += d));
    child.stdin!.end(`${secret}\n`);
    const code = await new Promise<number | null>((r) => child.once('exit', r));
    expect(code).toBe(0);
    expect(out).not.toContain(secret);
    expect(JSON.parse(out)).toMatchObject({ encrypted: true });
    const pem = await readFile(join(dir, 'enc', 'bundle.key'), 'utf8');
    expect(pem).toMatch(/^-----BEGIN ENCRYPTED PRIVATE KEY-----/);
    await expect(run('openssl', ['pkey', '-in', join(dir, 'enc', 'bundle.key'), '-passin', 'pass:wrong', '-noout'])).rejects.toThrow();
    expect(await run('openssl', ['pkey', '-in', join(dir, 'enc', 'bundle.key'), '-passin', `pass:${secret}`, '-pubout'])).toBe(await readFile(join(dir, 'enc', 'bundle.pub'), 'utf8'));
  });
});
