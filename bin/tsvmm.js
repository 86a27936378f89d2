#!/usr/bin/env node
// When the process got here (vmm/startup.ts: Node's own start, apart from loading tsvmm).
globalThis.__tsvmmBinAt = performance.now();
// Thin launcher: the CLI itself is bundled into dist/ by `npm run build` (run by `npm ci`).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
const cli = fileURLToPath(new URL('../dist/tsvmm.js', import.meta.url));
if (!existsSync(cli)) {
  console.error('tsvmm: dist/tsvmm.js is missing; run `npm run build` (npm ci does it)');
  process.exit(1);
}
await import(cli);
