import { resolve as resolvePath } from 'node:path';
import { OciError } from './errors.ts';
import { parseReference, type Reference } from './reference.ts';

/**
 * A copy endpoint in skopeo's syntax: `docker://REF`, `oci:DIR[:REF]`, or (read-only)
 * `oci-archive:FILE[:REF]`, a tar of an image layout read in place by byte offset.
 */
export type Location =
  | { kind: 'docker'; ref: Reference; text: string }
  | { kind: 'oci'; dir: string; ref?: string; text: string }
  | { kind: 'oci-archive'; file: string; ref?: string; text: string };

// OCI annotations.md: the characters a ref name may use.
const REF_NAME_RE = /^[A-Za-z0-9._:@/+-]+$/;

export function parseLocation(text: string): Location {
  if (text.startsWith('docker://')) return { kind: 'docker', ref: parseReference(text.slice('docker://'.length)), text };
  for (const kind of ['oci', 'oci-archive'] as const) {
    if (!text.startsWith(`${kind}:`)) continue;
    // As skopeo: the path ends at the first colon; the rest (which may hold colons) is the ref.
    const rest = text.slice(kind.length + 1);
    const colon = rest.indexOf(':');
    const path = colon < 0 ? rest : rest.slice(0, colon);
    const ref = colon < 0 ? undefined : rest.slice(colon + 1);
    if (!path) throw new OciError('BAD_REFERENCE', `"${text}" names no ${kind === 'oci' ? 'directory' : 'file'}; use ${kind}:PATH[:REF]`);
    if (ref !== undefined && !REF_NAME_RE.test(ref)) throw new OciError('BAD_REFERENCE', `"${ref}" is not a valid layout reference name (letters, digits and ._:@/+-)`);
    const opt = ref ? { ref } : {};
    return kind === 'oci' ? { kind, dir: resolvePath(path), ...opt, text } : { kind, file: resolvePath(path), ...opt, text };
  }
  throw new OciError('BAD_REFERENCE', `"${text.slice(0, 200)}" is not a location: use docker://HOST/REPO:TAG, oci:DIR[:REF] or oci-archive:FILE[:REF]`);
}
