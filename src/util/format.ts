/** Text for people (commands' tables); --json output keeps exact numbers instead. */

/** Bytes with a binary unit. */
export function human(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

/** Bytes in MiB with one decimal: progress lines, where a steady unit reads best. */
export const mib = (n: number): string => `${(n / 2 ** 20).toFixed(1)} MiB`;

/** Rows padded into columns (the first row is the header); the last column is not padded. */
export function table(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!))).join('  ').trimEnd());
}
