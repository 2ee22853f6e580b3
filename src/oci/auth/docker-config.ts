import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { delimiter, join } from 'node:path';
import { OciError } from '../errors.ts';

/**
 * Registry credentials as the docker CLI, skopeo and crane find them. When the registry handed out
 * an identity (refresh) token instead of a password, `username` is the literal `'<token>'` and
 * `password` is the token — the same convention credential helpers use — so the token client must
 * send it as a `refresh_token` grant rather than basic auth.
 */
export interface Credential {
  username: string;
  password: string;
}

export interface DockerConfigOptions {
  /** Use this file only (like `--authfile`); it must exist. */
  authFile?: string;
  /** Environment for file lookup and credential helpers; defaults to `process.env`. */
  env?: NodeJS.ProcessEnv;
  /** Defaults to `env.HOME`, then the OS home directory. */
  homeDir?: string;
}

const HUB_KEY = 'https://index.docker.io/v1/';
const HUB_HOSTS = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);
const HELPER_TIMEOUT_MS = 30_000;

interface ConfigFile {
  path: string;
  auths: Record<string, unknown>;
  credHelpers: Record<string, unknown>;
  credsStore: string | undefined;
}

const unauthorized = (message: string): OciError => new OciError('UNAUTHORIZED', message);

/** Undefined when no credential is configured for `registry` (host[:port], e.g. `us-docker.pkg.dev`, `127.0.0.1:5000`, `docker.io`). */
export async function dockerConfigCredential(registry: string, opts: DockerConfigOptions = {}): Promise<Credential | undefined> {
  const env = opts.env ?? process.env;
  const config = await loadConfig(opts, env);
  if (!config) return undefined;
  const host = hostOf(registry);
  const isHub = HUB_HOSTS.has(host);
  // Helpers are asked with the URL `docker login` stored the credential under.
  const serverUrl = isHub ? HUB_KEY : host;

  // A per-registry helper replaces credsStore for that registry (as in docker); either may fall back to auths.
  const helper = lookup(config.credHelpers, registry, host, isHub);
  if (typeof helper === 'string' && helper !== '') {
    const cred = await runHelper(helper, serverUrl, env, `in credHelpers for ${registry} in ${config.path}`);
    if (cred) return cred;
  } else if (config.credsStore) {
    const cred = await runHelper(config.credsStore, serverUrl, env, `as credsStore for ${registry} in ${config.path}`);
    if (cred) return cred;
  }
  const entry = lookup(config.auths, registry, host, isHub);
  return entry === undefined ? undefined : fromAuthEntry(entry, `${registry} in ${config.path}`);
}

/** `https://host/v1/` → `host`; keys in `auths` are written every which way by different tools. */
function hostOf(key: string): string {
  return key.trim().toLowerCase().replace(/^[a-z][a-z0-9+.-]*:\/\//, '').split('/')[0] ?? '';
}

/** Exact key first (docker's own order), then any key naming the same host; all Hub aliases are one host. */
function lookup(map: Record<string, unknown>, registry: string, host: string, isHub: boolean): unknown {
  for (const key of isHub ? [HUB_KEY, registry] : [registry]) if (Object.hasOwn(map, key)) return map[key];
  for (const [key, value] of Object.entries(map)) {
    const h = hostOf(key);
    if (h === host || (isHub && HUB_HOSTS.has(h))) return value;
  }
  return undefined;
}

function fromAuthEntry(entry: unknown, where: string): Credential | undefined {
  if (typeof entry !== 'object' || entry === null) throw unauthorized(`auth entry for ${where} is not an object`);
  const e = entry as Record<string, unknown>;
  // An identity token wins: docker stores it next to the username with an empty password.
  if (typeof e.identitytoken === 'string' && e.identitytoken !== '') return { username: '<token>', password: e.identitytoken };
  if (typeof e.auth === 'string' && e.auth !== '') {
    const decoded = Buffer.from(e.auth, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) throw unauthorized(`auth entry for ${where} is malformed (expected base64 of user:password)`);
    return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
  }
  if (typeof e.username === 'string' && typeof e.password === 'string' && e.username !== '') {
    return { username: e.username, password: e.password };
  }
  return undefined; // `{}`: docker keeps the secret in credsStore and writes an empty entry
}

async function loadConfig(opts: DockerConfigOptions, env: NodeJS.ProcessEnv): Promise<ConfigFile | undefined> {
  if (opts.authFile !== undefined) {
    const text = await readIfExists(opts.authFile);
    if (text === undefined) throw unauthorized(`auth file ${opts.authFile} not found`);
    return parseConfig(opts.authFile, text);
  }
  const home = opts.homeDir ?? env.HOME ?? homedir();
  // DOCKER_CONFIG replaces ~/.docker rather than adding to it, as in the docker CLI.
  const candidates = [env.DOCKER_CONFIG ? join(env.DOCKER_CONFIG, 'config.json') : join(home, '.docker', 'config.json')];
  if (env.REGISTRY_AUTH_FILE) candidates.push(env.REGISTRY_AUTH_FILE);
  if (env.XDG_RUNTIME_DIR) candidates.push(join(env.XDG_RUNTIME_DIR, 'containers', 'auth.json'));
  for (const path of candidates) {
    const text = await readIfExists(path);
    if (text !== undefined) return parseConfig(path, text);
  }
  return undefined;
}

async function readIfExists(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    throw unauthorized(`cannot read auth file ${path}: ${code ?? 'unknown error'}`);
  }
}

