import { SUMS_PATH, type SplitManifest } from './manifest.ts';
import { PARTS_DIR } from './volumes.ts';

const q = (p: string): string => JSON.stringify(p);

/**
 * What a split bundle.json says about its volumes must add up before any volume is trusted: each
 * volume lists its SHA256SUMS first, then entries stored nowhere else; every data entry is stored
 * exactly once, whole (same size and sha256) or as pieces named `parts/<path>/<n>` that tile it
 * in volume order. Returns the first problem, or undefined.
 */
export function checkSplitLayout(m: SplitManifest): string | undefined {
  const entries = new Map(m.entries.map((e) => [e.path, e]));
  /** Bytes of each entry stored so far, in volume order. */
  const stored = new Map<string, number>();
  const whole = new Set<string>();
  const names = new Set<string>();
  for (const [k, v] of m.volumes.list.entries()) {
    const where = `volume ${k + 1}`;
    const [sums, ...rest] = v.entries;
    if (sums?.path !== SUMS_PATH || sums.piece) return `${where} does not list its SHA256SUMS first`;
    for (const e of rest) {
      if (names.has(e.path) || e.path === SUMS_PATH) return `${where} lists ${q(e.path)}, which is stored more than once`;
      names.add(e.path);
      if (!e.piece) {
        const want = entries.get(e.path);
        if (!want) return `${where} lists ${q(e.path)}, which is not among the bundle's entries`;
        if (want.size !== e.size || want.sha256 !== e.sha256) return `${where} lists ${e.path} with another size or sha256 than the bundle's entries`;
        if (stored.has(e.path)) return `${e.path} is stored both whole and in pieces`;
        whole.add(e.path);
        stored.set(e.path, e.size);
        continue;
      }
      const of = e.piece.of;
      const want = entries.get(of);
      if (!want) return `${where} lists a piece of ${q(of)}, which is not among the bundle's entries`;
      const n = e.path.startsWith(`${PARTS_DIR}${of}/`) ? e.path.slice(PARTS_DIR.length + of.length + 1) : '';
      if (!/^[0-9]{3,}$/.test(n)) return `${where} names a piece of ${of} ${q(e.path)}; pieces are named ${PARTS_DIR}${of}/NNN`;
      if (whole.has(of)) return `${of} is stored both whole and in pieces`;
      const at = stored.get(of) ?? 0;
      if (e.piece.offset !== at) return `${where} lists the piece of ${of} at byte ${e.piece.offset}, but the pieces before it end at byte ${at}`;
      if (at + e.size > want.size) return `the pieces of ${of} run past its ${want.size} bytes`;
      stored.set(of, at + e.size);
    }
  }
  for (const e of m.entries) {
    const have = stored.get(e.path);
    if (have === undefined) return `${e.path} is stored in none of the ${m.volumes.list.length} volumes`;
    if (have !== e.size) return `the pieces of ${e.path} hold ${have} of its ${e.size} bytes`;
  }
  return undefined;
}
