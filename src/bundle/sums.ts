import { OciError } from '../oci/errors.ts';

export interface SumsLine {
  path: string;
  sha256: string;
}

/**
 * A SHA256SUMS file in coreutils format (`<hex>  <path>\n`), so `sha256sum -c` checks an
 * extracted bundle. coreutils escapes names with a newline, carriage return or backslash (and then
 * prefixes the line with `\`); rather than reproduce that, such names are refused.
 */
export function sha256sumsText(entries: readonly SumsLine[]): string {
  let out = '';
  for (const { path, sha256 } of entries) {
    if (path === '' || /[\n\r\\\0]/.test(path)) {
      throw new OciError('LAYOUT', `cannot list ${JSON.stringify(path)} in SHA256SUMS: empty, or contains a newline, carriage return, backslash or NUL`);
    }
    if (!/^[a-f0-9]{64}$/.test(sha256)) throw new OciError('BAD_DIGEST', `SHA256SUMS: ${path} has no valid sha256 (${JSON.stringify(sha256)})`);
    out += `${sha256}  ${path}\n`;
  }
  return out;
}
