import { resolve as resolvePath } from 'node:path';
import { describe, expect, it } from 'vitest';
import { isOciError } from '../../src/oci/errors.ts';
import { parseLocation } from '../../src/oci/location.ts';
import { formatPlatform, parsePlatform, platformMatches } from '../../src/oci/platform.ts';
import { apiHost, formatReference, parseReference, referenceSelector } from '../../src/oci/reference.ts';

const DIGEST = `sha256:${'ab'.repeat(32)}`;

function badReference(fn: () => unknown): string {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(isOciError(caught, 'BAD_REFERENCE'), String(caught)).toBe(true);
  const msg = (caught as Error).message;
  expect(msg).not.toContain('\n');
  return msg;
}

describe('parseReference', () => {
  it('expands a bare Docker Hub name to docker.io/library/NAME:latest', () => {
    expect(parseReference('nats')).toEqual({ registry: 'docker.io', repository: 'library/nats', tag: 'latest' });
  });

  it('adds library/ for docker.io single names and folds the index.docker.io alias', () => {
    expect(parseReference('docker.io/nats')).toEqual({ registry: 'docker.io', repository: 'library/nats', tag: 'latest' });
    expect(parseReference('index.docker.io/library/nats:2.10')).toEqual({ registry: 'docker.io', repository: 'library/nats', tag: '2.10' });
    expect(parseReference('registry-1.docker.io/bitnami/redis:7')).toEqual({ registry: 'docker.io', repository: 'bitnami/redis', tag: '7' });
    expect(apiHost('docker.io')).toBe('registry-1.docker.io');
  });

  it('keeps the port of a host:port registry apart from the tag', () => {
    expect(parseReference('localhost:5000/a/b:t')).toEqual({ registry: 'localhost:5000', repository: 'a/b', tag: 't' });
    expect(parseReference('127.0.0.1:5000/a')).toEqual({ registry: '127.0.0.1:5000', repository: 'a', tag: 'latest' });
    expect(parseReference('localhost/a')).toEqual({ registry: 'localhost', repository: 'a', tag: 'latest' });
    expect(apiHost('localhost:5000')).toBe('localhost:5000');
  });

  it('parses an Artifact Registry path with several components', () => {
    const ref = parseReference('us-docker.pkg.dev/cartesia-external/self-serve/cartesia-api:sonic-20251118');
    expect(ref).toEqual({ registry: 'us-docker.pkg.dev', repository: 'cartesia-external/self-serve/cartesia-api', tag: 'sonic-20251118' });
  });

  it('keeps both tag and digest, and the digest wins as the selector', () => {
    const ref = parseReference(`localhost:5000/a/b:t@${DIGEST}`);
    expect(ref).toEqual({ registry: 'localhost:5000', repository: 'a/b', tag: 't', digest: DIGEST });
    expect(referenceSelector(ref)).toBe(DIGEST);
    expect(referenceSelector(parseReference('localhost:5000/a/b:t'))).toBe('t');
  });

  it('does not add the default tag to a digest-only reference', () => {
    expect(parseReference(`nats@${DIGEST}`)).toEqual({ registry: 'docker.io', repository: 'library/nats', digest: DIGEST });
    expect(parseReference('quay.io/a/b', '')).toEqual({ registry: 'quay.io', repository: 'a/b' });
  });

  it('keeps the tag absent when defaultTag is null', () => {
    expect(parseReference('quay.io/a/b', null)).toEqual({ registry: 'quay.io', repository: 'a/b' });
  });

  it('round-trips through formatReference', () => {
    for (const text of [
      'docker.io/library/nats:latest',
      'localhost:5000/a/b:t',
      `us-docker.pkg.dev/cartesia-external/self-serve/cartesia-api:sonic-20251118@${DIGEST}`,
      `127.0.0.1:5000/a@${DIGEST}`,
      '[::1]:5000/x/y:z',
    ]) {
      expect(formatReference(parseReference(text))).toBe(text);
    }
    expect(formatReference(parseReference('nats'))).toBe('docker.io/library/nats:latest');
  });

  it.each([
    ['uppercase path', 'localhost:5000/Cartesia/api:t'],
    ['uppercase single name', 'Nats'],
    ['bad tag (leading dot)', 'nats:.bad'],
    ['bad tag (too long)', `nats:${'a'.repeat(129)}`],
    ['bad tag (slash-free but illegal char)', 'nats:a+b'],
    ['bad digest (short)', 'nats@sha256:abc'],
    ['bad digest (uppercase hex)', `nats@sha256:${'AB'.repeat(32)}`],
    ['bad digest (other algorithm)', `nats@sha512:${'ab'.repeat(64)}`],
    ['empty', ''],
    ['blank', '   '],
    ['empty path component', 'localhost:5000/a//b'],
    ['trailing slash', 'localhost:5000/'],
    ['bad host', 'bad_host.example:5000/a'],
  ])('rejects %s as BAD_REFERENCE', (_what, input) => {
    const msg = badReference(() => parseReference(input));
    expect(msg).toMatch(/invalid image reference/);
  });

  it('names the offending part in the message', () => {
    expect(badReference(() => parseReference('nats:bad!tag'))).toContain('"bad!tag" is not a valid tag');
    expect(badReference(() => parseReference('quay.io/Upper/x'))).toContain('"Upper"');
  });
});

