// Where a worker thread's bundle is: tools/build.mjs writes every worker entry as dist/NAME.js,
// next to the CLI and the library; the bundle asking may be one of those or a test bundle under
// dist/test/…, so the search walks up from the running bundle's directory.

import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** dist/NAME.js (e.g. `vcpu-worker`), found from the bundle that is running. */
export function workerScript(name: string): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    for (const candidate of [join(dir, `${name}.js`), join(dir, 'dist', `${name}.js`)]) {
      if (existsSync(candidate)) return candidate;
    }
    dir = dirname(dir);
  }
  throw new Error(`dist/${name}.js not found; run \`npm run build\``);
}
