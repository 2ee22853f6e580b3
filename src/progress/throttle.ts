/**
 * Progress text for a listr2 task at most every `ms` (and always the final state): on a
 * terminal it is redrawn, in CI logs every update is a line, so fewer is better.
 */
export function throttledOutput(task: { output?: string }, ms = 1000): (text: string, final?: boolean) => void {
  let last = 0;
  return (text, final = false) => {
    const now = Date.now();
    if (!final && now - last < ms) return;
    last = now;
    task.output = text;
  };
}
