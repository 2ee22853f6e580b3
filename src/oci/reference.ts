import { isDigest } from './digest.ts';
import { OciError } from './errors.ts';

/** A parsed image reference: `host[:port]/path/name[:tag][@digest]`, normalised. */
export interface Reference {
  /** Host and optional port; Docker Hub is `docker.io`. */
  registry: string;
  /** Path inside the registry; Docker Hub's single names get `library/`. */
  repository: string;
  tag?: string;
  digest?: string;
}

export const DOCKER_HUB = 'docker.io';
const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);

// Distribution spec grammar: path components and tags.
const COMPONENT_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG_RE = /^[\w][\w.-]{0,127}$/;
const HOST_RE = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::\d{1,5})?$/;

const bad = (input: string, why: string) => new OciError('BAD_REFERENCE', `invalid image reference "${input.slice(0, 200)}": ${why}`);

/** The first component is a registry host when it looks like one (as docker decides). */
const looksLikeHost = (s: string) => s.includes('.') || s.includes(':') || s === 'localhost' || s.startsWith('[');

/**
 * Parses a reference. Without a tag or digest, `defaultTag` is used ('latest' as docker does;
 * pass null to keep it absent).
 */
export function parseReference(input: string, defaultTag: string | null = 'latest'): Reference {
  let rest = input.trim();
  if (!rest) throw bad(input, 'it is empty');
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!isDigest(digest)) throw bad(input, `"${digest.slice(0, 80)}" is not a sha256 digest`);
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG_RE.test(tag)) throw bad(input, `"${tag}" is not a valid tag`);
  }
  const parts = rest.split('/');
  let registry = DOCKER_HUB;
  if (parts.length > 1 && looksLikeHost(parts[0]!)) registry = parts.shift()!;
  if (!HOST_RE.test(registry)) throw bad(input, `"${registry}" is not a valid registry host`);
  if (DOCKER_HUB_ALIASES.has(registry.toLowerCase())) registry = DOCKER_HUB;
  if (registry === DOCKER_HUB && parts.length === 1) parts.unshift('library');
  for (const p of parts) {
    if (!COMPONENT_RE.test(p)) throw bad(input, `repository path component "${p}" must be lowercase letters, digits and separators`);
  }
  const repository = parts.join('/');
  if (repository.length > 255) throw bad(input, 'the repository name is longer than 255 characters');
  if (!tag && !digest && defaultTag) tag = defaultTag;
  return { registry, repository, ...(tag ? { tag } : {}), ...(digest ? { digest } : {}) };
}

export function formatReference(ref: Reference): string {
  return `${ref.registry}/${ref.repository}${ref.tag ? `:${ref.tag}` : ''}${ref.digest ? `@${ref.digest}` : ''}`;
}

/** Where the registry's API lives: Docker Hub's API host differs from its name. */
export const apiHost = (registry: string): string => (registry === DOCKER_HUB ? 'registry-1.docker.io' : registry);

/** What to ask a store for: the digest when pinned (it wins over the tag), else the tag. */
export const referenceSelector = (ref: Reference): string => ref.digest ?? ref.tag ?? 'latest';
