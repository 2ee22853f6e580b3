/**
 * Opens a whole bundle: a single-file bundle as it is, or every volume of a split one, found
 * beside the volume given (or in the directory given) by their names NAME.volNNN.tar. Each volume
 * is checked as a tar of its own; which volume it is comes from its contents, never its name.
 * A missing, damaged, misnamed or foreign volume is named, with its number.
 */
import { readdir, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { manifestSha256Of } from './manifest.ts';
import { BundleError, BundleTar, isSplit, openBundleTar, OpenedBundle } from './reader.ts';
import { parseVolumeFile, volumeFile } from './volumes.ts';

const bad = (message: string): BundleError => new BundleError('VERIFY', message);

/** A bundle file, any volume of a split bundle, or a directory holding one split bundle's volumes. */
export async function openBundleSet(path: string): Promise<OpenedBundle> {
  const st = await stat(path).catch((err: NodeJS.ErrnoException) => {
    throw new BundleError('IO', `cannot read the bundle ${path}: ${err.code ?? err.message}`, { cause: err });
  });
  let dir: string;
  let name: string;
  if (st.isDirectory()) {
    dir = path;
    name = await onlySet(dir);
  } else {
    const given = await openBundleTar(path);
    if (given.volume === undefined) return new OpenedBundle(path, [given]);
    const parsed = parseVolumeFile(path);
    if (!parsed) throw bad(`${path} is volume ${given.volume} of a split bundle, but not named NAME.volNNN.tar, so the other volumes cannot be found; give their directory, or rename it as it was written`);
    dir = join(path, '..');
    name = parsed.name;
  }
  return new OpenedBundle(path, await openVolumes(dir, name));
}

/** The one bundle name with volumes in `dir`. */
async function onlySet(dir: string): Promise<string> {
  const names = new Set<string>();
  for (const f of await readdir(dir)) {
    const v = parseVolumeFile(f);
    if (v) names.add(v.name);
  }
  if (names.size === 0) throw bad(`${dir} holds no bundle volumes (NAME.vol001.tar, …); give a bundle file or a directory of volumes`);
  if (names.size > 1) throw bad(`${dir} holds volumes of ${names.size} bundles (${[...names].sort().join(', ')}); give the first volume of the one you mean`);
  return [...names][0]!;
}

/** The lowest-numbered volume in `dir` (of its one set), for a look at the set without opening it all. */
export async function firstVolumeIn(dir: string): Promise<string> {
  const name = await onlySet(dir);
  const files = (await readdir(dir)).filter((f) => parseVolumeFile(f)?.name === name);
  files.sort((a, b) => parseVolumeFile(a)!.number - parseVolumeFile(b)!.number);
  return join(dir, files[0]!);
}

/** Where each volume of `t`'s set should be (beside it, by name), and whether a file is there. */
export async function volumeFiles(t: BundleTar): Promise<{ number: number; file: string; present: boolean }[] | undefined> {
  const parsed = parseVolumeFile(t.file);
  if (!parsed || !isSplit(t.manifest)) return undefined;
  const count = t.manifest.volumes.list.length;
  const out = [];
  for (let n = 1; n <= count; n++) {
    const file = volumeFile(join(t.file, '..', `${parsed.name}.tar`), n, count);
    out.push({ number: n, file, present: await stat(file).then((s) => s.isFile(), () => false) });
  }
  return out;
}

type Opened = { file: string; tar: BundleTar } | { file: string; error: BundleError };

/** Opens every `name.volNNN.tar` in `dir`, then checks they are exactly the volumes of one bundle. */
async function openVolumes(dir: string, name: string): Promise<BundleTar[]> {
  const files = (await readdir(dir))
    .filter((f) => parseVolumeFile(f)?.name === name)
    .sort((a, b) => parseVolumeFile(a)!.number - parseVolumeFile(b)!.number)
    .map((f) => join(dir, f));
  const opened: Opened[] = [];
  for (const file of files) {
    try {
      opened.push({ file, tar: await openBundleTar(file) });
    } catch (err) {
      if (!(err instanceof BundleError) || err.code !== 'VERIFY') throw err;
      opened.push({ file, error: err });
    }
  }
  // The bundle.json most volumes carry is the set's; with no majority, no volume can be blamed.
  const groups = new Map<string, BundleTar[]>();
  for (const o of opened) {
    if (!('tar' in o) || !isSplit(o.tar.manifest)) continue;
    const id = manifestSha256Of(o.tar.manifestBytes);
    groups.set(id, [...(groups.get(id) ?? []), o.tar]);
  }
  const ranked = [...groups.values()].sort((a, b) => b.length - a.length);
  const reference = ranked[0];
  if (!reference) {
    const first = opened[0];
    throw first && 'error' in first ? bad(`${basename(first.file)}: ${first.error.message}`) : bad(`${join(dir, `${name}.vol001.tar`)} is not a volume of a split bundle`);
  }
  if (ranked[1] && ranked[1].length === reference.length) {
    throw bad(`${basename(reference[0]!.file)} and ${basename(ranked[1][0]!.file)} carry different bundle.json files: one is damaged or from another bundle; verify each alone to tell which`);
  }
  const m = reference[0]!.manifest;
  const count = isSplit(m) ? m.volumes.list.length : 0;
  const label = (n: number, file: string): string => `${basename(file)} (volume ${n} of ${count})`;
  const problems: { n: number; text: string }[] = [];
  const tars: BundleTar[] = [];
  for (let n = 1; n <= count; n++) {
    const file = volumeFile(join(dir, `${name}.tar`), n, count);
    const o = opened.find((x) => x.file === file);
    if (!o) problems.push({ n, text: `volume ${n} of ${count} is missing: there is no ${file}` });
    else if ('error' in o) problems.push({ n, text: `${label(n, file)}: ${o.error.message}` });
    else if (!reference.includes(o.tar)) problems.push({ n, text: `${label(n, file)} carries a different bundle.json than the other volumes: it is damaged or from another bundle` });
    else if (o.tar.volume !== n) problems.push({ n, text: `${basename(file)} holds volume ${o.tar.volume} of ${count}, not volume ${n}: renamed or mixed up` });
    else tars.push(o.tar);
  }
  const first = problems[0];
  if (first) {
    const more = problems.slice(1).map((p) => p.n);
    throw bad(more.length === 0 ? first.text : `${first.text} (and volume${more.length > 1 ? 's' : ''} ${more.join(', ')} too)`);
  }
  return tars;
}
