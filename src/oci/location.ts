import { resolve as resolvePath } from 'node:path';
import { OciError } from './errors.ts';
import { parseReference, type Reference } from './reference.ts';

/** A copy endpoint in skopeo's syntax: `docker://REF` or `oci:DIR[:REF]`. */
export type Location =
  | { kind: 'docker'; ref: Reference; text: string }
  | { kind: 'oci'; dir: string; ref?: string; text: string };

// OCI annotations.md: the characters a ref name may use.
const REF_NAME_RE = /^[A-Za-z0-9._:@/+-]+$/;

export function parseLocation(text: string): Location {
  if (text.startsWith('docker://')) return { kind: 'docker', ref: parseReference(text.slice('docker://'.length)), text };
  if (text.startsWith('oci:')) {
    // As skopeo: the directory ends at the first colon; the rest (which may hold colons) is the ref.
    const rest = text.slice('oci:'.length);
    const colon = rest.indexOf(':');
    const dir = colon < 0 ? rest : rest.slice(0, colon);
    const ref = colon < 0 ? undefined : rest.slice(colon + 1);
    if (!dir) throw new OciError('BAD_REFERENCE', `"${text}" names no directory; use oci:DIR[:REF]`);
    if (ref !== undefined && !REF_NAME_RE.test(ref)) throw new OciError('BAD_REFERENCE', `"${ref}" is not a valid layout reference name (letters, digits and ._:@/+-)`);
    return { kind: 'oci', dir: resolvePath(dir), ...(ref ? { ref } : {}), text };
  }
  throw new OciError('BAD_REFERENCE', `"${text.slice(0, 200)}" is not a location: use docker://HOST/REPO:TAG or oci:DIR[:REF]`);
}