function parseConfig(path: string, text: string): ConfigFile {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    // JSON.parse messages quote the surrounding text, which may be a secret: say only where.
    throw unauthorized(`auth file ${path} is not valid JSON`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw unauthorized(`auth file ${path} is not a JSON object`);
  const r = raw as Record<string, unknown>;
  const obj = (name: string): Record<string, unknown> => {
    const v = r[name];
    if (v === undefined || v === null) return {};
    if (typeof v !== 'object' || Array.isArray(v)) throw unauthorized(`auth file ${path}: "${name}" is not an object`);
    return v as Record<string, unknown>;
  };
  const credsStore = r.credsStore;
  if (credsStore !== undefined && typeof credsStore !== 'string') throw unauthorized(`auth file ${path}: "credsStore" is not a string`);
  return { path, auths: obj('auths'), credHelpers: obj('credHelpers'), credsStore: credsStore || undefined };
}

async function findOnPath(bin: string, env: NodeJS.ProcessEnv): Promise<string | undefined> {
  for (const dir of (env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, bin);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

/** Runs `docker-credential-<name> get`. Undefined when the helper has nothing for this server. */
async function runHelper(name: string, serverUrl: string, env: NodeJS.ProcessEnv, configured: string): Promise<Credential | undefined> {
  const bin = `docker-credential-${name}`;
  // The name comes from a file; refuse anything that would turn it into a path.
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name)) throw unauthorized(`invalid credential helper name "${name.slice(0, 40)}" (configured ${configured})`);
  const path = await findOnPath(bin, env);
  if (!path) throw unauthorized(`${bin} not found on PATH (configured ${configured})`);

  const res = await new Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string; timedOut: boolean }>((resolve, reject) => {
    const child = spawn(path, ['get'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    // Settle on the timeout itself: a grandchild holding the pipes open would delay 'close' forever.
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      child.stdout.destroy(); // drop our pipe ends so a lingering grandchild cannot keep this process alive
      child.stderr.destroy();
      resolve({ code: null, signal: 'SIGKILL', stdout: '', stderr: '', timedOut: true });
    }, HELPER_TIMEOUT_MS);
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.stdin.on('error', () => {}); // a helper that exits without reading stdin is judged by its exit code
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(unauthorized(`${bin} could not be started (configured ${configured}): ${(err as NodeJS.ErrnoException).code ?? 'error'}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut: false });
    });
    child.stdin.end(serverUrl);
  });

  const who = `${bin} (configured ${configured})`;
  if (res.timedOut) throw unauthorized(`${who} did not answer within ${HELPER_TIMEOUT_MS / 1000} s`);
  if (res.code !== 0) {
    // docker-credential-helpers print this error on stdout; we only test for it, never repeat stdout.
    if (/credentials not found/i.test(res.stdout + res.stderr)) return undefined;
    const status = res.code === null ? `signal ${res.signal}` : `exit code ${res.code}`;
    throw unauthorized(`${who} failed with ${status}: ${firstLine(res.stderr)}`);
  }
  let answer: unknown;
  try {
    answer = JSON.parse(res.stdout);
  } catch {
    throw unauthorized(`${who} printed output that is not JSON`);
  }
  const a = (answer ?? {}) as Record<string, unknown>;
  if (typeof a.Secret !== 'string' || typeof a.Username !== 'string') throw unauthorized(`${who} printed JSON without Username and Secret`);
  if (a.Secret === '') return undefined; // some helpers answer an empty record rather than an error
  return { username: a.Username, password: a.Secret };
}

/** First stderr line, bounded, with token-like runs blanked in case a helper logs what it holds. */
function firstLine(stderr: string): string {
  const line = stderr.split(/\r?\n/).find((l) => l.trim() !== '')?.trim() ?? '';
  if (!line) return '(no stderr)';
  return line.replace(/[A-Za-z0-9+/=_.~-]{32,}/g, '[redacted]').slice(0, 200);
}