describe('parseLocation', () => {
  it('splits oci:DIR:REF at the first colon, so the ref may hold colons', () => {
    const loc = parseLocation('oci:/tmp/x:cartesia-api:sonic-1');
    expect(loc).toEqual({ kind: 'oci', dir: '/tmp/x', ref: 'cartesia-api:sonic-1', text: 'oci:/tmp/x:cartesia-api:sonic-1' });
  });

  it('takes oci:DIR without a ref, resolving a relative directory', () => {
    const loc = parseLocation('oci:layout');
    expect(loc.kind).toBe('oci');
    expect(loc).not.toHaveProperty('ref');
    expect(loc.kind === 'oci' && loc.dir).toBe(resolvePath('layout'));
  });

  it('parses docker:// through parseReference', () => {
    const loc = parseLocation('docker://localhost:5000/a/b:t');
    expect(loc).toEqual({ kind: 'docker', ref: { registry: 'localhost:5000', repository: 'a/b', tag: 't' }, text: 'docker://localhost:5000/a/b:t' });
    const hub = parseLocation('docker://nats');
    expect(hub.kind === 'docker' && formatReference(hub.ref)).toBe('docker.io/library/nats:latest');
  });

  it.each([
    ['no transport', '/tmp/x'],
    ['unknown transport', 'dir:/tmp/x'],
    ['docker without //', 'docker:nats'],
    ['oci without directory', 'oci::ref'],
    ['bad ref name', 'oci:/tmp/x:has space'],
    ['bad docker reference', 'docker://Upper/Case'],
  ])('rejects %s as BAD_REFERENCE', (_what, input) => {
    badReference(() => parseLocation(input));
  });
});

describe('parsePlatform / platformMatches', () => {
  it('parses os/arch and os/arch/variant, and formats them back', () => {
    expect(parsePlatform('linux/amd64')).toEqual({ os: 'linux', architecture: 'amd64' });
    expect(parsePlatform('linux/arm64/v8')).toEqual({ os: 'linux', architecture: 'arm64', variant: 'v8' });
    expect(formatPlatform(parsePlatform('linux/arm64/v8'))).toBe('linux/arm64/v8');
    expect(formatPlatform({ os: 'linux', architecture: 'amd64' })).toBe('linux/amd64');
  });

  it.each(['linux', 'linux/', '/amd64', 'linux/arm64/v8/extra', ''])('rejects "%s"', (value) => {
    badReference(() => parsePlatform(value));
  });

  it('treats arm64 without a variant as v8, both ways', () => {
    const v8 = { os: 'linux', architecture: 'arm64', variant: 'v8' };
    const bare = { os: 'linux', architecture: 'arm64' };
    expect(platformMatches(parsePlatform('linux/arm64'), v8)).toBe(true);
    expect(platformMatches(parsePlatform('linux/arm64'), bare)).toBe(true);
    expect(platformMatches(parsePlatform('linux/arm64/v8'), bare)).toBe(true);
    expect(platformMatches(parsePlatform('linux/arm64/v8'), v8)).toBe(true);
  });

  it('refuses a different os, architecture or asked-for variant, and entries without a platform', () => {
    expect(platformMatches(parsePlatform('linux/arm64/v9'), { os: 'linux', architecture: 'arm64' })).toBe(false);
    expect(platformMatches(parsePlatform('linux/arm/v7'), { os: 'linux', architecture: 'arm', variant: 'v6' })).toBe(false);
    expect(platformMatches(parsePlatform('linux/arm/v7'), { os: 'linux', architecture: 'arm' })).toBe(false);
    expect(platformMatches(parsePlatform('linux/amd64'), { os: 'linux', architecture: 'arm64', variant: 'v8' })).toBe(false);
    expect(platformMatches(parsePlatform('linux/amd64'), { os: 'windows', architecture: 'amd64' })).toBe(false);
    expect(platformMatches(parsePlatform('linux/amd64'), undefined)).toBe(false);
    // Asking without a variant accepts any variant of that architecture.
    expect(platformMatches(parsePlatform('linux/arm'), { os: 'linux', architecture: 'arm', variant: 'v7' })).toBe(true);
  });
});
