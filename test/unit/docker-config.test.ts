import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dockerConfigCredential, type DockerConfigOptions } from '../../src/oci/auth/docker-config.ts';
import { isOciError } from '../../src/oci/errors.ts';

// Long enough that a helper's stray log of it is also caught by the stderr redaction.
const SECRET = 'S3cr3t-t0ken-abcdefghijklmnopqrstuvwxyz-0123456789';
const b64 = (s: string): string => Buffer.from(s).toString('base64');

let dir: string;
let n = 0;
/** Every error message any test saw; the last test checks none of them leaks a secret. */
const messages: string[] = [];

// Real helpers, so the spawn/stdin/exit-code path is exercised as docker would use it.
const HELPERS: Record<string, string> = {
  // Echoes what it was asked for so tests can see the server URL; logs calls to prove order.
  good: 'url=$(cat); echo "good $url" >> "$HOME/calls"; printf \'{"ServerURL":"%s","Username":"good-user","Secret":"good-pass"}\' "$url"',
  store: 'url=$(cat); echo "store $url" >> "$HOME/calls"; printf \'{"ServerURL":"%s","Username":"store-user","Secret":"store-pass"}\' "$url"',
  notfound: 'cat >/dev/null; echo "credentials not found in native keychain"; exit 1',
  broken: 'cat >/dev/null; echo "keychain is locked" >&2; echo "second line" >&2; exit 3',
  token: `cat >/dev/null; echo '{"ServerURL":"x","Username":"<token>","Secret":"refresh-tok"}'`,
  leaky: `url=$(cat); if [ "$url" = badjson.example ]; then printf '{"Secret":"${SECRET}"'; exit 0; fi; echo "denied ${SECRET}" >&2; echo "${SECRET}" >&2; exit 2`,
};

afterAll(() => rm(dir, { recursive: true, force: true }));

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'airgap-dockercfg-'));
  await mkdir(join(dir, 'bin'));
  for (const [name, body] of Object.entries(HELPERS)) {
    const path = join(dir, 'bin', `docker-credential-${name}`);
    await writeFile(path, `#!/bin/sh\n${body}\n`);
    await chmod(path, 0o755);
  }
});

/** Writes `config` (object or raw text) to a fresh DOCKER_CONFIG dir and returns options pointing at it. */
async function withConfig(config: unknown, extraEnv: NodeJS.ProcessEnv = {}): Promise<DockerConfigOptions & { file: string }> {
  const cfgDir = join(dir, `cfg${++n}`);
  await mkdir(cfgDir);
  const file = join(cfgDir, 'config.json');
  await writeFile(file, typeof config === 'string' ? config : JSON.stringify(config));
  return { file, env: { PATH: `${dir}/bin:/usr/bin:/bin`, HOME: dir, DOCKER_CONFIG: cfgDir, ...extraEnv } };
}

async function failure(p: Promise<unknown>): Promise<string> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(isOciError(err, 'UNAUTHORIZED'), String(err)).toBe(true);
  const msg = (err as Error).message;
  expect(msg).not.toContain('\n');
  messages.push(msg);
  return msg;
}

