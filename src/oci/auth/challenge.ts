/** One authentication challenge from WWW-Authenticate (RFC 9110 §11.6.1). */
export interface Challenge {
  /** Lowercased: 'bearer', 'basic', … */
  scheme: string;
  params: Record<string, string>;
}

const TOKEN = /[!#$%&'*+.^_`|~0-9A-Za-z-]+/y;

/**
 * Parses a WWW-Authenticate value into its challenges. Several may share one header
 * (`Basic realm="x", Bearer realm="y",service="z"`); quoted values may hold commas and escapes.
 */
export function parseChallenges(value: string | string[] | undefined): Challenge[] {
  const input = Array.isArray(value) ? value.join(', ') : (value ?? '');
  const out: Challenge[] = [];
  let i = 0;
  const skip = (re: RegExp) => {
    while (i < input.length && re.test(input[i]!)) i++;
  };
  const token = (): string | undefined => {
    TOKEN.lastIndex = i;
    const m = TOKEN.exec(input);
    if (!m) return undefined;
    i += m[0].length;
    return m[0];
  };
  while (i < input.length) {
    skip(/[\s,]/);
    const scheme = token();
    if (!scheme) break;
    const challenge: Challenge = { scheme: scheme.toLowerCase(), params: {} };
    out.push(challenge);
    for (;;) {
      skip(/[\s,]/);
      const start = i;
      const name = token();
      if (!name) break;
      skip(/\s/);
      if (input[i] !== '=') {
        // A bare token starts the next challenge.
        i = start;
        break;
      }
      i++;
      skip(/\s/);
      let v = '';
      if (input[i] === '"') {
        i++;
        while (i < input.length && input[i] !== '"') {
          if (input[i] === '\\' && i + 1 < input.length) i++;
          v += input[i++];
        }
        i++;
      } else {
        v = token() ?? '';
      }
      challenge.params[name.toLowerCase()] = v;
    }
  }
  return out;
}
