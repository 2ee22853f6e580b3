import { ProcessOutput } from 'listr2';

/**
 * How every command runs its phases: listr2's live view on a terminal, plain lines otherwise,
 * nothing with --json. All of it on stderr, since stdout is for the result. Failed tasks do not
 * print their error: the command's own one-line `Error:` does.
 */
export function listrOptions(json: boolean): object {
  return {
    renderer: json ? 'silent' : 'default',
    fallbackRenderer: 'simple',
    processOutput: new ProcessOutput(process.stderr, process.stderr),
    rendererOptions: { collapseErrors: true, showErrorMessage: false },
    exitOnError: true,
  };
}