describe('dockerConfigCredential: auths', () => {
  it('decodes auth, splitting at the first colon so the password may contain colons', async () => {
    const o = await withConfig({ auths: { 'reg.example:5000': { auth: b64(`alice:${SECRET}:with:colons`) } } });
    expect(await dockerConfigCredential('reg.example:5000', o)).toEqual({ username: 'alice', password: `${SECRET}:with:colons` });
  });

  it('reads separate username/password fields', async () => {
    const o = await withConfig({ auths: { 'reg.example': { username: 'bob', password: 'pw' } } });
    expect(await dockerConfigCredential('reg.example', o)).toEqual({ username: 'bob', password: 'pw' });
  });

  it('normalises scheme- and path-prefixed keys', async () => {
    const o = await withConfig({
      auths: { 'https://a.example': { auth: b64('a:1') }, 'http://b.example:5000/v1/': { auth: b64('b:2') } },
    });
    expect(await dockerConfigCredential('a.example', o)).toEqual({ username: 'a', password: '1' });
    expect(await dockerConfigCredential('b.example:5000', o)).toEqual({ username: 'b', password: '2' });
    expect(await dockerConfigCredential('b.example', o)).toBeUndefined(); // the port is part of the host
  });

  it('maps every Docker Hub alias to any Hub key', async () => {
    for (const key of ['https://index.docker.io/v1/', 'docker.io', 'index.docker.io']) {
      const o = await withConfig({ auths: { [key]: { auth: b64('hub:pw') } } });
      for (const reg of ['docker.io', 'index.docker.io', 'registry-1.docker.io']) {
        expect(await dockerConfigCredential(reg, o), `${key} / ${reg}`).toEqual({ username: 'hub', password: 'pw' });
      }
    }
  });

  it('returns an identity token as <token>', async () => {
    const o = await withConfig({ auths: { 'reg.example': { auth: b64('me:'), identitytoken: 'idtok' } } });
    expect(await dockerConfigCredential('reg.example', o)).toEqual({ username: '<token>', password: 'idtok' });
  });

  it('is undefined for an empty entry, an unknown registry, and no config at all', async () => {
    const o = await withConfig({ auths: { 'reg.example': {} } });
    expect(await dockerConfigCredential('reg.example', o)).toBeUndefined();
    expect(await dockerConfigCredential('other.example', o)).toBeUndefined();
    const empty = await mkdtemp(join(dir, 'home-'));
    expect(await dockerConfigCredential('reg.example', { env: { HOME: empty, PATH: '/usr/bin' } })).toBeUndefined();
  });
});

describe('dockerConfigCredential: files', () => {
  it('uses an explicit authFile and refuses a missing one', async () => {
    const o = await withConfig({ auths: { 'reg.example': { auth: b64('x:y') } } });
    expect(await dockerConfigCredential('reg.example', { authFile: o.file, env: { PATH: '' } })).toEqual({ username: 'x', password: 'y' });
    const msg = await failure(dockerConfigCredential('reg.example', { authFile: join(dir, 'nope.json') }));
    expect(msg).toContain(join(dir, 'nope.json'));
  });

  it('finds ~/.docker/config.json via homeDir', async () => {
    const home = await mkdtemp(join(dir, 'home-'));
    await mkdir(join(home, '.docker'));
    await writeFile(join(home, '.docker', 'config.json'), JSON.stringify({ auths: { 'reg.example': { auth: b64('h:p') } } }));
    expect(await dockerConfigCredential('reg.example', { homeDir: home, env: {} })).toEqual({ username: 'h', password: 'p' });
  });

  it('falls back to REGISTRY_AUTH_FILE, then $XDG_RUNTIME_DIR/containers/auth.json', async () => {
    const home = await mkdtemp(join(dir, 'home-'));
    const authFile = join(home, 'auth.json');
    await writeFile(authFile, JSON.stringify({ auths: { 'reg.example': { auth: b64('podman:pw') } } }));
    expect(await dockerConfigCredential('reg.example', { env: { HOME: home, REGISTRY_AUTH_FILE: authFile } })).toEqual({ username: 'podman', password: 'pw' });
    await mkdir(join(home, 'run', 'containers'), { recursive: true });
    await writeFile(join(home, 'run', 'containers', 'auth.json'), JSON.stringify({ auths: { 'reg.example': { auth: b64('xdg:pw') } } }));
    expect(await dockerConfigCredential('reg.example', { env: { HOME: home, XDG_RUNTIME_DIR: join(home, 'run') } })).toEqual({ username: 'xdg', password: 'pw' });
  });

  it('reports malformed JSON by file name without quoting the content', async () => {
    const o = await withConfig(`{"auths": {"reg.example": {"auth": "${b64(`u:${SECRET}`)}" ${SECRET}`);
    const msg = await failure(dockerConfigCredential('reg.example', o));
    expect(msg).toContain(o.file);
    expect(msg).not.toContain(SECRET);
  });
});

