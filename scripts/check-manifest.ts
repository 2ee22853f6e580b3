// CI guard: `npm run build` regenerates oclif.manifest.json; if that differs from the committed copy
// (or the copy is missing), the committed one is stale and commands would be hidden or wrong.
import { execFileSync } from 'node:child_process';

const file = 'oclif.manifest.json';
try {
  execFileSync('git', ['ls-files', '--error-unmatch', file], { stdio: 'ignore' });
} catch {
  console.error(`${file} is not committed; run \`npm run build\` and commit it`);
  process.exit(1);
}
try {
  // Worktree against the index: in CI's fresh clone the index is the commit under test.
  execFileSync('git', ['diff', '--quiet', '--', file]);
} catch {
  console.error(`${file} is stale (it differs from a fresh generation); run \`npm run build\` and commit it`);
  process.exit(1);
}
console.log(`${file} matches a fresh generation`);
