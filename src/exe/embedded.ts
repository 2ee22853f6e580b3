/**
 * oclif inside the single executable. The npm package lets oclif import each command by its path
 * (oclif.manifest.json); the executable has no files beside it, so the build generates an entry
 * that imports every command module statically and hands them here. oclif's "explicit" command
 * discovery then serves them from that map: same commands, flags, help and errors as the package.
 */
import { dirname } from 'node:path';
import { handle, Plugin, type Command, type Interfaces } from '@oclif/core';
import { main } from '../main.ts';
import { packageJson } from '../util/package-files.ts';

/** The command class of a module, as oclif picks it: the default export, else any export with run(). */
function commandClass(id: string, mod: Record<string, unknown>): Command.Class {
  const isCommand = (x: unknown): x is Command.Class => typeof x === 'function' && typeof (x as { run?: unknown }).run === 'function';
  const found = isCommand(mod.default) ? mod.default : Object.values(mod).find(isCommand);
  if (!found) throw new Error(`the built-in module for the command ${id} exports no command`);
  return found;
}

/** Runs the CLI with `modules` (command id → its module) as its only commands. */
export async function runEmbedded(modules: Record<string, Record<string, unknown>>): Promise<void> {
  try {
    const pkg = packageJson();
    const oclif = { ...(pkg.oclif as Record<string, unknown>), plugins: [], commands: { strategy: 'explicit', target: '(built in)', identifier: 'COMMANDS' } };
    const pjson = { ...pkg, oclif } as unknown as Interfaces.PJSON;
    const root = dirname(process.execPath);
    const plugin = new Plugin({ root, isRoot: true, pjson, ignoreManifest: true });
    // The explicit strategy would import `target` for this map; it is already here.
    Object.assign(plugin, { commandCache: Object.fromEntries(Object.entries(modules).map(([id, mod]) => [id, commandClass(id, mod)])) });
    await plugin.load();
    await main({ root, pjson, plugins: new Map([[plugin.name, plugin]]) });
  } catch (error) {
    await handle(error instanceof Error ? error : new Error(String(error)));
  }
}
