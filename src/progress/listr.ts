import { ListrLogger, ProcessOutput } from 'listr2';

/**
 * How every command runs its phases: listr2's live view on a terminal, plain lines otherwise,
 * nothing with --json. All of it on stderr, since stdout is for the result. Failed tasks do not
 * print their error: the command's own one-line `Error:` does.
 */
export function listrOptions(json: boolean): object {
  const processOutput = new ProcessOutput(process.stderr, process.stderr);
  return {
    renderer: json ? 'silent' : 'default',
    fallbackRenderer: 'simple',
    processOutput,
    rendererOptions: { collapseErrors: true, showErrorMessage: false },
    // The simple renderer (no terminal) logs through its own logger, which writes to stdout unless told.
    fallbackRendererOptions: { logger: new ListrLogger({ processOutput, useIcons: true }) },
    exitOnError: true,
  };
}