describe('dockerConfigCredential: credential helpers', () => {
  it('runs the helper with the registry host, or the Hub URL, on stdin', async () => {
    const o = await withConfig({ credHelpers: { 'reg.example:5000': 'good', 'docker.io': 'good' } });
    expect(await dockerConfigCredential('reg.example:5000', o)).toEqual({ username: 'good-user', password: 'good-pass' });
    expect(await dockerConfigCredential('registry-1.docker.io', o)).toEqual({ username: 'good-user', password: 'good-pass' });
    const calls = await readFile(join(dir, 'calls'), 'utf8');
    expect(calls).toContain('good reg.example:5000\n');
    expect(calls).toContain('good https://index.docker.io/v1/\n');
  });

  it('prefers credHelpers over credsStore over auths', async () => {
    const auths = { 'a.example': { auth: b64('file:pw') }, 'b.example': { auth: b64('file:pw') } };
    const o = await withConfig({ credHelpers: { 'a.example': 'good' }, credsStore: 'store', auths });
    expect(await dockerConfigCredential('a.example', o)).toEqual({ username: 'good-user', password: 'good-pass' });
    expect(await dockerConfigCredential('b.example', o)).toEqual({ username: 'store-user', password: 'store-pass' });
    const plain = await withConfig({ auths });
    expect(await dockerConfigCredential('b.example', plain)).toEqual({ username: 'file', password: 'pw' });
  });

  it('falls back to auths when a helper has no credentials, else undefined', async () => {
    const o = await withConfig({ credHelpers: { 'a.example': 'notfound' }, credsStore: 'notfound', auths: { 'b.example': { auth: b64('file:pw') } } });
    expect(await dockerConfigCredential('a.example', o)).toBeUndefined();
    expect(await dockerConfigCredential('b.example', o)).toEqual({ username: 'file', password: 'pw' });
    const h = await withConfig({ credHelpers: { 'a.example': 'notfound' }, auths: { 'a.example': { auth: b64('file:pw') } } });
    expect(await dockerConfigCredential('a.example', h)).toEqual({ username: 'file', password: 'pw' });
  });

  it('passes an identity token from a helper through as <token>', async () => {
    const o = await withConfig({ credsStore: 'token' });
    expect(await dockerConfigCredential('reg.example', o)).toEqual({ username: '<token>', password: 'refresh-tok' });
  });

  it('names a missing helper, the registry and the file', async () => {
    // PATH without /usr/bin: some machines really have docker-credential-gcloud there.
    const o = await withConfig({ credHelpers: { 'us-docker.pkg.dev': 'gcloud' } }, { PATH: `${dir}/bin` });
    expect(await failure(dockerConfigCredential('us-docker.pkg.dev', o))).toBe(
      `docker-credential-gcloud not found on PATH (configured in credHelpers for us-docker.pkg.dev in ${o.file})`,
    );
    const s = await withConfig({ credsStore: 'desktop' });
    expect(await failure(dockerConfigCredential('reg.example', s))).toMatch(/^docker-credential-desktop not found on PATH \(configured as credsStore/);
  });

  it('reports a failing helper with its exit code and first stderr line', async () => {
    const o = await withConfig({ credsStore: 'broken' });
    const msg = await failure(dockerConfigCredential('reg.example', o));
    expect(msg).toMatch(/^docker-credential-broken .*exit code 3: keychain is locked$/);
  });

  it('never repeats what a helper printed about its secret', async () => {
    const o = await withConfig({ credsStore: 'leaky' });
    expect(await failure(dockerConfigCredential('reg.example', o))).toMatch(/exit code 2: denied \[redacted\]$/);
    expect(await failure(dockerConfigCredential('badjson.example', o))).toMatch(/not JSON$/);
  });
});

describe('dockerConfigCredential: secrecy', () => {
  it('no error message seen above contains a secret or an auth value', () => {
    expect(messages.length).toBeGreaterThanOrEqual(7);
    for (const m of messages) {
      expect(m).not.toContain(SECRET);
      expect(m).not.toContain(b64(`u:${SECRET}`));
    }
  });
});
