/**
 * oclif inside the one-file CLI (dist/cli/cartesia-airgap.cjs, which bin/run.js starts and the
 * single executable carries). oclif would import each command by its path (oclif.manifest.json);
 * the bundle has no such files, so the build generates an entry that hands over the manifest and,
 * per command, a function that loads its module from the bundle. They form the one oclif plugin of
 * this CLI (oclif's public Plugin interface): the same commands, flags, help and errors, and only
 * the command that runs is loaded.
 */
import { dirname } from 'node:path';
import { handle, type Command, type Interfaces } from '@oclif/core';
import { main } from '../main.ts';
import { isSea } from 'node:sea';
import { packageJson, packageRoot } from '../util/package-files.ts';

export interface EmbeddedCommands {
  /** The commands of oclif.manifest.json (the package's and its plugins'), by id. */
  manifest: Record<string, Command.Cached>;
  /** id → loads that command's module. */
  modules: Record<string, () => Record<string, unknown>>;
}

/** The command class of a module, as oclif picks it: the default export, else any export with run(). */
function commandClass(id: string, mod: Record<string, unknown>): Command.Class {
  const isCommand = (x: unknown): x is Command.Class => typeof x === 'function' && typeof (x as { run?: unknown }).run === 'function';
  const found = isCommand(mod.default) ? mod.default : Object.values(mod).find(isCommand);
  if (!found) throw new Error(`the built-in module for the command ${id} exports no command`);
  return found;
}

function embeddedPlugin(root: string, pjson: Interfaces.PJSON, commands: EmbeddedCommands): Interfaces.Plugin {
  const ids = Object.keys(commands.manifest).sort();
  const plugin: Interfaces.Plugin = {
    _base: `${pjson.name}@${pjson.version}`,
    alias: pjson.name,
    commandIDs: ids,
    commands: [],
    commandsDir: undefined,
    findCommand: (async (id: string, opts?: { must: boolean }) => {
      const load = commands.modules[id];
      if (!load) {
        if (opts?.must) throw new Error(`command ${id} not found`);
        return undefined;
      }
      const cmd = commandClass(id, load());
      cmd.id = id;
      cmd.plugin = plugin;
      return cmd;
    }) as Interfaces.Plugin['findCommand'],
    hasManifest: true,
    hooks: {},
    isRoot: true,
    load: async () => {},
    moduleType: 'commonjs',
    name: pjson.name,
    options: { root },
    pjson,
    root,
    topics: Object.entries(pjson.oclif.topics ?? {}).map(([name, t]) => ({ ...t, name })),
    type: 'core',
    valid: true,
    version: pjson.version,
  };
  plugin.commands = ids.map((id) => ({ ...commands.manifest[id]!, id, pluginAlias: pjson.name, pluginName: pjson.name, pluginType: 'core', load: () => plugin.findCommand(id, { must: true }) }));
  return plugin;
}

/** Runs the CLI with `commands` as its only commands. */
export async function runEmbedded(commands: EmbeddedCommands): Promise<void> {
  try {
    const pkg = packageJson();
    const pjson = { ...pkg, oclif: { ...(pkg.oclif as Record<string, unknown>), plugins: [] } } as unknown as Interfaces.PJSON;
    const root = isSea() ? dirname(process.execPath) : packageRoot();
    await main({ root, pjson, plugins: new Map([[pjson.name, embeddedPlugin(root, pjson, commands)]]) });
  } catch (error) {
    await handle(error instanceof Error ? error : new Error(String(error)));
  }
}
